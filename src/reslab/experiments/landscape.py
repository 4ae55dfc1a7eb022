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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.colors import LogNorm

from reslab.errors import ReslabError
from reslab.experiments.degradation import degradation_runs, study_setup
from reslab.experiments.harness import duration, machine_info, write_csv, write_study
from reslab.experiments.networks import Network, fixed_subset, torch_threads, trained_networks, training_images
from reslab.plots import pyplot, save_figure
from reslab.understand import hessian_extreme_eigenvalues, loss_surface, random_direction, summarize_surface

# measured on the 2-core AMD EPYC (1 thread, load ~3): one loss on 500 images takes ~1.1 s for a 20-layer network,
# ~3.3 s for a 56-layer one; 11 x 11 + 21 points for the four networks: ~20-30 min
DEFAULTS = dict(depths=(20, 56), train_size=500, grid=13, line_points=21, span=1.0, radius=0.5)
QUICK = dict(depths=(20,), train_size=64, grid=5, line_points=7, span=1.0, radius=0.5)
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


def run_landscape(
    *,
    depths: Sequence[int] | None = None,
    networks: str | Path | None = None,
    output: str | Path | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    quick: bool = False,
    threads: int | None = None,
    train_size: int | None = None,
    grid: int | None = None,
    line_points: int | None = None,
    span: float | None = None,
    hessian: bool = False,
) -> tuple[dict[str, Any], str]:
    """1-D and 2-D slices of the training loss of plain-D and ResNet-D for each D in `depths`; writes its outputs,
    returns (doc, verdict).

    train_size images of the training split (a fixed subset drawn by `seed`, the same for every network); a
    grid x grid slice over [-span, span]^2 and a line of line_points points over [-span, span]; the directions are
    drawn from `seed`. hessian: also the Hessian's extreme eigenvalues (Lanczos, 20 products on 256 images).
    """
    d = QUICK if quick else DEFAULTS
    depths = tuple(depths or d["depths"])
    train_size, grid, line_points = train_size or d["train_size"], grid or d["grid"], line_points or d["line_points"]
    span, radius = span or d["span"], d["radius"]
    for flag, v, least in (("--train-size", train_size, 1), ("--grid", grid, 3), ("--line-points", line_points, 3)):
        if v < least:
            raise ReslabError(f"{flag}: expected at least {least}, got {v}")
    if span < radius:
        raise ReslabError(f"--span: expected at least {radius} (the distance the summary is taken at), got {span}")
    t_start = time.perf_counter()
    output, networks, threads, config, data = study_setup(
        "landscape", output=output, networks=networks, seed=seed, data_dir=data_dir, quick=quick, threads=threads
    )
    images, labels, index = fixed_subset(*training_images(config, data), train_size, seed=seed)
    xs = np.linspace(-span, span, grid).tolist()
    line = np.linspace(-span, span, line_points).tolist()
    with torch_threads(threads):
        machine = machine_info()
        nets: list[Network] = trained_networks(degradation_runs(depths), config=config, data=data, networks=networks)
        surfaces, summaries, times, rows = {}, {}, {}, []
        for net in nets:
            t0 = time.perf_counter()
            print(f"{net.label}: {grid}x{grid} + {line_points} losses on {len(labels)} training images", flush=True)
            x = net.inputs(images)
            g = torch.Generator().manual_seed(seed)
            d1, d2 = random_direction(net.model, generator=g), random_direction(net.model, generator=g)
            two = loss_surface(net.model, x, labels, [d1, d2], xs, xs, batch_size=500)
            one = loss_surface(net.model, x, labels, [d1], line, batch_size=500)
            summary = {
                "2d": summarize_surface(two, radius=radius),
                "1d": summarize_surface(one, radius=radius),
                "hessian": None,
            }
            if hessian:
                n = HESSIAN["size"]
                summary["hessian"] = hessian_extreme_eigenvalues(
                    net.model, x[:n], labels[:n], steps=HESSIAN["steps"], seed=seed
                ) | {"images": min(n, len(labels))}
            times[net.label] = time.perf_counter() - t0
            surfaces[net.label] = {"2d": two, "1d": one}
            summaries[net.label] = summary
            rows += _csv_rows(net.label, one, "1d") + _csv_rows(net.label, two, "2d")
            print(
                f"    {net.label}: loss {summary['2d']['loss_center']:.3f} at the minimum, rise at r={radius:g} "
                f"{summary['2d']['loss_rise']:.3g} ({duration(times[net.label])})",
                flush=True,
            )

    verdict = landscape_verdict(summaries, depths=depths, radius=radius).text
    if quick:
        verdict += "\n(--quick: networks trained for 4 steps on a tiny subset, a 5x5 grid; a pipeline check only)"
    output.mkdir(parents=True, exist_ok=True)
    title = f"Loss landscape (Li et al. 2018): {len(labels):,} training images, filter-normalised directions"
    plot_landscapes(surfaces, output / "figure.png", depths=depths, title=title + (" (--quick)" if quick else ""))
    table = format_landscape_table(summaries, times, radius)
    write_csv(output / "results.csv", rows, ["network", "slice", "x", "y", "loss", "accuracy"])
    elapsed = time.perf_counter() - t_start
    doc = {
        "experiment": "landscape",
        "settings": {
            "depths": list(depths),
            "train_size": len(labels),
            "grid": grid,
            "line_points": line_points,
            "span": span,
            "radius": radius,
            "direction_seed": seed,
            "hessian": HESSIAN if hessian else None,
            "quick": quick,
            "networks_dir": str(networks),
            "directions": "filter-normalised, zero on BN and bias parameters (Li et al.'s --xignore biasbn); BN "
            "in eval mode on its running statistics",
        },
        "machine": machine,
        "load_average_1min_at_end": machine_info().get("load_average_1min"),
        "time_s": elapsed,
        "networks": [net.describe() | {"time_s": times[net.label]} for net in nets],
        "summaries": summaries,
        "surfaces": surfaces,
        "train_indices": index,
        "verdict": verdict,
    }
    write_study(output, "landscape", table=table, doc=doc, verdict=verdict, elapsed=elapsed)
    return doc, verdict
