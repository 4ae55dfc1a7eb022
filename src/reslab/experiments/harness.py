"""The harness of the training comparisons: train a list of networks with one recipe and write what a paper shows.

`compare` trains each `Run` with `fit` (only the model differs), reusing a finished run folder made with the same
settings and continuing an interrupted one, and writes a figure in the style of He et al. (2016, Figure 6), a table
of final errors and the raw numbers. `reslab experiment degradation|shortcuts` are one call of it each
(reslab.experiments.degradation), and the networks the later experiments study come from it
(reslab.experiments.networks).

    from reslab.config import make_config
    from reslab.experiments import Run, compare
    runs = [Run("ResNet-20", "resnet20"), Run("ResNet-32", "resnet32")]
    compare(runs, base_config=make_config("degradation", epochs=2), output="runs/experiments/depth")
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reslab.atomic import write_text
from reslab.checkpoint import read_checkpoint
from reslab.config import TrainConfig
from reslab.device import describe_machine
from reslab.errors import ReslabError
from reslab.experiments.spread import Spread
from reslab.plots import ErrorCurve, plot_error_curves
from reslab.train import fit


@dataclass(frozen=True)
class Run:
    """One network of a comparison: a label for the figure, a registry name and build_model overrides.

    Runs with the same `panel` share a panel of the figure; within a panel each run has its own colour, and the
    n-th run of every panel the same colour (plain-20 and ResNet-20 alike).
    """

    label: str
    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    panel: str = ""
    family: str = ""  # "plain" or "residual" in the degradation experiment
    depth: int | None = None  # layers with weights, as in the model's name


@dataclass
class RunResult:
    run: Run
    history: list[dict[str, Any]]  # per epoch: epoch, train_error, test_error, train_loss, time_s, images_per_s
    params: int
    run_dir: str
    seed: int = 0

    @property
    def final_train_error(self) -> float:
        return self.history[-1]["train_error"]

    @property
    def final_test_error(self) -> float:
        return self.history[-1]["test_error"]

    @property
    def time_s(self) -> float:
        return sum(row.get("time_s") or 0.0 for row in self.history)


def _error_rows(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """fit's history rows -> error rows. Training error is 1 - the running accuracy over the epoch's batches, as in
    the paper's curves (the network changes during the epoch); test error is measured after the epoch."""
    rows = []
    for h in history:
        test_acc = h.get("test_acc")
        rows.append(
            {
                "epoch": h["epoch"],
                "train_error": 1.0 - h["train_acc"],
                "test_error": None if test_acc is None else 1.0 - test_acc,
                "train_loss": h.get("train_loss"),
                "time_s": h.get("time_s"),
                "images_per_s": h.get("images_per_s"),
            }
        )
    return rows


def slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label.lower()).strip("_")


