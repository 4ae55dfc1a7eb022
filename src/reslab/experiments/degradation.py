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
from typing import Any

from reslab.atomic import write_text
from reslab.config import EXPERIMENT_DEPTHS, EXPERIMENT_OUTPUT, EXPERIMENT_QUICK, TrainConfig, make_config
from reslab.data import Dataset, find_data_dir, load_dataset
from reslab.errors import ReslabError
from reslab.experiments.harness import Run, RunResult, by_label, compare, format_table
from reslab.experiments.spread import Difference, Spread, Z
from reslab.models import list_models

# ----------------------------------------------------------------------------------------------------------------------
# verdicts: pure functions of the final numbers


@dataclass(frozen=True)
class Verdict:
    plain_degrades: bool  # the deepest plain network trains worse than the shallowest (several seeds: resolved so)
    residual_improves: bool  # the deepest residual network trains no worse (several seeds: resolved better)
    text: str
    resolved: bool | None = None  # several seeds: the plain networks' difference is beyond the noise; 1 seed: None


Errors = dict[int, float | Sequence[float]]  # depth -> final training error (a fraction), or one per seed


def degradation_verdict(plain: Errors, residual: Errors) -> Verdict:
    """Compare the final training errors of the shallowest and deepest network of each family.

    `plain` and `residual` map depth -> final training error, or one per seed. The paper's finding (CIFAR-10,
    Figure 6) is both: the deeper plain network trains worse, the deeper residual network at least as well. With
    several seeds a difference is called only beyond the noise (reslab.experiments.spread: the difference of the
    means against its standard error, stated in the text); with one, the verdict says it is a single run.
    """
    if len(plain) < 2 or len(residual) < 2:
        raise ValueError("degradation_verdict needs at least two depths of each family")
    lo, hi = min(plain), max(plain)
    rlo, rhi = min(residual), max(residual)
    dp = Difference(Spread(plain[hi]), Spread(plain[lo]))
    dr = Difference(Spread(residual[rhi]), Spread(residual[rlo]))
    if dp.se is None or dr.se is None:
        return _single_run_verdict(dp, dr, (lo, hi, rlo, rhi))
    # "at least as well" is called only when resolved: a difference lost in a wide spread (a deep network that
    # failed to start on one seed of three) is not evidence that the deeper network trains as well
    plain_degrades, residual_improves = dp.sign > 0, dr.sign < 0
    lines = [
        f"plain-{hi} vs plain-{lo}: training error {dp.a.text()} vs {dp.b.text()} ({dp.criterion()}) -> "
        + {1: "the deeper plain network trained worse: degradation.", -1: "the deeper plain network trained better.",
           0: "not resolved: within the seeds' noise."}[dp.sign],
        f"ResNet-{rhi} vs ResNet-{rlo}: training error {dr.a.text()} vs {dr.b.text()} ({dr.criterion()}) -> "
        + {-1: "the deeper residual network trained better.", 1: "the deeper residual network trained worse.",
           0: "not resolved: within the seeds' noise."}[dr.sign],
    ]  # fmt: skip
    n = min(dp.a.n, dp.b.n)
    if plain_degrades and residual_improves:
        lines.append(
            f"Verdict: as in the paper, depth hurts the plain networks and not the residual ones ({n} seeds; a "
            f"difference is called beyond {Z:g} standard errors)."
        )
    elif plain_degrades and dr.sign == 0:
        needed = dr.seeds_needed
        lines.append(
            f"Verdict: the plain networks degrade, as in the paper (resolved by {n} seeds); whether ResNet-{rhi} "
            f"trains at least as well as ResNet-{rlo} is not resolved: their training errors are within the seeds' "
            "noise" + (f" (about {needed} seeds would tell them apart at this spread)." if needed else ".")
        )
    elif dp.sign == 0:
        needed = dp.seeds_needed
        lines.append(
            f"Verdict: not resolved: {n} seeds do not tell plain-{hi}'s training error from plain-{lo}'s"
            + (f" (about {needed} seeds would at this spread)." if needed else ".")
        )
    elif plain_degrades:
        lines.append("Verdict: the plain networks degrade, but the deeper residual network trained worse too.")
    else:
        lines.append(f"Verdict: no degradation: the deeper plain network trained better, resolved by {n} seeds.")
    return Verdict(plain_degrades, residual_improves, "\n".join(lines), dp.resolved)


