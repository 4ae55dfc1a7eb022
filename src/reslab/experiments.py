"""The paper's comparisons, rerun on Fashion-MNIST: `reslab experiment degradation|shortcuts`.

Why does a deeper plain network train worse than a shallower one, when it could copy the shallower one and make the
extra layers identities? He et al. (2016) answer with an experiment (CIFAR-10, Figure 6): plain-56 has a higher
*training* error than plain-20, so the problem is optimisation, not overfitting, while ResNet-56 trains better than
ResNet-20. `degradation` reruns it: plain-N and resnet-N of the CIFAR family (same widths, same recipe, same seed;
only the shortcuts differ). `shortcuts` compares the paper's shortcut options A, B and C at one depth (Table 3).

Both are one call of `compare`, the harness: it trains a list of models with one recipe and writes a figure in the
paper's style, a table of final errors and the raw numbers.

    from reslab.experiments import Run, compare, experiment_config
    runs = [Run("ResNet-20", "resnet20"), Run("ResNet-32", "resnet32")]
    compare(runs, base_config=experiment_config(epochs=2), output="runs/experiments/depth")
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reslab.checkpoint import read_checkpoint
from reslab.config import TrainConfig
from reslab.data import find_data_dir, load_dataset
from reslab.errors import ReslabError
from reslab.models import list_models
from reslab.plots import ErrorCurve, plot_error_curves
from reslab.runtime import describe_machine
from reslab.train import fit

# ----------------------------------------------------------------------------------------------------------------------
# the harness


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


def _slug(label: str) -> str:
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

    results = _train_all(runs, base_config, output, data)
    write_results(results, output, config=base_config, title=title)
    return results


def _train_all(runs: list[Run], base_config: TrainConfig, output: Path, data: Any) -> list[RunResult]:
    results = []
    for i, run in enumerate(runs):
        print(f"[{i + 1}/{len(runs)}] {run.label}: {run.model} {run.model_kwargs or ''}".rstrip(), flush=True)
        config = dataclasses.replace(
            base_config,
            model=run.model,
            model_kwargs={**base_config.model_kwargs, **run.model_kwargs},
            output=str(output / "runs"),
            name=_slug(run.label),
        )
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
_INCIDENTAL = {"resume", "progress", "output", "name", "data_dir", "device", "threads"}


def _resume_or_replace(run_dir: Path, config: TrainConfig) -> str | None:
    """--resume for a run of the experiment: "auto" reuses (or continues, if interrupted) the run already in
    `run_dir` when it was made with the same settings; otherwise the folder, which belongs to the experiment, is
    cleared and the run starts from scratch (None)."""
    last = run_dir / "last.pt"
    if not last.is_file():
        return None
    try:
        # through TrainConfig, so that a field added since the run was made compares as its default
        saved = TrainConfig.from_dict(read_checkpoint(last)["config"]).to_dict()
    except (ReslabError, KeyError, TypeError):
        saved = None
    now = config.to_dict()
    if saved is not None and all(saved.get(k) == v for k, v in now.items() if k not in _INCIDENTAL):
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
# verdicts: pure functions of the final numbers


@dataclass(frozen=True)
class Verdict:
    plain_degrades: bool  # the deepest plain network has a higher training error than the shallowest
    residual_improves: bool  # the deepest residual network's training error is no higher than the shallowest's
    text: str


def degradation_verdict(plain: dict[int, float], residual: dict[int, float]) -> Verdict:
    """Compare the final training errors (fractions) of the shallowest and deepest network of each family.

    `plain` and `residual` map depth -> final training error. The paper's finding (CIFAR-10, Figure 6) is both:
    the deeper plain network trains worse, the deeper residual network at least as well.
    """
    if len(plain) < 2 or len(residual) < 2:
        raise ValueError("degradation_verdict needs at least two depths of each family")
    lo, hi = min(plain), max(plain)
    plain_gap = plain[hi] - plain[lo]
    rlo, rhi = min(residual), max(residual)
    res_gap = residual[rhi] - residual[rlo]
    plain_degrades = plain_gap > 0
    residual_improves = res_gap <= 0

    def pts(gap: float) -> str:
        return f"{abs(100 * gap):.2f} points {'higher' if gap > 0 else 'lower' if gap < 0 else 'equal'}"

    lines = [
        f"plain-{hi} vs plain-{lo}: training error {100 * plain[hi]:.2f}% vs {100 * plain[lo]:.2f}% "
        f"({pts(plain_gap)}) -> "
        + ("the deeper plain network trained worse: degradation." if plain_degrades else "no degradation here."),
        f"ResNet-{rhi} vs ResNet-{rlo}: training error {100 * residual[rhi]:.2f}% vs {100 * residual[rlo]:.2f}% "
        f"({pts(res_gap)}) -> "
        + (
            "the deeper residual network trained at least as well."
            if residual_improves
            else "the deeper residual network trained worse."
        ),
    ]
    if plain_degrades and residual_improves:
        lines.append("Verdict: as in the paper, depth hurts the plain networks and not the residual ones.")
    elif plain_degrades:
        lines.append("Verdict: the plain networks degrade, but the residual ones did not gain from depth in this run.")
    elif residual_improves:
        lines.append("Verdict: no degradation of the plain networks in this run (try more epochs or depths).")
    else:
        lines.append("Verdict: neither family gained from depth in this run (try more epochs).")
    return Verdict(plain_degrades, residual_improves, "\n".join(lines))


def shortcuts_verdict(final: dict[str, tuple[float, float]]) -> str:
    """`final`: option ("A", "B", "C") -> (training error, test error). The paper (ImageNet, Table 3) finds
    B slightly better than A and C marginally better than B: small differences, so projections are not essential."""
    if not final:
        raise ValueError("shortcuts_verdict needs at least one option")
    by_train = sorted(final, key=lambda k: final[k][0])
    by_test = sorted(final, key=lambda k: final[k][1])
    spread = max(v[1] for v in final.values()) - min(v[1] for v in final.values())

    def ranking(order: list[str], i: int) -> str:
        text = f"{order[0]} {100 * final[order[0]][i]:.2f}%"
        for prev, k in zip(order[:-1], order[1:], strict=True):
            same = f"{100 * final[k][i]:.2f}" == f"{100 * final[prev][i]:.2f}"
            text += f" {'=' if same else '<'} {k} {100 * final[k][i]:.2f}%"
        return text

    lines = [
        "training error: " + ranking(by_train, 0),
        "test error:     " + ranking(by_test, 1),
        f"Test errors span {100 * spread:.2f} points. "
        + (
            "As in the paper (A > B > C in error), projections help a little."
            if by_test == sorted(final, reverse=True)
            else "The paper's order (C best, then B, then A) does not show here; its differences were small too."
        ),
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# the two experiments and their CLI


def experiment_config(**overrides: Any) -> TrainConfig:
    """The recipe both experiments train with: the paper's CIFAR one (section 4.2), shortened.

    SGD with momentum 0.9 at lr 0.1 for 128 images, weight decay 1e-4, lr x0.1 at 50% and 75% of training, no
    augmentation: the question is how well each network *optimises*, so nothing should hold the training error up.
    The whole training set (no validation split): the test set only reports, nothing is chosen on it.
    A linear warmup over half an epoch (235 steps), as the paper does for ResNet-110: without it ResNet-56 lost its
    first epoch (measured on 10k images: 75.8% training error without, 53.1% with; ResNet-20 41.8%).
    """
    values = dict(
        epochs=DEFAULT_EPOCHS["degradation"],
        batch_size=128,
        lr=0.1,
        opt="sgd",
        momentum=0.9,
        weight_decay=1e-4,
        sched="step",
        warmup_epochs=0.5,
        label_smoothing=0.0,
        crop_padding=0,
        hflip=False,
        val_size=0,
        amp="auto",
        channels_last=True,
        progress=True,
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


# measured on the 2-core Xeon with bf16 (README, Experiments): degradation 19.9 min, shortcuts 11.2 min
DEFAULT_EPOCHS = {"degradation": 3, "shortcuts": 4}
DEFAULT_DEPTHS = {"degradation": (20, 56), "shortcuts": (20,)}
# 4 steps per network. One thread: batches this small gain little from a second one, and on a busy machine (CI
# beside other jobs) OpenMP's spin-waiting made 2 threads 20x slower than 1 (measured: 4.4 vs 0.34 s per step)
QUICK = dict(train_subset=256, test_size=256, epochs=1, batch_size=64, threads=1)


def parse_depths(text: str | None, which: str) -> tuple[int, ...]:
    """`--depths 20,56` -> (20, 56), checked against the registry and the experiment."""
    if text is None:
        return DEFAULT_DEPTHS[which]
    try:
        depths = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise ReslabError(f"--depths: expected comma-separated numbers of layers like 20,56, got {text!r}") from None
    names = set(list_models())
    bad = [d for d in depths if f"resnet{d}" not in names or f"plain{d}" not in names]
    if bad or not depths:
        known = sorted(int(n[5:]) for n in names if n.startswith("plain") and n[5:].isdigit())
        raise ReslabError(
            f"--depths: expected depths with both a plain and a resnet model ({', '.join(map(str, known))}), "
            f"got {text!r}"
        )
    if which == "degradation" and len(depths) < 2:
        raise ReslabError(f"--depths: the degradation experiment compares at least two depths, got {text!r}")
    if which == "shortcuts" and len(depths) != 1:
        raise ReslabError(f"--depths: the shortcuts experiment compares options at one depth, got {text!r}")
    return depths


def degradation_runs(depths: Sequence[int]) -> list[Run]:
    plain = [Run(f"plain-{d}", f"plain{d}", {}, "plain networks", "plain", d) for d in depths]
    residual = [Run(f"ResNet-{d}", f"resnet{d}", {}, "residual networks (ResNet)", "residual", d) for d in depths]
    return plain + residual


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def shortcut_runs(depth: int) -> list[Run]:
    # A: zero-padded identity (no parameters); B: projections only where the shape changes; C: all projections
    return [
        Run(
            f"ResNet-{depth} {o}",
            f"resnet{depth}",
            {"shortcut": o},
            f"ResNet-{depth}, shortcut options",
            "residual",
            depth,
        )
        for o in "ABC"
    ]


def run_experiment(
    which: str,
    *,
    depths: Sequence[int] | None = None,
    epochs: int | None = None,
    output: str | Path | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    quick: bool = False,
    dataset: str | None = None,
    threads: int | None = None,
) -> tuple[list[RunResult], str]:
    """Run 'degradation' or 'shortcuts', write its outputs, print and return (results, verdict text)."""
    if which not in DEFAULT_DEPTHS:
        raise ReslabError(f"experiment: expected one of {', '.join(DEFAULT_DEPTHS)}, got {which!r}")
    if epochs is not None and epochs < 1:
        raise ReslabError(f"--epochs: expected a positive number of epochs, got {epochs}")
    if threads is not None and threads < 1:
        raise ReslabError(f"--threads: expected a positive number of threads, got {threads}")
    depths = tuple(depths or DEFAULT_DEPTHS[which])
    # --quick writes beside, not over, a real run's outputs
    output = Path(output or Path("runs") / "experiments" / (which + ("-quick" if quick else "")))

    overrides: dict[str, Any] = {
        "epochs": epochs or DEFAULT_EPOCHS[which],
        "seed": seed,
        "data_dir": data_dir,
        "threads": threads,
    }
    if dataset is None:
        dataset = "fashion-mnist"
        if quick and data_dir is None and find_data_dir() is None:
            # --quick checks the pipeline, not the finding: it must run where the data is not installed (CI)
            print("experiment --quick: Fashion-MNIST not found, using the synthetic stand-in")
            dataset = "synthetic"
    data = load_dataset(dataset, data_dir)
    if quick:
        overrides.update(train_subset=QUICK["train_subset"], batch_size=QUICK["batch_size"])
        overrides["threads"] = threads or QUICK["threads"]
        overrides["epochs"] = epochs or QUICK["epochs"]
        data = dataclasses.replace(
            data, test_images=data.test_images[: QUICK["test_size"]], test_labels=data.test_labels[: QUICK["test_size"]]
        )
    config = experiment_config(dataset=dataset, **overrides)

    if which == "degradation":
        runs = degradation_runs(depths)
        title = f"Degradation on Fashion-MNIST: plain vs residual networks, {_epochs(config.epochs)} each"
    else:
        runs = shortcut_runs(depths[0])
        title = f"Shortcut options A, B, C on Fashion-MNIST: ResNet-{depths[0]}, {_epochs(config.epochs)} each"
    if quick:
        title += " (--quick: a pipeline check, not the finding)"

    t0 = time.perf_counter()
    results = compare(runs, base_config=config, output=output, data=data, title=title)
    elapsed = time.perf_counter() - t0

    if which == "degradation":
        plain = {r.run.depth: r.final_train_error for r in results if r.run.family == "plain"}
        residual = {r.run.depth: r.final_train_error for r in results if r.run.family == "residual"}
        verdict = degradation_verdict(plain, residual).text
    else:
        verdict = shortcuts_verdict(
            {r.run.model_kwargs["shortcut"]: (r.final_train_error, r.final_test_error) for r in results}
        )
    if quick:
        verdict += "\n(--quick: too little training for the verdict to mean anything)"
    (output / "verdict.txt").write_text(verdict + "\n")
    print()
    print(format_table(results))
    print()
    print(verdict)
    print(f"\n{len(results)} networks in {elapsed / 60:.1f} min; figure, table and numbers in {output}/")
    return results, verdict
