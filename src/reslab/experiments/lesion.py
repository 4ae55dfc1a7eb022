"""`reslab experiment lesion`: delete and reorder blocks of the trained ResNet-56 and plain-56 at test time.

Veit, Wilber and Belongie (2016), "Residual Networks Behave Like Ensembles of Relatively Shallow Networks": deleting
one block of a trained residual network leaves every path that skipped it, so the test error barely moves, except at
the blocks that change resolution (their shortcut is not an identity); deleting k random blocks raises the error
smoothly with k; reordering blocks hurts little. A plain network has one path: removing a layer breaks it, and its
error goes towards chance. The measurements are reslab.understand.lesion's; this module is the study
(reslab.experiments.study): a fixed subset of the test set, the measurement of each network, its rows, table, figure
and a verdict computed from them. Its options and their defaults are reslab.config.LesionOptions.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.ticker import MaxNLocator

from reslab.config import study_options
from reslab.experiments.harness import duration
from reslab.experiments.networks import Network, fixed_subset
from reslab.experiments.study import Measured, Study, StudyRun, StudySetup, run_study
from reslab.plots import pyplot, save_figure
from reslab.understand import evaluator, lesion_study, summarize_lesions

NEAR_CHANCE = 0.05  # an intact test error within 5 points of chance: the network learned (almost) nothing
HARMFUL = 0.05  # a deleted block that costs more than 5 points of test error is named in the verdict


@dataclass(frozen=True)
class LesionInputs:
    images: torch.Tensor  # the fixed subset of the test set every network is scored on
    labels: torch.Tensor
    index: list[int]  # their indices in the test set
    chance: float  # the test error of a guess: 1 - 1/classes
    seed: int  # of the random deletions and swaps


def harmful_blocks(study: dict[str, Any], *, threshold: float = HARMFUL) -> dict[str, Any]:
    """The shape-keeping blocks whose deletion alone raises the test error by more than `threshold`: the median
    of `summarize_lesions` says how most blocks fare, these are the exceptions."""
    base = study["baseline"]["error"]
    same = [r for r in study["single"] if r["error"] is not None and not r["downsampling"]]
    return {
        "harmful_blocks": [r["block"] for r in same if r["error"] - base > threshold],
        "same_shape_blocks": len(same),
    }


@dataclass(frozen=True)
class LesionVerdict:
    residual_robust: bool  # one block deleted moves the residual network less than a tenth of the way to chance
    plain_collapses: bool  # one block deleted takes the plain network more than half of the way to chance
    text: str


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _pts(v: float) -> str:
    return f"{100 * v:+.1f} points"


def sampling_error(error: float, images: int) -> float:
    """The standard error of an error rate measured on `images` test images (binomial: sqrt(e (1 - e) / n))."""
    return math.sqrt(max(error * (1 - error), 0.0) / images)


def _measured_lines(
    r: dict[str, Any], p: dict[str, Any], *, chance: float, depth: int, images: int | None
) -> list[str]:
    """What was measured, a line per experiment: the verdict's evidence before its conclusion."""
    r_damage, p_damage = r["single_median"] - r["baseline"], p["single_median"] - p["baseline"]
    lines = [
        f"Deleting one block that keeps the shape (test error, chance {_pct(chance)}): ResNet-{depth} "
        f"{_pct(r['baseline'])} -> median {_pct(r['single_median'])} ({_pts(r_damage)}; worst "
        f"{_pct(r['single_max'])} without {r['single_max_block']}); plain-{depth} {_pct(p['baseline'])} -> median "
        f"{_pct(p['single_median'])} ({_pts(p_damage)}).",
    ]
    if images:
        se = sampling_error(r["single_median"], images)  # the larger of the two errors the damage is taken between
        lines.append(
            f"Sampling error: each error is measured on {images:,} test images, so its standard error is about "
            f"{100 * se:.2f} points (binomial, at ResNet-{depth}'s median); ResNet-{depth}'s median damage is "
            f"{abs(r_damage) / se:.1f} of them" + (" (within the sampling error)." if abs(r_damage) < 2 * se else ".")
        )
    harmful = r.get("harmful_blocks")
    if harmful is not None:
        lines.append(
            f"Blocks of ResNet-{depth} whose deletion costs more than {100 * HARMFUL:.0f} points: "
            + (f"{len(harmful)} of {r['same_shape_blocks']} ({', '.join(harmful)})." if harmful else "none.")
        )
    if r["downsampling_mean"] is not None:
        worse = r["downsampling_mean"] > r["single_max"]
        lines.append(
            f"Deleting a block that changes the resolution: ResNet-{depth} {_pct(r['downsampling_mean'])} on average"
            + (", worse than any other block, as Veit et al. found." if worse else ", no worse than the worst other.")
            + (
                f" plain-{depth}'s {len(p['not_removed'])} such blocks cannot be removed (nothing carries their input "
                "to the next shape)."
                if p["not_removed"]
                else ""
            )
        )
    ks = sorted(set(r["random_mean"]) & set(p["random_mean"]))
    if ks:
        lines.append(
            f"Deleting k random blocks (mean over draws): ResNet-{depth} "
            + ", ".join(f"k={k} {_pct(r['random_mean'][k])}" for k in ks)
            + f"; plain-{depth} "
            + ", ".join(f"k={k} {_pct(p['random_mean'][k])}" for k in ks)
            + "."
        )
    ks = sorted(set(r["reorder_mean"]) & set(p["reorder_mean"]))
    if ks:
        lo, hi = ks[0], ks[-1]
        lines.append(
            f"Swapping k random pairs of same-shape blocks: ResNet-{depth} k={lo} {_pct(r['reorder_mean'][lo])}, "
            f"k={hi} {_pct(r['reorder_mean'][hi])}; plain-{depth} k={lo} {_pct(p['reorder_mean'][lo])}, k={hi} "
            f"{_pct(p['reorder_mean'][hi])}."
        )
    return lines


