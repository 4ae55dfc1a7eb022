"""The harness of the training comparisons: train a list of networks with one recipe and write what a paper shows.

`compare` trains each `Run` with `fit` (only the model differs), reusing a finished run folder made with the same
settings and continuing an interrupted one, and writes a figure in the style of He et al. (2016, Figure 6), a table
of final errors and the raw numbers. `reslab experiment degradation|shortcuts` are one call of it each
(reslab.experiments.degradation), and the networks the later experiments study come from it
(reslab.experiments.networks).

    from reslab.experiments import Run, compare, experiment_config
    runs = [Run("ResNet-20", "resnet20"), Run("ResNet-32", "resnet32")]
    compare(runs, base_config=experiment_config(epochs=2), output="runs/experiments/depth")
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reslab.checkpoint import read_checkpoint
from reslab.config import TrainConfig
from reslab.device import describe_machine
from reslab.errors import ReslabError
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
) -> list[RunResult]:
    """Train every run with `base_config` (only the model differs) and write the comparison into `output`:

    figure.png (training error dashed, test error solid, one panel per `Run.panel`), table.md (final errors),
    results.csv (one row per run and epoch) and results.json (the config, the machine and every number).
    `runs` are `Run`s or tuples (label, model, model_kwargs[, panel]). `data` is a loaded Dataset to share.
    """
    runs = [r if isinstance(r, Run) else Run(*r) for r in runs]
    if not runs:
        raise ReslabError("compare: expected at least one run, got none")
    if len({r.label for r in runs}) != len(runs):
        raise ReslabError(f"compare: run labels must be unique, got {[r.label for r in runs]}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)

    results = train_runs(runs, base_config, output, data)
    write_results(results, output, config=base_config, title=title)
    return results


def run_config(run: Run, base_config: TrainConfig, output: str | Path) -> TrainConfig:
    """What `train_runs` trains `run` with: `base_config` with the run's model, in the folder output/runs/<slug>."""
    return dataclasses.replace(
        base_config,
        model=run.model,
        model_kwargs={**base_config.model_kwargs, **run.model_kwargs},
        output=str(Path(output) / "runs"),
        name=slug(run.label),
    )


def train_runs(runs: Sequence[Run], base_config: TrainConfig, output: Path, data: Any) -> list[RunResult]:
    """Train each run in turn (see `compare`); a finished run with the same settings is reused, not retrained."""
    results = []
    for i, run in enumerate(runs):
        print(f"[{i + 1}/{len(runs)}] {run.label}: {run.model} {run.model_kwargs or ''}".rstrip(), flush=True)
        config = run_config(run, base_config, output)
        config = dataclasses.replace(config, resume=_resume_or_replace(Path(config.output) / config.name, config))
        t0 = time.perf_counter()
        fit_result = fit(config, data=data)
        if not fit_result.completed:
            raise ReslabError(
                f"experiment: the run {run.label!r} stopped early; its run folder is {fit_result.run_dir}"
            )
        params = sum(p.numel() for p in fit_result.model.parameters())
        results.append(RunResult(run, _error_rows(fit_result.history), params, str(fit_result.run_dir)))
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


def write_results(results: Sequence[RunResult], output: str | Path, *, config: TrainConfig, title: str = "") -> None:
    """figure.png, table.md, results.csv and results.json of a finished comparison."""
    output = Path(output)
    plot_comparison(results, output / "figure.png", title=title)
    (output / "table.md").write_text(format_table(results) + "\n")
    with open(output / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "model", "panel", "epoch", "train_error", "test_error", "train_loss", "time_s"])
        for r in results:
            for h in r.history:
                w.writerow(
                    [r.run.label, r.run.model, r.run.panel, h["epoch"]]
                    + [_round(h[k]) for k in ("train_error", "test_error", "train_loss", "time_s")]
                )
    machine = {**describe_machine(), "threads": config.threads or torch.get_num_threads()}
    doc = {
        "title": title,
        "config": {k: v for k, v in config.to_dict().items() if k not in ("model", "model_kwargs", "name")},
        "machine": machine,
        "runs": [
            {
                "label": r.run.label,
                "model": r.run.model,
                "model_kwargs": r.run.model_kwargs,
                "panel": r.run.panel,
                "params": r.params,
                "run_dir": r.run_dir,
                "final_train_error": r.final_train_error,
                "final_test_error": r.final_test_error,
                "time_s": r.time_s,
                "history": r.history,
            }
            for r in results
        ],
    }
    (output / "results.json").write_text(json.dumps(doc, indent=1) + "\n")


def _round(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else v


def format_table(results: Sequence[RunResult]) -> str:
    """A Markdown table of the final errors, one row per run."""
    lines = [
        "| network | params | epochs | training error | test error | time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        test = "-" if r.final_test_error is None else f"{100 * r.final_test_error:.2f}%"
        t = r.time_s
        lines.append(
            f"| {r.run.label} | {r.params:,} | {r.history[-1]['epoch']} | "
            f"{100 * r.final_train_error:.2f}% | {test} | {f'{t:.0f} s' if t < 90 else f'{t / 60:.1f} min'} |"
        )
    return "\n".join(lines)


def plot_comparison(results: Sequence[RunResult], path: str | Path, *, title: str = "") -> Path:
    """The paper's Figure 6 style: one panel per `Run.panel`, training error dashed, test error solid."""
    panels: dict[str, list[ErrorCurve]] = {}
    for r in results:
        curve = ErrorCurve(
            r.run.label,
            [h["epoch"] for h in r.history],
            [h["train_error"] for h in r.history],
            [h["test_error"] for h in r.history],
        )
        panels.setdefault(r.run.panel, []).append(curve)
    return plot_error_curves(panels, path, title=title)


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
    path.write_text(json.dumps(_json_safe(doc), indent=1) + "\n")
    return path


def write_study(output: Path, what: str, *, table: str, doc: dict[str, Any], verdict: str, elapsed: float) -> None:
    """The outputs every study writes besides its figure and CSV: table.md, results.json and verdict.txt in `output`;
    then the table, the verdict and where they are, printed."""
    (output / "table.md").write_text(table + "\n")
    write_json(output / "results.json", doc)
    (output / "verdict.txt").write_text(verdict + "\n")
    print()
    print(table)
    print()
    print(verdict)
    print(f"\n{what} in {duration(elapsed)}; figure, table and numbers in {output}/")


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """One row per dict, the given columns in order (a missing key is an empty cell); floats to 7 significant
    digits (gradient norms span 1e-8..1e3, so not a fixed number of decimals)."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            values = [row.get(c) for c in columns]
            w.writerow(["" if v is None else f"{v:.7g}" if isinstance(v, float) else v for v in values])
    return path


def duration(seconds: float) -> str:
    """42 s, 3.1 min: a time for a table or a verdict."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