def compare(
    runs: Sequence[Run | tuple],
    *,
    base_config: TrainConfig,
    output: str | Path,
    data: Any = None,
    title: str = "",
    seeds: Sequence[int] | None = None,
) -> list[RunResult]:
    """Train every run with `base_config` (only the model differs) once per seed, and write the comparison into
    `output`: figure.png (training error dashed, test error solid, one panel per `Run.panel`; the mean over seeds),
    table.md (final errors; over seeds their mean ± SEM and each seed's), results.csv (one row per run, seed and
    epoch) and results.json (the config, the machine and every number, with each run's spread over seeds).
    `runs` are `Run`s or tuples (label, model, model_kwargs[, panel]). `data` is a loaded Dataset to share.
    `seeds`: default base_config's seed alone.
    """
    runs = [r if isinstance(r, Run) else Run(*r) for r in runs]
    if not runs:
        raise ReslabError("compare: expected at least one run, got none")
    if len({r.label for r in runs}) != len(runs):
        raise ReslabError(f"compare: run labels must be unique, got {[r.label for r in runs]}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)

    results = []
    for seed in seeds or (base_config.seed,):
        results += train_runs(runs, dataclasses.replace(base_config, seed=seed), output, data)
    write_results(results, output, config=base_config, title=title)
    return results


def run_config(run: Run, base_config: TrainConfig, output: str | Path) -> TrainConfig:
    """What `train_runs` trains `run` with: `base_config` with the run's model, in the folder output/runs/<slug>
    (<slug>-seed<N> for a seed other than 0, so that each seed of a network has its own run)."""
    seed = base_config.seed
    return dataclasses.replace(
        base_config,
        model=run.model,
        model_kwargs={**base_config.model_kwargs, **run.model_kwargs},
        output=str(Path(output) / "runs"),
        name=slug(run.label) + (f"-seed{seed}" if seed else ""),
    )


def train_runs(runs: Sequence[Run], base_config: TrainConfig, output: Path, data: Any) -> list[RunResult]:
    """Train each run in turn (see `compare`); a finished run with the same settings is reused, not retrained."""
    results = []
    for i, run in enumerate(runs):
        seed = f", seed {base_config.seed}" if base_config.seed else ""
        print(f"[{i + 1}/{len(runs)}] {run.label}{seed}: {run.model} {run.model_kwargs or ''}".rstrip(), flush=True)
        config = run_config(run, base_config, output)
        config = dataclasses.replace(config, resume=_resume_or_replace(Path(config.output) / config.name, config))
        t0 = time.perf_counter()
        fit_result = fit(config, data=data)
        if not fit_result.completed:
            raise ReslabError(
                f"experiment: the run {run.label!r} stopped early; its run folder is {fit_result.run_dir}"
            )
        params = sum(p.numel() for p in fit_result.model.parameters())
        history = _error_rows(fit_result.history)
        results.append(RunResult(run, history, params, str(fit_result.run_dir), config.seed))
        print(
            f"    {run.label}: training error {100 * results[-1].final_train_error:.2f}%, "
            f"test error {100 * results[-1].final_test_error:.2f}% ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return results


# settings that do not change what a run computes
_INCIDENTAL = {"resume", "progress", "output", "name", "data_dir", "device", "threads", "log"}


def same_settings(saved: dict[str, Any], config: TrainConfig) -> bool:
    """True if a checkpoint's config (a dict) computes what `config` would: equal apart from `_INCIDENTAL`."""
    try:
        # through TrainConfig, so that a field added since the run was made compares as its default
        saved = TrainConfig.from_dict(saved).to_dict()
    except (ReslabError, KeyError, TypeError):
        return False
    return all(saved.get(k) == v for k, v in config.to_dict().items() if k not in _INCIDENTAL)


def _resume_or_replace(run_dir: Path, config: TrainConfig) -> str | None:
    """--resume for a run of the experiment: "auto" reuses (or continues, if interrupted) the run already in
    `run_dir` when it was made with the same settings; otherwise the folder, which belongs to the experiment, is
    cleared and the run starts from scratch (None)."""
    last = run_dir / "last.pt"
    if not last.is_file():
        return None
    try:
        saved = read_checkpoint(last)["config"]
    except (ReslabError, KeyError):
        saved = None
    if saved is not None and same_settings(saved, config):
        print(f"    reusing the run in {run_dir} (same settings; an interrupted one continues)", flush=True)
        return "auto"
    print(f"    replacing the run in {run_dir}: it was made with other settings", flush=True)
    shutil.rmtree(run_dir)
    return None


def by_label(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    """Each run's results, one per seed, in the order the runs were given."""
    out: dict[str, list[RunResult]] = {}
    for r in results:
        out.setdefault(r.run.label, []).append(r)
    return out


def final_errors(results: Sequence[RunResult], which: str = "train") -> dict[str, Spread | None]:
    """label -> the final training (or test) error over its seeds; None where a seed has none (no test set)."""
    key = "final_train_error" if which == "train" else "final_test_error"
    out = {}
    for label, rs in by_label(results).items():
        values = [getattr(r, key) for r in rs]
        out[label] = None if None in values else Spread(values)
    return out


def write_results(results: Sequence[RunResult], output: str | Path, *, config: TrainConfig, title: str = "") -> None:
    """figure.png, table.md, results.csv and results.json of a finished comparison."""
    output = Path(output)
    plot_comparison(results, output / "figure.png", title=title)
    write_text(output / "table.md", format_table(results) + "\n")
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["label", "model", "panel", "seed", "epoch", "train_error", "test_error", "train_loss", "time_s"])
    for r in results:
        for h in r.history:
            w.writerow(
                [r.run.label, r.run.model, r.run.panel, r.seed, h["epoch"]]
                + [_round(h[k]) for k in ("train_error", "test_error", "train_loss", "time_s")]
            )
    write_text(output / "results.csv", f.getvalue())
    machine = {**describe_machine(), "threads": config.threads or torch.get_num_threads()}
    train, test = final_errors(results, "train"), final_errors(results, "test")
    doc = {
        "title": title,
        "config": {k: v for k, v in config.to_dict().items() if k not in ("model", "model_kwargs", "name", "seed")},
        "seeds": sorted({r.seed for r in results}),
        "machine": machine,
        "runs": [_run_doc(r) for r in results],
        "spread": [
            {
                "label": label,
                "final_train_error": train[label].describe(),
                "final_test_error": None if test[label] is None else test[label].describe(),
            }
            for label in train
        ],
    }
    write_text(output / "results.json", json.dumps(doc, indent=1) + "\n")


def _run_doc(r: RunResult) -> dict[str, Any]:
    return {
        "label": r.run.label,
        "model": r.run.model,
        "model_kwargs": r.run.model_kwargs,
        "panel": r.run.panel,
        "seed": r.seed,
        "params": r.params,
        "run_dir": r.run_dir,
        "final_train_error": r.final_train_error,
        "final_test_error": r.final_test_error,
        "time_s": r.time_s,
        "history": r.history,
    }


def _round(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else v


def format_table(results: Sequence[RunResult]) -> str:
    """A Markdown table of the final errors, one row per run; over several seeds, their mean ± SEM and each seed's
    training error, and the time of all seeds."""
    groups = by_label(results)
    several = any(len(rs) > 1 for rs in groups.values())
    lines = [
        "| network | params | epochs | training error | test error | time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    if several:
        lines = [
            "| network | params | epochs | seeds | training error (mean ± SEM) | test error (mean ± SEM) | "
            "training error per seed | time |",
            "|---|---:|---:|---:|---:|---:|---|---:|",
        ]
    train, test = final_errors(results, "train"), final_errors(results, "test")
    for label, rs in groups.items():
        r, t = rs[0], sum(x.time_s for x in rs)
        time = f"{t:.0f} s" if t < 90 else f"{t / 60:.1f} min"
        if several:
            per_seed = ", ".join(f"{100 * x.final_train_error:.2f}%" for x in rs)
            lines.append(
                f"| {label} | {r.params:,} | {r.history[-1]['epoch']} | {len(rs)} | {_mean_sem(train[label])} | "
                f"{'-' if test[label] is None else _mean_sem(test[label])} | {per_seed} | {time} |"
            )
            continue
        test_error = "-" if r.final_test_error is None else f"{100 * r.final_test_error:.2f}%"
        lines.append(
            f"| {label} | {r.params:,} | {r.history[-1]['epoch']} | "
            f"{100 * r.final_train_error:.2f}% | {test_error} | {time} |"
        )
    return "\n".join(lines)


def _mean_sem(s: Spread) -> str:
    return f"{100 * s.mean:.2f}%" + ("" if s.sem is None else f" ± {100 * s.sem:.2f}")


def plot_comparison(results: Sequence[RunResult], path: str | Path, *, title: str = "") -> Path:
    """The paper's Figure 6 style: one panel per `Run.panel`, training error dashed, test error solid; over several
    seeds, the mean curve of each run in a band of ± 1 SEM."""
    panels: dict[str, list[ErrorCurve]] = {}
    n = min(len(rs) for rs in by_label(results).values())
    for label, rs in by_label(results).items():
        epochs = [h["epoch"] for h in rs[0].history]
        (train, train_sem), (test, test_sem) = _mean_curve(rs, "train_error"), _mean_curve(rs, "test_error")
        curve = ErrorCurve(label, epochs, train, test, train_sem if n > 1 else None, test_sem if n > 1 else None)
        panels.setdefault(rs[0].run.panel, []).append(curve)
    if n > 1:
        title += f" (mean of {n} seeds; bands and bars: ± 1 SEM)"
    return plot_error_curves(panels, path, title=title)


def _mean_curve(rs: Sequence[RunResult], key: str) -> tuple[list[float | None], list[float | None]]:
    """Epoch by epoch, the mean of `key` over the seeds and its SEM (None where a seed has none; SEM None for one)."""
    means, sems = [], []
    for rows in zip(*(r.history for r in rs), strict=True):
        values = [row[key] for row in rows]
        s = None if None in values else Spread(values)
        means.append(None if s is None else s.mean)
        sems.append(None if s is None else s.sem)
    return means, sems


# ----------------------------------------------------------------------------------------------------------------------
# what every experiment writes beside its figure


def machine_info() -> dict[str, Any]:
    """describe_machine() and the threads torch uses now; with the load average, which says how busy the CPU was."""
    return {**describe_machine(), "threads": torch.get_num_threads()}


def _json_safe(value: Any) -> Any:
    # a loss that overflowed (a far point of a landscape, a broken lesion) is inf: JSON has no inf, so null
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | Path, doc: dict[str, Any]) -> Path:
    """`doc` as indented JSON, non-finite floats as null."""
    path = Path(path)
    return write_text(path, json.dumps(_json_safe(doc), indent=1) + "\n")


def write_study(output: Path, what: str, *, table: str, doc: dict[str, Any], verdict: str, elapsed: float) -> None:
    """The outputs every study writes besides its figure and CSV: table.md, results.json and verdict.txt in `output`;
    then the table, the verdict and where they are, printed."""
    write_text(output / "table.md", table + "\n")
    write_json(output / "results.json", doc)
    write_text(output / "verdict.txt", verdict + "\n")
    print()
    print(table)
    print()
    print(verdict)
    print(f"\n{what} in {duration(elapsed)}; figure, table and numbers in {output}/")


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """One row per dict, the given columns in order (a missing key is an empty cell); floats to 7 significant
    digits (gradient norms span 1e-8..1e3, so not a fixed number of decimals)."""
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(columns)
    for row in rows:
        values = [row.get(c) for c in columns]
        w.writerow(["" if v is None else f"{v:.7g}" if isinstance(v, float) else v for v in values])
    return write_text(path, f.getvalue())


def duration(seconds: float) -> str:
    """42 s, 3.1 min: a time for a table or a verdict."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
