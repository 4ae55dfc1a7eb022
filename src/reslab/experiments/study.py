"""The harness of the studies of the trained networks (`reslab experiment lesion|landscape|gradients`).

A study is a `Study`: its measurement of one network, the rows and table it writes, its verdict and its figure.
`run_study` does everything around it, once for every study: the folders (runs/experiments/NAME and the degradation
experiment's, or their -quick twins), the degradation recipe and data, the networks (those `reslab experiment
degradation` trained, trained first if missing), the threads, the timing, and the outputs: figure.png, table.md,
results.csv (and any other CSV the study has), results.json and verdict.txt, with the table and the verdict printed.

    from reslab.experiments import StudyRun, run_lesion
    doc, verdict = run_lesion(StudyRun(quick=True), test_size=32)
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from reslab.config import TrainConfig
from reslab.data import Dataset
from reslab.errors import ReslabError
from reslab.experiments.degradation import default_output, degradation_runs, experiment_setup
from reslab.experiments.harness import machine_info, write_csv, write_study
from reslab.experiments.networks import Network, torch_threads, trained_networks
from reslab.experiments.seeds import agreement, plot_spreads, spread_rows, spread_table, spreads

QUICK_NOTE = "(--quick: networks trained for 4 steps on a tiny subset; a pipeline check, not the finding)"


@dataclass(frozen=True)
class StudyRun:
    """What every study is run with, whatever it measures (the flags the studies share)."""

    networks: str | Path | None = None  # the degradation experiment's folder; default runs/experiments/degradation
    output: str | Path | None = None  # default runs/experiments/NAME
    data_dir: str | None = None
    seed: int = 0  # the networks' seed and that of the study's draws (images, directions, deleted blocks)
    quick: bool = False  # a pipeline check: the -quick folders, tiny networks and sizes, one thread
    threads: int | None = None
    seeds: int = 1  # networks of seeds seed, seed + 1, ...: each measured, the verdict from their agreement


class StudySetup(NamedTuple):
    output: Path  # where the study writes its figure, table and numbers
    networks: Path  # the degradation experiment's folder, whose networks it studies
    threads: int | None
    config: TrainConfig  # the degradation recipe, which the networks were (or will be) trained with
    data: Dataset
    seed: int
    quick: bool


def study_setup(name: str, run: StudyRun) -> StudySetup:
    """What a study starts from: its folders, the degradation recipe and data; one thread under --quick."""
    threads = 1 if run.threads is None and run.quick else run.threads
    config, data = experiment_setup(
        "degradation", seed=run.seed, data_dir=run.data_dir, quick=run.quick, threads=threads
    )
    output = Path(run.output or default_output(name, run.quick))
    networks = Path(run.networks or default_output("degradation", run.quick))
    return StudySetup(output, networks, threads, config, data, run.seed, run.quick)


@dataclass
class Measured:
    """One network's measurement: what `Study.measure` returned, and how long it took."""

    net: Network
    value: dict[str, Any]
    time_s: float


class Study:
    """A study: subclasses give its measurement, rows, table, verdict and figure; `run_study` runs it.

    `options` is the study's options dataclass (reslab.config.STUDY_OPTIONS); `inputs` is whatever `prepare` draws
    once for all networks (fixed images, directions' seeds), passed back to the other methods.
    """

    name = ""  # the folder runs/experiments/NAME and results.json's "experiment"
    what = ""  # "lesion study in 3.2 min": the closing line
    quick_note = QUICK_NOTE  # the verdict's last line under --quick

    def __init__(self, options: Any) -> None:
        self.options = options

    def prepare(self, setup: StudySetup) -> Any:
        """The inputs every network is measured on."""
        raise NotImplementedError

    def networks(self, setup: StudySetup) -> list[Network]:
        """The networks to measure: by default the trained plain-D and ResNet-D for each of the options' depths."""
        runs = degradation_runs(self.options.depths)
        return trained_networks(runs, config=setup.config, data=setup.data, networks=setup.networks)

    def start(self, net: Network, inputs: Any) -> str | None:
        """The line printed before a network is measured (None: none)."""
        return None

    def measure(self, net: Network, inputs: Any) -> dict[str, Any]:
        raise NotImplementedError

    def done(self, m: Measured) -> str:
        """The line printed after a network is measured."""
        raise NotImplementedError

    def verdict(self, measured: list[Measured], inputs: Any) -> str:
        raise NotImplementedError

    def title(self, inputs: Any) -> str:
        raise NotImplementedError

    def plot(self, measured: list[Measured], inputs: Any, path: Path, *, title: str) -> None:
        raise NotImplementedError

    def table(self, measured: list[Measured]) -> str:
        raise NotImplementedError

    def csvs(self, measured: list[Measured]) -> dict[str, tuple[list[dict[str, Any]], list[str]]]:
        """file name -> (rows, columns): results.csv and any other table of numbers."""
        raise NotImplementedError

    def settings(self, inputs: Any, setup: StudySetup) -> dict[str, Any]:
        """results.json's "settings": what the study measured with (the harness adds "quick" and "networks_dir")."""
        raise NotImplementedError

    def document(self, measured: list[Measured], inputs: Any) -> dict[str, Any]:
        """results.json's own keys of the study, between "time_s" and "verdict" ("networks" and the numbers)."""
        raise NotImplementedError

    def numbers(self, measured: list[Measured]) -> dict[str, dict[str, float | None]]:
        """label -> {quantity: value}: the study's headline numbers, whose spread over seeds is reported."""
        raise NotImplementedError

    def findings(self, measured: list[Measured], inputs: Any) -> dict[str, bool | None]:
        """The verdict's claims, each true or false (None: not tested): over seeds, a claim is called only when
        every seed agrees."""
        raise NotImplementedError


