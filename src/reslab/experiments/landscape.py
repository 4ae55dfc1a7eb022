"""`reslab experiment landscape`: the training loss around the trained weights of plain and residual networks.

Li, Xu, Taylor, Studer and Goldstein (2018), "Visualizing the Loss Landscape of Neural Nets": along random
directions normalised filter by filter, the loss of ResNet-56 is a smooth, nearly convex basin, that of the same
network without shortcuts (plain-56) is chaotic and sharply non-convex, while at 20 layers both look alike (their
fig. 5). The slices are reslab.understand.landscape's (their code's choices: BN and bias directions zero, BN on its
running statistics); this module takes the networks `reslab experiment degradation` trained, a fixed subset of the
training set, and writes a contour figure side by side, the numbers and a verdict computed from them.

The summary number is the loss rise at a fixed distance r from the trained weights, in the filter-normalised units
of the axes (at r = 1 every filter has moved by its own norm): the mean over a circle of radius r in the 2-D slice,
and at -r and +r on the finer 1-D slice. Optionally (--hessian) the Hessian's |lambda_min / lambda_max| at the
trained weights, Li et al.'s measure of non-convexity (section 6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.colors import LogNorm

from reslab.config import study_options
from reslab.errors import ReslabError
from reslab.experiments.harness import duration
from reslab.experiments.networks import Network, fixed_subset, training_images
from reslab.experiments.study import Measured, Study, StudyRun, StudySetup, run_study
from reslab.plots import pyplot, save_figure
from reslab.understand import (
    hessian_extreme_eigenvalues,
    loss_surface,
    random_direction,
    rise_with_error,
    summarize_surface,
)

RADIUS = 0.5  # the distance from the trained weights the loss rise is read at (filter-normalised units)
HESSIAN = dict(size=256, steps=20)
# contour levels shared by every panel, so that the same colour is the same loss everywhere (Li et al. draw
# levels 0.5 apart from 0.1 to 10; on a log scale the basin's rim and the far plateau both stay readable)
LEVELS = [0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0]


@dataclass(frozen=True)
class LandscapeVerdict:
    plain_sharper: dict[int, bool]  # depth -> the plain network's loss rises more than the residual one's
    plain_less_convex: dict[int, bool]  # depth -> more of the plain network's 2-D slice is non-convex
    gap_grows_with_depth: bool | None  # None with a single depth
    text: str


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


def landscape_verdict(
    summaries: dict[str, dict[str, Any]], *, depths: Sequence[int], radius: float
) -> LandscapeVerdict:
    """`summaries`: label -> {"2d": summarize_surface of the 2-D slice, "1d": of the 1-D slice, "hessian": ... or
    None}, for plain-D and ResNet-D at each depth. Compares, pair by pair, the 2-D loss rise at `radius` (how sharp
    the minimum is) and the share of non-convex grid points (how chaotic the slice is, Li et al.'s main finding);
    the verdict is about the deepest pair."""
    lines, sharper, ratios = [], {}, {}
    for d in depths:
        p, r = summaries[f"plain-{d}"], summaries[f"ResNet-{d}"]
        ratio = _ratio(p["2d"]["loss_rise"], r["2d"]["loss_rise"])
        sharper[d], ratios[d] = ratio > 1, ratio
        line = (
            f"Depth {d}: loss rise at distance {radius:g} (2-D mean, 1-D): plain-{d} {p['2d']['loss_rise']:.3g}, "
            f"{p['1d']['loss_rise']:.3g}; ResNet-{d} {r['2d']['loss_rise']:.3g}, {r['1d']['loss_rise']:.3g} "
            f"-> the plain network's loss rises {ratio:.2g}x as much. Loss at the trained weights: plain-{d} "
            f"{p['2d']['loss_center']:.3f}, ResNet-{d} {r['2d']['loss_center']:.3f}; share of the grid within 1.0 of "
            f"it: {p['2d']['basin_fraction']:.0%} vs {r['2d']['basin_fraction']:.0%}; non-convex grid points: "
            f"{p['2d']['nonconvex_fraction']:.0%} vs {r['2d']['nonconvex_fraction']:.0%}."
        )
        if p.get("sampling") and r.get("sampling"):
            ps, rs = p["sampling"], r["sampling"]
            line += (
                f" Sampling error over the {ps['images']:,} images, of the rise at distance {radius:g} along the first "
                f"direction: plain-{d} {ps['rise']:.3g} ± {ps['se']:.2g}, ResNet-{d} {rs['rise']:.3g} ± {rs['se']:.2g} "
                "(SE)."
            )
        if p.get("hessian") and r.get("hessian"):
            line += (
                f" Hessian |lambda_min/lambda_max|: plain-{d} {p['hessian']['ratio']:.3g}, ResNet-{d} "
                f"{r['hessian']['ratio']:.3g}."
            )
        lines.append(line)
    nonconvex = {
        d: (summaries[f"plain-{d}"]["2d"]["nonconvex_fraction"], summaries[f"ResNet-{d}"]["2d"]["nonconvex_fraction"])
        for d in depths
    }
    less_convex = {d: p > r for d, (p, r) in nonconvex.items()}  # NaN (no interior points) compares False
    lo, deep = min(depths), max(depths)
    grows = ratios[deep] > ratios[lo] if len(depths) > 1 else None
    found = []
    if less_convex[deep]:
        found.append(
            f"more non-convex ({nonconvex[deep][0]:.0%} of the grid's interior points vs {nonconvex[deep][1]:.0%})"
        )
    if sharper[deep]:
        found.append(f"sharper (its loss rises {ratios[deep]:.2g}x as much at distance {radius:g})")
    if found:
        text = f"Verdict: without shortcuts the {deep}-layer landscape is " + " and ".join(found)
        if less_convex[deep] and sharper[deep]:
            text += ", as Li et al. (2018) found"
        elif less_convex[deep]:
            text += (
                f", as Li et al. (2018) found, but not sharper: its loss rises {ratios[deep]:.2g}x as much as "
                f"ResNet-{deep}'s at distance {radius:g}"
                + (f" ({ratios[lo]:.2g}x at {lo} layers)" if grows is not None else "")
            )
        else:
            text += f", but not more non-convex than ResNet-{deep}'s, unlike Li et al. (2018)"
        if grows is not None and sharper[deep]:
            text += (
                f"; the plain/ResNet rise ratio {'grows' if grows else 'does not grow'} with depth "
                f"({ratios[lo]:.2g}x at {lo} layers, {ratios[deep]:.2g}x at {deep})"
            )
        lines.append(text + ".")
    else:
        lines.append(
            f"Verdict: plain-{deep}'s landscape is neither sharper nor more non-convex than ResNet-{deep}'s here, "
            "unlike Li et al. (2018)."
        )
    return LandscapeVerdict(sharper, less_convex, grows, "\n".join(lines))


def plot_landscapes(surfaces: dict[str, dict[str, Any]], path: str | Path, *, depths: Sequence[int], title: str = ""):
    """One row per depth: the 2-D contours of plain-D and ResNet-D side by side, then both 1-D slices."""
    plt = pyplot()
    fig, axes = plt.subplots(
        len(depths), 4, figsize=(15, 4.3 * len(depths)), squeeze=False, gridspec_kw={"width_ratios": [1, 1, 0.05, 1.2]}
    )
    norm = LogNorm(vmin=LEVELS[0], vmax=LEVELS[-1])
    for row, d in zip(axes, depths, strict=True):
        for ax, label in zip(row[:2], (f"plain-{d}", f"ResNet-{d}"), strict=True):
            s = surfaces[label]["2d"]
            z = np.clip(np.nan_to_num(np.asarray(s["loss"], dtype=float), nan=1e3, posinf=1e3), 1e-3, 1e3)
            filled = ax.contourf(s["x"], s["y"], z, levels=LEVELS, norm=norm, cmap="viridis", extend="both")
            cs = ax.contour(s["x"], s["y"], z, levels=LEVELS, colors="k", linewidths=0.5)
            ax.clabel(cs, fontsize=7, fmt="%g")
            ax.plot([0], [0], "k+", ms=9)
            ax.set_title(f"{label}: training loss, 2-D slice")
            ax.set_xlabel("direction 1 (filter-normalised)")
            ax.set_ylabel("direction 2")
            ax.set_aspect("equal")
        fig.colorbar(filled, cax=row[2], label="training loss (the same levels in every panel)")
        ax = row[3]
        for label, c in ((f"plain-{d}", "tab:red"), (f"ResNet-{d}", "tab:blue")):
            s = surfaces[label]["1d"]
            ax.plot(s["x"], np.clip(np.asarray(s["loss"], dtype=float), 1e-3, 1e3), "o-", ms=3, c=c, label=label)
        ax.set_yscale("log")
        ax.set_title(f"1-D slice along direction 1 ({d} layers)")
        ax.set_xlabel("distance (filter-normalised)")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=110)
    return path


def format_landscape_table(summaries: dict[str, dict[str, Any]], times: dict[str, float], radius: float) -> str:
    hessian = any(s.get("hessian") for s in summaries.values())
    head = (
        f"| network | loss at the minimum | rise at r={radius:g}, 2-D | rise at r={radius:g}, 1-D | grid within 1.0 | "
        "non-convex points |" + (" Hessian abs(min/max) |" if hessian else "") + " time |"
    )
    lines = [head, "|---|" + "---:|" * (6 + hessian)]
    for label, s in summaries.items():
        h = s.get("hessian")
        lines.append(
            f"| {label} | {s['2d']['loss_center']:.3f} | {s['2d']['loss_rise']:.3g} | {s['1d']['loss_rise']:.3g} | "
            f"{s['2d']['basin_fraction']:.0%} | {s['2d']['nonconvex_fraction']:.0%} |"
            + ((f" {h['ratio']:.3g}{'' if h['converged'] else ' (unconverged)'} |" if h else " - |") if hessian else "")
            + f" {duration(times[label])} |"
        )
    return "\n".join(lines)


def _csv_rows(label: str, surface: dict[str, Any], which: str) -> list[dict[str, Any]]:
    if which == "1d":
        return [
            {"network": label, "slice": "1d", "x": x, "loss": loss, "accuracy": acc}
            for x, loss, acc in zip(surface["x"], surface["loss"], surface["accuracy"], strict=True)
        ]
    return [
        {"network": label, "slice": "2d", "x": x, "y": y, "loss": loss, "accuracy": acc}
        for y, loss_row, acc_row in zip(surface["y"], surface["loss"], surface["accuracy"], strict=True)
        for x, loss, acc in zip(surface["x"], loss_row, acc_row, strict=True)
    ]


@dataclass(frozen=True)
class LandscapeInputs:
    images: torch.Tensor  # the fixed subset of the training split every loss is taken on
    labels: torch.Tensor
    index: list[int]  # their indices in the training split
    xs: list[float]  # the 2-D slice's coordinates along each axis
    line: list[float]  # the 1-D slice's
    seed: int  # of the directions and the Hessian's start


class LandscapeStudy(Study):
    """1-D and 2-D slices of the training loss of plain-D and ResNet-D for each D in the options' depths:
    train_size images of the training split (a fixed subset drawn by the seed, the same for every network); a grid x
    grid slice over [-span, span]^2 and a line of line_points points over [-span, span], along directions drawn
    from the seed. hessian: also the Hessian's extreme eigenvalues (Lanczos, HESSIAN's products and images)."""

    name, what = "landscape", "landscape"
    quick_note = "(--quick: networks trained for 4 steps on a tiny subset, a 5x5 grid; a pipeline check only)"

    def prepare(self, setup: StudySetup) -> LandscapeInputs:
        o = self.options
        if o.span < RADIUS:
            raise ReslabError(
                f"--span: expected at least {RADIUS} (the distance the summary is taken at), got {o.span}"
            )
        images, labels, index = fixed_subset(*training_images(setup.config, setup.data), o.train_size, seed=setup.seed)
        xs = np.linspace(-o.span, o.span, o.grid).tolist()
        line = np.linspace(-o.span, o.span, o.line_points).tolist()
        return LandscapeInputs(images, labels, index, xs, line, setup.seed)

    def start(self, net: Network, inputs: LandscapeInputs) -> str:
        o = self.options
        return f"{net.label}: {o.grid}x{o.grid} + {o.line_points} losses on {len(inputs.labels)} training images"

    def measure(self, net: Network, inputs: LandscapeInputs) -> dict[str, Any]:
        x, labels = net.inputs(inputs.images), inputs.labels
        g = torch.Generator().manual_seed(inputs.seed)
        d1, d2 = random_direction(net.model, generator=g), random_direction(net.model, generator=g)
        two = loss_surface(net.model, x, labels, [d1, d2], inputs.xs, inputs.xs, batch_size=500)
        one = loss_surface(net.model, x, labels, [d1], inputs.line, batch_size=500)
        summary = {
            "2d": summarize_surface(two, radius=RADIUS),
            "1d": summarize_surface(one, radius=RADIUS),
            "hessian": None,
            # the noise a rise carries from the choice of images: measured at one point, RADIUS along d1
            "sampling": rise_with_error(net.model, x, labels, d1, RADIUS, batch_size=500),
        }
        if self.options.hessian:
            n = HESSIAN["size"]
            summary["hessian"] = hessian_extreme_eigenvalues(
                net.model, x[:n], labels[:n], steps=HESSIAN["steps"], seed=inputs.seed
            ) | {"images": min(n, len(labels))}
        return {"surfaces": {"2d": two, "1d": one}, "summary": summary}

    def done(self, m: Measured) -> str:
        s = m.value["summary"]["2d"]
        return (
            f"    {m.net.label}: loss {s['loss_center']:.3f} at the minimum, rise at r={RADIUS:g} "
            f"{s['loss_rise']:.3g} ({duration(m.time_s)})"
        )

    def verdict(self, measured: list[Measured], inputs: LandscapeInputs) -> str:
        return landscape_verdict(_summaries(measured), depths=self.options.depths, radius=RADIUS).text

    def title(self, inputs: LandscapeInputs) -> str:
        return f"Loss landscape (Li et al. 2018): {len(inputs.labels):,} training images, filter-normalised directions"

    def plot(self, measured: list[Measured], inputs: LandscapeInputs, path: Path, *, title: str) -> None:
        plot_landscapes(_surfaces(measured), path, depths=self.options.depths, title=title)

    def table(self, measured: list[Measured]) -> str:
        return format_landscape_table(_summaries(measured), {m.net.label: m.time_s for m in measured}, RADIUS)

    def csvs(self, measured: list[Measured]) -> dict[str, tuple[list[dict[str, Any]], list[str]]]:
        rows = []
        for label, s in _surfaces(measured).items():
            rows += _csv_rows(label, s["1d"], "1d") + _csv_rows(label, s["2d"], "2d")
        return {"results.csv": (rows, ["network", "slice", "x", "y", "loss", "accuracy"])}

    def settings(self, inputs: LandscapeInputs, setup: StudySetup) -> dict[str, Any]:
        o = self.options
        return {
            "depths": list(o.depths),
            "train_size": len(inputs.labels),
            "grid": o.grid,
            "line_points": o.line_points,
            "span": o.span,
            "radius": RADIUS,
            "direction_seed": setup.seed,
            "hessian": HESSIAN if o.hessian else None,
            "directions": "filter-normalised, zero on BN and bias parameters (Li et al.'s --xignore biasbn); BN "
            "in eval mode on its running statistics",
        }

    def document(self, measured: list[Measured], inputs: LandscapeInputs) -> dict[str, Any]:
        return {
            "networks": [m.net.describe() | {"time_s": m.time_s} for m in measured],
            "summaries": _summaries(measured),
            "surfaces": _surfaces(measured),
            "train_indices": inputs.index,
        }

    def numbers(self, measured: list[Measured]) -> dict[str, dict[str, float | None]]:
        return {
            label: {
                "loss at the minimum": s["2d"]["loss_center"],
                f"loss rise at r={RADIUS:g}, 2-D": s["2d"]["loss_rise"],
                f"loss rise at r={RADIUS:g}, 1-D": s["1d"]["loss_rise"],
                "non-convex share of the grid": s["2d"]["nonconvex_fraction"],
            }
            for label, s in _summaries(measured).items()
        }

    def findings(self, measured: list[Measured], inputs: LandscapeInputs) -> dict[str, bool | None]:
        v = landscape_verdict(_summaries(measured), depths=self.options.depths, radius=RADIUS)
        out: dict[str, bool | None] = {}
        for d in self.options.depths:
            out[f"plain-{d}'s minimum is sharper than ResNet-{d}'s"] = v.plain_sharper[d]
            out[f"plain-{d}'s slice is less convex than ResNet-{d}'s"] = v.plain_less_convex[d]
        return out


def _summaries(measured: list[Measured]) -> dict[str, dict[str, Any]]:
    return {m.net.label: m.value["summary"] for m in measured}


def _surfaces(measured: list[Measured]) -> dict[str, dict[str, Any]]:
    return {m.net.label: m.value["surfaces"] for m in measured}


def run_landscape(run: StudyRun | None = None, **options: Any) -> tuple[dict[str, Any], str]:
    """The landscape study (`LandscapeStudy`) with `run`'s shared settings and LandscapeOptions' `options` (depths,
    train_size, grid, line_points, span, hessian; None or absent: the default, or the --quick value); writes its
    outputs, returns (results.json's doc, the verdict)."""
    run = run or StudyRun()
    return run_study(LandscapeStudy(study_options("landscape", quick=run.quick, **options)), run)