def _single_run_verdict(dp: Difference, dr: Difference, depths: tuple[int, int, int, int]) -> Verdict:
    """One seed: the sign of each difference as it fell, and the warning that seed noise is not measured."""
    lo, hi, rlo, rhi = depths
    plain_gap, res_gap = dp.diff, dr.diff
    plain_degrades, residual_improves = plain_gap > 0, res_gap <= 0

    def pts(gap: float) -> str:
        return f"{abs(100 * gap):.2f} points {'higher' if gap > 0 else 'lower' if gap < 0 else 'equal'}"

    lines = [
        f"plain-{hi} vs plain-{lo}: training error {100 * dp.a.mean:.2f}% vs {100 * dp.b.mean:.2f}% "
        f"({pts(plain_gap)}) -> "
        + ("the deeper plain network trained worse: degradation." if plain_degrades else "no degradation here."),
        f"ResNet-{rhi} vs ResNet-{rlo}: training error {100 * dr.a.mean:.2f}% vs {100 * dr.b.mean:.2f}% "
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
    lines.append(
        "A single run (one seed): seed noise is not measured, so these signs may not hold on another seed; "
        "--seeds N trains each network N times and calls a difference only beyond the noise."
    )
    return Verdict(plain_degrades, residual_improves, "\n".join(lines))


def shortcuts_verdict(errors: dict[str, tuple[float | Sequence[float], float | Sequence[float]]]) -> str:
    """`errors`: option ("A", "B", "C") -> (training error, test error), each a number or one per seed. The paper
    (ImageNet, Table 3) finds B slightly better than A and C marginally better than B: small differences, so
    projections are not essential. Options are ranked by their means; over several seeds each step of the test
    ranking is checked against the noise (reslab.experiments.spread), and the paper's order is called only if every
    step is resolved."""
    if not errors:
        raise ValueError("shortcuts_verdict needs at least one option")
    spreads = {k: (Spread(train), Spread(test)) for k, (train, test) in errors.items()}
    final = {k: (train.mean, test.mean) for k, (train, test) in spreads.items()}
    by_train = sorted(final, key=lambda k: final[k][0])
    by_test = sorted(final, key=lambda k: final[k][1])
    spread = max(v[1] for v in final.values()) - min(v[1] for v in final.values())

    def ranking(order: list[str], i: int) -> str:
        text = f"{order[0]} {100 * final[order[0]][i]:.2f}%"
        for prev, k in zip(order[:-1], order[1:], strict=True):
            same = f"{100 * final[k][i]:.2f}" == f"{100 * final[prev][i]:.2f}"
            text += f" {'=' if same else '<'} {k} {100 * final[k][i]:.2f}%"
        return text

    pairs = list(zip(by_test[:-1], by_test[1:], strict=True))
    steps = [Difference(spreads[b][1], spreads[a][1]) for a, b in pairs]
    n = min(s.n for _, s in spreads.values())  # seeds every option has
    several = n > 1
    as_paper = by_test == sorted(final, reverse=True) and (not several or all(d.resolved for d in steps))
    lines = [
        "training error: " + ranking(by_train, 0),
        "test error:     " + ranking(by_test, 1),
        f"Test errors span {100 * spread:.2f} points. "
        + (
            "As in the paper (A > B > C in error), projections help a little."
            if as_paper
            else "The paper's order (C best, then B, then A) does not show here; its differences were small too."
        ),
    ]
    if several and not as_paper and by_test[-1] == "A" and steps[-1].resolved:
        # the paper's main point (projections help a little over zero-padding) can hold without its full order
        lines[-1] += (
            f" A (zero-padded identity) has the highest test error, resolved by {n} seeds: as in the paper"
            ", projections help a little"
            + ("; the others are not told apart." if not all(d.resolved for d in steps[:-1]) else ".")
        )
    if several:
        lines.insert(
            2,
            "test error over seeds: "
            + "; ".join(f"{b} vs {a}: {d.criterion()}" for (a, b), d in zip(pairs, steps, strict=True)),
        )
    else:
        lines.append("A single run (one seed): --seeds N tells these differences from seed noise.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# the two experiments and their CLI


def parse_depths(text: str | None, which: str, *, flag: str = "--depths") -> tuple[int, ...]:
    """`--depths 20,56` -> (20, 56), checked against the registry and the experiment (`flag` names it in errors)."""
    if text is None:
        return EXPERIMENT_DEPTHS[which]
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
    return Path(EXPERIMENT_OUTPUT) / (which + ("-quick" if quick else ""))


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
    """(the recipe, the data) that `run_experiment(which, ...)` trains with: RECIPES[which] and the data, so that
    the experiments that reuse its networks ask for exactly the runs it makes.

    --quick: EXPERIMENT_QUICK's training images, epochs, batch, test images and threads; and the synthetic
    stand-in when Fashion-MNIST is not installed (a pipeline check must run in CI).
    """
    if epochs is not None and epochs < 1:
        raise ReslabError(f"--epochs: expected a positive number of epochs, got {epochs}")
    if threads is not None and threads < 1:
        raise ReslabError(f"--threads: expected a positive number of threads, got {threads}")
    overrides: dict[str, Any] = {
        "epochs": epochs,
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
        q = EXPERIMENT_QUICK
        overrides.update(train_subset=q["train_subset"], batch_size=q["batch_size"])
        overrides["threads"] = threads or q["threads"]
        overrides["epochs"] = epochs or q["epochs"]
        data = dataclasses.replace(
            data, test_images=data.test_images[: q["test_size"]], test_labels=data.test_labels[: q["test_size"]]
        )
    return make_config(which, dataset=dataset, **overrides), data


def _verdict(which: str, results: Sequence[RunResult]) -> str:
    """The experiment's verdict from each network's final errors, one per seed."""
    groups = by_label(results)
    if which == "degradation":
        errors: dict[str, dict[int, list[float]]] = {"plain": {}, "residual": {}}
        for rs in groups.values():
            errors[rs[0].run.family][rs[0].run.depth] = [r.final_train_error for r in rs]
        return degradation_verdict(errors["plain"], errors["residual"]).text
    return shortcuts_verdict(
        {
            rs[0].run.model_kwargs["shortcut"]: ([r.final_train_error for r in rs], [r.final_test_error for r in rs])
            for rs in groups.values()
        }
    )


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
    seeds: int = 1,
) -> tuple[list[RunResult], str]:
    """Run 'degradation' or 'shortcuts', write its outputs, print and return (results, verdict text).

    seeds: each network is trained with seeds seed, seed + 1, ..., and the verdict is computed from their spread.
    """
    if seeds < 1:
        raise ReslabError(f"--seeds: expected a positive number of seeds, got {seeds}")
    if which not in EXPERIMENT_DEPTHS:
        raise ReslabError(f"experiment: expected one of {', '.join(EXPERIMENT_DEPTHS)}, got {which!r}")
    depths = tuple(depths or EXPERIMENT_DEPTHS[which])
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
    seed_list = range(seed, seed + seeds)
    results = compare(runs, base_config=config, output=output, data=data, title=title, seeds=seed_list)
    elapsed = time.perf_counter() - t0
    verdict = _verdict(which, results)
    if quick:
        verdict += "\n(--quick: too little training for the verdict to mean anything)"
    write_text(output / "verdict.txt", verdict + "\n")
    print()
    print(format_table(results))
    print()
    print(verdict)
    print(f"\n{len(results)} networks in {elapsed / 60:.1f} min; figure, table and numbers in {output}/")
    return results, verdict