def run_study(study: Study, run: StudyRun) -> tuple[dict[str, Any], str]:
    """Measure every network of `study`, write its outputs into its folder, print and return (results.json's doc,
    the verdict). With several seeds: each seed's study in seed-<N>/, and their spread and agreement
    (reslab.experiments.seeds) in the folder itself."""
    if run.seeds < 1:
        raise ReslabError(f"--seeds: expected a positive number of seeds, got {run.seeds}")
    if run.seeds > 1:
        return run_over_seeds(study, run)
    doc, verdict, _, _ = run_once(study, run)
    return doc, verdict


def run_once(study: Study, run: StudyRun) -> tuple[dict[str, Any], str, list[Measured], Any]:
    """One seed's study, its outputs written: (results.json's doc, the verdict, the measurements, the inputs)."""
    t_start = time.perf_counter()
    setup = study_setup(study.name, run)
    inputs = study.prepare(setup)
    with torch_threads(setup.threads):
        machine = machine_info()
        measured = [_measure(study, net, inputs) for net in study.networks(setup)]

    verdict = study.verdict(measured, inputs) + (f"\n{study.quick_note}" if setup.quick else "")
    output = setup.output
    output.mkdir(parents=True, exist_ok=True)
    study.plot(
        measured, inputs, output / "figure.png", title=study.title(inputs) + (" (--quick)" if setup.quick else "")
    )
    for name, (rows, columns) in study.csvs(measured).items():
        write_csv(output / name, rows, columns)
    elapsed = time.perf_counter() - t_start
    doc = {
        "experiment": study.name,
        # the study's own settings, then what every study records (the harness knows them)
        "settings": {**study.settings(inputs, setup), "quick": setup.quick, "networks_dir": str(setup.networks)},
        "machine": machine,
        "load_average_1min_at_end": machine_info().get("load_average_1min"),
        "time_s": elapsed,
        **study.document(measured, inputs),
        "verdict": verdict,
    }
    write_study(output, study.what, table=study.table(measured), doc=doc, verdict=verdict, elapsed=elapsed)
    return doc, verdict, measured, inputs


def run_over_seeds(study: Study, run: StudyRun) -> tuple[dict[str, Any], str]:
    """The study once per seed (each in seed-<N>/ of its folder), then the spread of its headline numbers and the
    agreement of its claims over the seeds in the folder itself: figure.png, table.md, results.csv, results.json and
    verdict.txt."""
    t_start = time.perf_counter()
    output = Path(run.output or default_output(study.name, run.quick))
    seeds = list(range(run.seed, run.seed + run.seeds))
    numbers, findings, verdicts, machines = [], [], [], []
    for i, seed in enumerate(seeds):
        print(f"\n=== seed {seed} ({i + 1} of {len(seeds)})", flush=True)
        one = dataclasses.replace(run, seed=seed, seeds=1, output=output / f"seed-{seed}")
        doc, verdict, measured, inputs = run_once(study, one)
        machines.append(doc["machine"])
        numbers.append(study.numbers(measured))
        findings.append(study.findings(measured, inputs))
        verdicts.append(verdict)
    table = spreads(numbers)
    verdict = agreement(findings, seeds, name=study.name) + (f"\n{study.quick_note}" if run.quick else "")
    output.mkdir(parents=True, exist_ok=True)
    plot_spreads(table, output / "figure.png", title=f"{study.name}: {len(seeds)} seeds")
    write_csv(output / "results.csv", spread_rows(numbers, seeds), ["network", "quantity", "seed", "value"])
    elapsed = time.perf_counter() - t_start
    doc = {
        "experiment": study.name,
        "seeds": seeds,
        "per_seed_folders": [f"seed-{seed}" for seed in seeds],
        "machine": machines[0],  # as the seeds' studies measured it (their threads)
        "time_s": elapsed,
        "spread": {label: {q: s and s.describe() for q, s in qs.items()} for label, qs in table.items()},
        "findings": dict(zip(map(str, seeds), findings, strict=True)),
        "per_seed_verdicts": dict(zip(map(str, seeds), verdicts, strict=True)),
        "verdict": verdict,
    }
    write_study(output, study.what, table=spread_table(table), doc=doc, verdict=verdict, elapsed=elapsed)
    return doc, verdict


def _measure(study: Study, net: Network, inputs: Any) -> Measured:
    t0 = time.perf_counter()
    line = study.start(net, inputs)
    if line:
        print(line, flush=True)
    m = Measured(net, study.measure(net, inputs), 0.0)
    m.time_s = time.perf_counter() - t0
    print(study.done(m), flush=True)
    return m