def lesion_verdict(
    residual: dict[str, Any], plain: dict[str, Any], *, chance: float, depth: int, images: int | None = None
) -> LesionVerdict:
    """What `summarize_lesions` found for ResNet-`depth` and plain-`depth`, in words; `chance` = 1 - 1/classes.

    The thresholds are stated in the text: "robust" is a median damage below a tenth of the distance from the
    intact error to chance, "collapses" a median error past half of it. `images`: how many test images each error
    was measured on; the text then states the sampling error of the residual network's median damage.
    """
    r, p = residual, plain
    r_damage, p_damage = r["single_median"] - r["baseline"], p["single_median"] - p["baseline"]
    # a network already near chance has nothing to lose: neither claim can be made of it
    learned = min(chance - r["baseline"], chance - p["baseline"]) > NEAR_CHANCE
    residual_robust = learned and r_damage < 0.1 * (chance - r["baseline"])
    plain_collapses = learned and p_damage > 0.5 * (chance - p["baseline"])
    lines = _measured_lines(r, p, chance=chance, depth=depth, images=images)
    harmful = r.get("harmful_blocks")
    if not learned:
        lines.append(
            f"Verdict: none: an intact network is within {100 * NEAR_CHANCE:.0f} points of chance, so deleting "
            "its blocks cannot show what it relies on (train it longer)."
        )
    elif residual_robust and plain_collapses:
        lines.append(
            f"Verdict: as Veit et al. (2016), ResNet-{depth} behaves like an ensemble of shallower paths (one block "
            f"fewer costs it a median {_pts(r_damage)}, less than a tenth of the way to chance"
            + (f"; {len(harmful)} blocks are exceptions, named above" if harmful else "")
            + f") while plain-{depth}, a single path, breaks (more than half of the way to chance)."
        )
    elif residual_robust:
        lines.append(
            f"Verdict: ResNet-{depth} shrugs off a deleted block, but plain-{depth} does not collapse here "
            "(its median error stays below half of the way to chance)."
        )
    elif plain_collapses:
        lines.append(
            f"Verdict: plain-{depth} collapses, but ResNet-{depth} is hurt too (one block fewer costs "
            f"{_pts(r_damage)}, more than a tenth of the way to chance): not the ensemble-like robustness of the paper."
        )
    else:
        lines.append(
            "Verdict: neither the ensemble-like robustness of the residual network nor the plain one's collapse."
        )
    return LesionVerdict(residual_robust, plain_collapses, "\n".join(lines))


def _rows(label: str, study: dict[str, Any]) -> list[dict[str, Any]]:
    """All evaluations of one network as CSV rows: intact, single, random, reorder."""
    rows = [{"network": label, "experiment": "intact", **study["baseline"]}]
    for r in study["single"]:
        rows.append({"network": label, "experiment": "single", "blocks": r["block"], **r})
    for r in study["random"]:
        rows.append({"network": label, "experiment": "random", **r})
    for r in study["reorder"]:
        rows.append({"network": label, "experiment": "reorder", "blocks": r["swaps"], **r})
    return rows


