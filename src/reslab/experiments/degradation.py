"""The ResNet paper's own comparisons, rerun on Fashion-MNIST: `reslab experiment degradation|shortcuts`.

Why does a deeper plain network train worse than a shallower one, when it could copy the shallower one and make the
extra layers identities? He et al. (2016) answer with an experiment (CIFAR-10, Figure 6): plain-56 has a higher
*training* error than plain-20, so the problem is optimisation, not overfitting, while ResNet-56 trains better than
ResNet-20. `degradation` reruns it: plain-N and resnet-N of the CIFAR family (same widths, same recipe, same seed;
only the shortcuts differ). `shortcuts` compares the paper's shortcut options A, B and C at one depth (Table 3).
Both are one call of the harness (`compare`); the networks `degradation` trains are the ones the lesion, landscape
and gradients experiments then study (reslab.experiments.networks).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from reslab.atomic import write_text
from reslab.config import TrainConfig
from reslab.data import Dataset, find_data_dir, load_dataset
from reslab.errors import ReslabError
from reslab.experiments.harness import Run, RunResult, compare, format_table
from reslab.models import list_models

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


def parse_depths(text: str | None, which: str, *, flag: str = "--depths") -> tuple[int, ...]:
    """`--depths 20,56` -> (20, 56), checked against the registry and the experiment (`flag` names it in errors)."""
    if text is None:
        return DEFAULT_DEPTHS[which]
    try:
        depths = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise ReslabError(f"{flag}: expected comma-separated numbers of layers like 20,56, got {text!r}") from None
    names = set(list_models())
    bad = [d for d in depths if f"resnet{d}" not in names or f"plain{d}" not in names]
    if bad or not depths:
        known = sorted(int(n[5:]) for n in names if n.startswith("plain") and n[5:].isdigit())
        raise ReslabError(
            f"{flag}: expected depths with both a plain and a resnet model ({', '.join(map(str, known))}), got {text!r}"
        )
    if which == "degradation" and len(depths) < 2:
        raise ReslabError(f"{flag}: the degradation experiment compares at least two depths, got {text!r}")
    if which == "shortcuts" and len(depths) != 1:
        raise ReslabError(f"{flag}: the shortcuts experiment compares options at one depth, got {text!r}")
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


def default_output(which: str, quick: bool = False) -> Path:
    """runs/experiments/WHICH, or WHICH-quick: where an experiment writes by default."""
    return Path("runs") / "experiments" / (which + ("-quick" if quick else ""))


class StudySetup(NamedTuple):
    output: Path  # where the study writes its figure, table and numbers
    networks: Path  # the degradation experiment's folder, whose networks it studies
    threads: int | None
    config: TrainConfig  # the degradation recipe, which the networks were (or will be) trained with
    data: Dataset


def study_setup(
    name: str,
    *,
    output: str | Path | None,
    networks: str | Path | None,
    seed: int,
    data_dir: str | None,
    quick: bool,
    threads: int | None,
) -> StudySetup:
    """What lesion, landscape and gradients start from: their folders (runs/experiments/NAME and degradation, or
    their -quick twins), the degradation recipe and data; one thread under --quick."""
    if threads is None and quick:
        threads = 1
    config, data = experiment_setup("degradation", seed=seed, data_dir=data_dir, quick=quick, threads=threads)
    output = Path(output or default_output(name, quick))
    return StudySetup(output, Path(networks or default_output("degradation", quick)), threads, config, data)


def experiment_setup(
    which: str,
    *,
    epochs: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    quick: bool = False,
    dataset: str | None = None,
    threads: int | None = None,
) -> tuple[TrainConfig, Dataset]:
    """(the recipe, the data) that `run_experiment(which, ...)` trains with: the one place that decides them, so
    that the experiments that reuse its networks ask for exactly the runs it makes.

    --quick: 256 training images, one epoch of 4 steps, the first 256 test images, one thread; and the synthetic
    stand-in when Fashion-MNIST is not installed (a pipeline check must run in CI).
    """
    if epochs is not None and epochs < 1:
        raise ReslabError(f"--epochs: expected a positive number of epochs, got {epochs}")
    if threads is not None and threads < 1:
        raise ReslabError(f"--threads: expected a positive number of threads, got {threads}")
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
    return experiment_config(dataset=dataset, **overrides), data


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
    depths = tuple(depths or DEFAULT_DEPTHS[which])
    # --quick writes beside, not over, a real run's outputs
    output = Path(output or default_output(which, quick))
    config, data = experiment_setup(
        which, epochs=epochs, seed=seed, data_dir=data_dir, quick=quick, dataset=dataset, threads=threads
    )

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
    write_text(output / "verdict.txt", verdict + "\n")
    print()
    print(format_table(results))
    print()
    print(verdict)
    print(f"\n{len(results)} networks in {elapsed / 60:.1f} min; figure, table and numbers in {output}/")
    return results, verdict