COLUMNS = ["network", "experiment", "position", "blocks", "downsampling", "k", "draw", "kendall_tau", "error", "loss"]


def plot_lesions(studies: dict[str, dict[str, Any]], path: str | Path, *, chance: float, title: str = "") -> Path:
    """Three panels as Veit et al.'s figs. 3 and 5: each block deleted, k random blocks deleted, blocks reordered."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    colours = {"residual": "tab:blue", "plain": "tab:red"}
    for label, study in studies.items():
        c = colours[study["family"]]
        single = [r for r in study["single"] if r["error"] is not None]
        ax = axes[0]
        # a block that cannot be removed (plain, changes shape) is a gap in the line, not a point
        errors = [math.nan if r["error"] is None else 100 * r["error"] for r in study["single"]]
        ax.plot([r["position"] + 1 for r in study["single"]], errors, "o-", ms=3.5, c=c, label=label)
        down = [r for r in single if r["downsampling"]]
        ax.plot([r["position"] + 1 for r in down], [100 * r["error"] for r in down], "s", ms=8, mfc="none", c=c)
        ax.axhline(100 * study["baseline"]["error"], ls="--", lw=1, c=c)
        by_k: dict[int, list[float]] = {}
        for r in study["random"]:
            by_k.setdefault(r["k"], []).append(100 * r["error"])
        ks = sorted(by_k)
        means = [statistics.fmean(by_k[k]) for k in ks]
        # clamped at 0: the mean of equal draws (a broken network at chance every time) can round above their min
        lo = [max(0.0, m - min(by_k[k])) for k, m in zip(ks, means, strict=True)]
        hi = [max(0.0, max(by_k[k]) - m) for k, m in zip(ks, means, strict=True)]
        axes[1].errorbar(ks, means, yerr=[lo, hi], fmt="o-", ms=4, capsize=3, c=c, label=label)
        axes[2].plot(
            [r["kendall_tau"] for r in study["reorder"]], [100 * r["error"] for r in study["reorder"]], "o", ms=4,
            c=c, alpha=0.7, label=label,
        )  # fmt: skip
    for ax in axes:
        ax.axhline(100 * chance, ls=":", lw=1, c="gray", label="chance")
        ax.set_ylim(0, 100)
        ax.set_ylabel("test error (%)")
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("deleted block (input to output); squares: it changes the resolution")
    axes[0].set_title("each block deleted in turn (dashed: intact)")
    axes[1].set_xlabel("number of blocks deleted (k)")
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_title("k random blocks deleted (mean, min-max over draws)")
    axes[2].set_xlabel("Kendall tau of the new block order (1 = original)")
    axes[2].set_title("random pairs of same-shape blocks swapped")
    axes[2].invert_xaxis()
    axes[0].legend(loc="center right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=110)
    return path


def format_lesion_table(summaries: dict[str, dict[str, Any]], times: dict[str, float]) -> str:
    lines = [
        "| network | intact | one block deleted: median | worst (block) | a downsampling block deleted | "
        "k random deleted: k=1 | k=max | k swaps: k=max | time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s in summaries.items():
        random, reorder = s["random_mean"], s["reorder_mean"]
        kmax = max(random) if random else None
        rmax = max(reorder) if reorder else None
        worst = "-" if s["single_max"] is None else f"{_pct(s['single_max'])} ({s['single_max_block']})"
        down = "not removable" if s["not_removed"] else _pct(s["downsampling_mean"])
        lines.append(
            f"| {label} | {_pct(s['baseline'])} | {_pct(s['single_median'])} | {worst} | {down} | "
            f"{_pct(random.get(1))} | {_pct(random.get(kmax))} (k={kmax}) | {_pct(reorder.get(rmax))} (k={rmax}) | "
            f"{duration(times[label])} |"
        )
    return "\n".join(lines)


class LesionStudy(Study):
    """The lesion study of ResNet-D and plain-D for each D in the options' depths: test_size images of the test set
    (a fixed subset drawn by the seed), each block deleted in turn, k = 1..max_k random blocks deleted and k random
    pairs swapped, `draws` times each."""

    name, what = "lesion", "lesion study"

    def prepare(self, setup: StudySetup) -> LesionInputs:
        data = setup.data
        images, labels, index = fixed_subset(
            data.test_images, data.test_labels, self.options.test_size, seed=setup.seed
        )
        return LesionInputs(images, labels, index, 1 - 1 / data.num_classes, setup.seed)

    def start(self, net: Network, inputs: LesionInputs) -> str:
        return f"{net.label}: lesion study on {len(inputs.labels)} test images"

    def measure(self, net: Network, inputs: LesionInputs) -> dict[str, Any]:
        o = self.options
        evaluate = evaluator(net.inputs(inputs.images), inputs.labels, batch_size=500)
        study = lesion_study(net.model, evaluate, ks=tuple(range(1, o.max_k + 1)), draws=o.draws, seed=inputs.seed)
        return {"family": net.run.family, "depth": net.run.depth, **study}

    def done(self, m: Measured) -> str:
        return f"    {m.net.label}: {duration(m.time_s)}"

    def verdict(self, measured: list[Measured], inputs: LesionInputs) -> str:
        summaries = _summaries(measured)
        return "\n\n".join(
            lesion_verdict(
                summaries[f"ResNet-{d}"],
                summaries[f"plain-{d}"],
                chance=inputs.chance,
                depth=d,
                images=len(inputs.labels),
            ).text
            for d in self.options.depths
        )

    def title(self, inputs: LesionInputs) -> str:
        return f"Lesion study (Veit et al. 2016) on {len(inputs.labels):,} test images"

    def plot(self, measured: list[Measured], inputs: LesionInputs, path: Path, *, title: str) -> None:
        plot_lesions({m.net.label: m.value for m in measured}, path, chance=inputs.chance, title=title)

    def table(self, measured: list[Measured]) -> str:
        return format_lesion_table(_summaries(measured), {m.net.label: m.time_s for m in measured})

    def csvs(self, measured: list[Measured]) -> dict[str, tuple[list[dict[str, Any]], list[str]]]:
        return {"results.csv": ([row for m in measured for row in _rows(m.net.label, m.value)], COLUMNS)}

    def settings(self, inputs: LesionInputs, setup: StudySetup) -> dict[str, Any]:
        o = self.options
        return {
            "depths": list(o.depths),
            "test_size": len(inputs.labels),
            "test_subset_seed": setup.seed,
            "ks": list(range(1, o.max_k + 1)),
            "draws": o.draws,
            "seed": setup.seed,
        }

    def document(self, measured: list[Measured], inputs: LesionInputs) -> dict[str, Any]:
        return {
            "networks": [m.net.describe() | {"time_s": m.time_s} for m in measured],
            "summaries": _summaries(measured),
            "studies": {m.net.label: m.value for m in measured},
            "test_indices": inputs.index,
        }

    def numbers(self, measured: list[Measured]) -> dict[str, dict[str, float | None]]:
        out = {}
        for label, s in _summaries(measured).items():
            kmax = max(s["random_mean"]) if s["random_mean"] else None
            out[label] = {
                "intact test error": s["baseline"],
                "one block deleted (median)": s["single_median"],
                f"{kmax} random blocks deleted": None if kmax is None else s["random_mean"][kmax],
            }
        return out

    def findings(self, measured: list[Measured], inputs: LesionInputs) -> dict[str, bool | None]:
        summaries, out = _summaries(measured), {}
        for d in self.options.depths:
            v = lesion_verdict(summaries[f"ResNet-{d}"], summaries[f"plain-{d}"], chance=inputs.chance, depth=d)
            out[f"ResNet-{d} shrugs off one deleted block"] = v.residual_robust
            out[f"plain-{d} collapses without one block"] = v.plain_collapses
        return out


def _summaries(measured: list[Measured]) -> dict[str, dict[str, Any]]:
    return {m.net.label: summarize_lesions(m.value) | harmful_blocks(m.value) for m in measured}


def run_lesion(run: StudyRun | None = None, **options: Any) -> tuple[dict[str, Any], str]:
    """The lesion study (`LesionStudy`) with `run`'s shared settings and LesionOptions' `options` (depths,
    test_size, max_k, draws; None or absent: the default, or the --quick value); writes its outputs, returns
    (results.json's doc, the verdict)."""
    run = run or StudyRun()
    return run_study(LesionStudy(study_options("lesion", quick=run.quick, **options)), run)
