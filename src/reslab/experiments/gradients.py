"""`reslab experiment gradients`: gradients through depth, plain against residual, at initialisation and trained.

Two measurements from reslab.understand.gradients, for plain-D and ResNet-D at depths 20, 56 and 110:

1. The norm of each conv layer's weight gradient for one batch, BatchNorm in training mode (as in the step that
   gradient would drive). Yang et al. (2019, "A Mean Field Theory of Batch Normalization") prove that a plain BN
   network's gradients explode towards the input at initialisation, by a constant factor per layer; the factor is
   measured here (a least-squares fit of log norm against depth), not assumed.
2. Shattered gradients (Balduzzi et al. 2017): the input gradients of the logit at points x + t*u along a line
   through a test image. For a deep plain network neighbouring points have nearly unrelated gradients (white
   noise); a residual network's stay correlated. The number is the mean Pearson correlation between the gradients
   of points `lag` steps apart.

At initialisation: the weights `fit` starts from with the same seed (BN statistics measured on training images,
so that eval mode normalises as the network's activations are). Trained: the networks `reslab experiment
degradation` trained (20 and 56 layers by default; 110 is not among them, and 3 epochs of a 110-layer network take
about an hour on a 2-core CPU, so by default it is measured at initialisation only; `--trained-depths 20,56,110`
trains plain-110 and ResNet-110 with the degradation recipe first).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reslab.errors import ReslabError
from reslab.experiments.degradation import degradation_runs, study_setup
from reslab.experiments.harness import duration, machine_info, write_csv, write_study
from reslab.experiments.networks import (
    Network,
    fixed_subset,
    initial_network,
    torch_threads,
    trained_networks,
    training_images,
)
from reslab.plots import pyplot, save_figure
from reslab.understand import (
    calibrate_bn,
    gradient_correlation,
    input_gradients_along_line,
    layer_gradient_norms,
    summarize_gradient_norms,
)

DEFAULTS = dict(depths=(20, 56, 110), trained_depths=(20, 56), batch=128, lines=4, points=65, span=0.25, max_lag=8)
QUICK = dict(depths=(20, 32), trained_depths=(20,), batch=32, lines=2, points=17, span=0.25, max_lag=4)
CALIBRATION_IMAGES = 512  # BN statistics of a network at initialisation, from this many training images


@dataclass(frozen=True)
class GradientsVerdict:
    explodes_at_init: bool | None  # plain: grows towards the input, more with depth, far beyond the residual nets
    shatters_at_init: bool | None  # plain: correlation falls with depth and stays below the residual nets'
    text: str


def _monotone(values: Sequence[float], *, increasing: bool, tolerance: float = 0.0) -> bool:
    """Each value above (below) the one before; within `tolerance` counts, so that two correlations that have both
    reached zero (-0.001, 0.0005) do not read as a rise."""
    pairs = list(zip(values[:-1], values[1:], strict=True))
    return all((b > a - tolerance) if increasing else (b < a + tolerance) for a, b in pairs)


CORRELATION_TOLERANCE = 0.05  # the spread of a mean correlation over 4 lines of 65 points near 0 is ~0.01 (measured)


def _state_lines(rows: list[dict[str, Any]], state: str) -> tuple[list[str], bool | None, bool | None]:
    plain = {r["depth"]: r for r in rows if r["family"] == "plain"}
    residual = {r["depth"]: r for r in rows if r["family"] == "residual"}
    depths = sorted(set(plain) & set(residual))
    if not depths:
        return [], None, None
    name = "At initialisation" if state == "init" else "After training"

    def each(d: dict[int, dict], key: str, fmt: str, prefix: str) -> str:
        return ", ".join(f"{prefix}-{k} {format(d[k][key], fmt)}" for k in depths)

    lines = [
        f"{name}: gradient norm of the first conv / the last conv (BN in training mode): "
        + each(plain, "first_over_last", ".3g", "plain")
        + "; "
        + each(residual, "first_over_last", ".3g", "ResNet")
        + ". Growth per layer towards the input: "
        + each(plain, "growth_towards_input", ".3f", "plain")
        + "; "
        + each(residual, "growth_towards_input", ".3f", "ResNet")
        + "."
    ]
    ratios = [plain[d]["first_over_last"] for d in depths]
    several = len(depths) > 1
    deep = depths[-1]
    explodes = (
        all(plain[d]["growth_towards_input"] > 1 for d in depths)
        and _monotone(ratios, increasing=True)
        and plain[deep]["first_over_last"] > 10 * residual[deep]["first_over_last"]
    )
    test = (
        "growth > 1 at every depth"
        + (", the ratio rising with depth" if several else "")
        + f", and over 10x the residual network's ratio at {deep} layers"
    )
    lines.append(
        f"  -> the plain networks' gradients explode towards the input ({test})"
        + (": as Yang et al. (2019) predict for plain BN networks at initialisation." if state == "init" else ".")
        if explodes
        else f"  -> no explosion towards the input in the plain networks by the test ({test})."
    )
    corr = [plain[d]["correlation_lag1"] for d in depths]
    shatters = (
        _monotone(corr, increasing=False, tolerance=CORRELATION_TOLERANCE)
        and all(plain[d]["correlation_lag1"] < residual[d]["correlation_lag1"] for d in depths)
        and plain[deep]["correlation_lag1"] < 0.5 * residual[deep]["correlation_lag1"]
    )
    test = (
        f"not rising with depth (by more than {CORRELATION_TOLERANCE:g}), " if several else ""
    ) + f"below the residual one at every depth and under half of it at {deep} layers"
    lines.append(
        "Correlation of the input gradients at neighbouring points of a line (lag 1): "
        + each(plain, "correlation_lag1", ".2f", "plain")
        + "; "
        + each(residual, "correlation_lag1", ".2f", "ResNet")
        + "."
    )
    lines.append(
        f"  -> the plain networks' gradients are shattered (plain correlation {test}), as Balduzzi et al. (2017)."
        if shatters
        else f"  -> not shattered by the test (plain correlation {test})."
    )
    return lines, explodes, shatters


def gradients_verdict(rows: list[dict[str, Any]]) -> GradientsVerdict:
    """`rows`: one per network and state, with family, depth, state ("init"/"trained"), first_over_last,
    growth_towards_input and correlation_lag1. The tests each line's conclusion rests on are stated in it."""
    lines = []
    explode = shatter = None
    for state in ("init", "trained"):
        state_lines, e, s = _state_lines([r for r in rows if r["state"] == state], state)
        lines += state_lines
        if state == "init":
            explode, shatter = e, s
    init_depths = sorted({r["depth"] for r in rows if r["state"] == "init"})
    trained_depths = sorted({r["depth"] for r in rows if r["state"] == "trained"})
    untrained = [d for d in init_depths if d not in trained_depths]
    if untrained:
        lines.append(
            f"Depth{'s' if len(untrained) > 1 else ''} {', '.join(map(str, untrained))}: at initialisation only "
            "(not trained by `reslab experiment degradation`; --trained-depths trains them)."
        )
    if explode and shatter:
        lines.append(
            "Verdict: at initialisation the plain networks' gradients both explode towards the input and shatter, "
            "more with depth; the shortcuts prevent both."
        )
    elif explode is not None:
        if explode or shatter:
            done, missed = ("explode towards the input", "shatter") if explode else ("shatter", "explode")
            what = f"{done} but do not {missed}"
        else:
            what = "neither explode nor shatter"
        lines.append(
            f"Verdict: at initialisation the plain networks' gradients {what} by these tests, where the papers "
            "predict both for deep plain networks."
        )
    return GradientsVerdict(explode, shatter, "\n".join(lines))


def measure(
    net: Network, train_x: torch.Tensor, train_y: torch.Tensor, lines_x: torch.Tensor, *, points: int, span: float,
    max_lag: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """Both measurements on one network: per-layer gradient norms on (train_x, train_y) (BN in training mode) and
    the input-gradient correlations along a line through each image of lines_x (BN in eval mode)."""
    norms = layer_gradient_norms(net.model, train_x, train_y)
    ts = torch.linspace(-span, span, points)
    per_line = []
    for i, x in enumerate(lines_x):
        line = input_gradients_along_line(net.model, x, ts, seed=seed + i)
        per_line.append(gradient_correlation(line["gradients"], direction=line["direction"], max_lag=max_lag))
    lags = per_line[0]["lag"]
    correlation = [statistics.fmean(c["correlation"][j] for c in per_line) for j in range(len(lags))]
    directional = [statistics.fmean(c["directional_autocorrelation"][j] for c in per_line) for j in range(len(lags))]
    return {
        "norms": norms,
        "norm_summary": summarize_gradient_norms(norms),
        "lag": lags,
        "correlation": correlation,
        "directional_autocorrelation": directional,
        "correlation_per_line": [c["correlation"] for c in per_line],
    }


def plot_gradients(results: list[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Two columns (initialisation, trained); top: gradient norm per conv layer, bottom: input-gradient correlation."""
    plt = pyplot()
    states = [s for s in ("init", "trained") if any(r["state"] == s for r in results)]
    fig, axes = plt.subplots(2, len(states), figsize=(6.5 * len(states), 8.5), squeeze=False)
    depths = sorted({r["depth"] for r in results})
    shade = {d: 0.45 + 0.55 * i / max(1, len(depths) - 1) for i, d in enumerate(depths)}
    cmaps = {"plain": plt.get_cmap("Reds"), "residual": plt.get_cmap("Blues")}
    for col, state in enumerate(states):
        top, bottom = axes[0][col], axes[1][col]
        for r in (r for r in results if r["state"] == state):
            c = cmaps[r["family"]](shade[r["depth"]])
            ls = "--" if r["family"] == "plain" else "-"
            convs = [n for n in r["norms"] if n["kind"] == "conv" and not n["shortcut"]]
            top.plot(range(1, len(convs) + 1), [n["grad_norm"] for n in convs], ls, c=c, lw=1.4, label=r["label"])
            bottom.plot(r["lag"], r["correlation"], "o" + ls, c=c, ms=3.5, lw=1.4, label=r["label"])
        name = "at initialisation" if state == "init" else "trained"
        top.set_yscale("log")
        top.set_title(f"gradient norm of each conv layer, {name}")
        top.set_xlabel("conv layer (input to output)")
        top.set_ylabel("||dL/dW|| (one batch, BN in training mode)")
        bottom.set_title(f"input gradients along a line, {name}")
        bottom.set_xlabel("distance between the points (steps of the line)")
        bottom.set_ylabel("correlation of the gradients")
        bottom.set_ylim(-0.1, 1.05)
        for ax in (top, bottom):
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=110)
    return path


def format_gradients_table(rows: list[dict[str, Any]], max_lag: int) -> str:
    lines = [
        "| network | state | first / last conv gradient norm | growth per layer towards the input | "
        f"correlation at lag 1 | at lag {max_lag} | time |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {'initialisation' if r['state'] == 'init' else 'trained'} | "
            f"{r['first_over_last']:.3g} | {r['growth_towards_input']:.3f} | {r['correlation_lag1']:.2f} | "
            f"{r['correlation'][-1]:.2f} | {duration(r['time_s'])} |"
        )
    return "\n".join(lines)


def run_gradients(
    *,
    depths: Sequence[int] | None = None,
    trained_depths: Sequence[int] | None = None,
    networks: str | Path | None = None,
    output: str | Path | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    quick: bool = False,
    threads: int | None = None,
    batch: int | None = None,
    lines: int | None = None,
    points: int | None = None,
) -> tuple[dict[str, Any], str]:
    """Gradient norms and input-gradient correlations of plain-D and ResNet-D for each D in `depths` at
    initialisation, and for each D in `trained_depths` trained (the degradation networks, trained if missing);
    writes its outputs, returns (doc, verdict).

    batch: training images for the gradient norms; lines: test images a line is drawn through; points: points per
    line, over t in [-0.25, 0.25] along a Gaussian direction (one standard deviation per normalised pixel).
    """
    d = QUICK if quick else DEFAULTS
    depths = tuple(depths or d["depths"])
    trained_depths = tuple(d["trained_depths"] if trained_depths is None else trained_depths)
    batch, lines, points = batch or d["batch"], lines or d["lines"], points or d["points"]
    span, max_lag = d["span"], d["max_lag"]
    if not set(trained_depths) <= set(depths):
        raise ReslabError(f"--trained-depths: expected depths among --depths {depths}, got {trained_depths}")
    for flag, v, least in (("--batch", batch, 2), ("--lines", lines, 1), ("--points", points, 2 * max_lag + 1)):
        if v < least:
            raise ReslabError(f"{flag}: expected at least {least}, got {v}")
    t_start = time.perf_counter()
    output, networks, threads, config, data = study_setup(
        "gradients", output=output, networks=networks, seed=seed, data_dir=data_dir, quick=quick, threads=threads
    )
    train_images, train_labels = training_images(config, data)
    cal_images, _, _ = fixed_subset(train_images, train_labels, CALIBRATION_IMAGES, seed=seed + 1)
    batch_images, batch_labels, _ = fixed_subset(train_images, train_labels, batch, seed=seed)
    line_images, _, line_index = fixed_subset(data.test_images, data.test_labels, lines, seed=seed)

    results = []
    with torch_threads(threads):
        machine = machine_info()
        todo: list[tuple[Network, bool]] = []
        for run in degradation_runs(depths):
            todo.append((initial_network(run, config=config, data=data), True))
        trained = trained_networks(degradation_runs(trained_depths), config=config, data=data, networks=networks)
        todo += [(net, False) for net in trained]
        for net, at_init in todo:
            t0 = time.perf_counter()
            if at_init:
                calibrate_bn(net.model, net.inputs(cal_images))
            m = measure(
                net, net.inputs(batch_images), batch_labels, net.inputs(line_images), points=points, span=span,
                max_lag=max_lag, seed=seed,
            )  # fmt: skip
            s = m["norm_summary"]
            results.append(
                {
                    "label": net.label,
                    "family": net.run.family,
                    "depth": net.run.depth,
                    "state": net.state,
                    "first_over_last": s["first_over_last"],
                    "growth_towards_input": s["growth_towards_input"],
                    "correlation_lag1": m["correlation"][0],
                    "time_s": time.perf_counter() - t0,
                    **m,
                }
            )
            print(
                f"{net.label} ({net.state}): first/last conv gradient {s['first_over_last']:.3g}, lag-1 correlation "
                f"{m['correlation'][0]:.2f} ({duration(results[-1]['time_s'])})",
                flush=True,
            )

    verdict = gradients_verdict(results).text
    if quick:
        verdict += "\n(--quick: networks trained for 4 steps on a tiny subset; a pipeline check, not the finding)"
    output.mkdir(parents=True, exist_ok=True)
    title = (
        f"Gradients through depth: plain (dashed) vs residual (solid); norms on {batch} training images, "
        f"correlations on {lines} lines of {points} points"
    )
    plot_gradients(results, output / "figure.png", title=title + (" (--quick)" if quick else ""))
    table = format_gradients_table(results, max_lag)
    layer_rows = [{"network": r["label"], "state": r["state"], **n} for r in results for n in r["norms"]]
    write_csv(
        output / "results.csv",
        layer_rows,
        ["network", "state", "index", "layer", "kind", "shortcut", "depth", "grad_norm", "weight_norm", "relative"],
    )
    corr_rows = [
        {"network": r["label"], "state": r["state"], "lag": lag, "correlation": c, "directional_autocorrelation": a}
        for r in results
        for lag, c, a in zip(r["lag"], r["correlation"], r["directional_autocorrelation"], strict=True)
    ]
    write_csv(
        output / "correlation.csv", corr_rows, ["network", "state", "lag", "correlation", "directional_autocorrelation"]
    )
    elapsed = time.perf_counter() - t_start
    trained_by_label = {net.label: net for net in trained}
    doc = {
        "experiment": "gradients",
        "settings": {
            "depths": list(depths),
            "trained_depths": list(trained_depths),
            "batch": batch,
            "lines": lines,
            "points": points,
            "span": span,
            "max_lag": max_lag,
            "calibration_images": CALIBRATION_IMAGES,
            "line_test_indices": line_index,
            "seed": seed,
            "quick": quick,
            "networks_dir": str(networks),
        },
        "machine": machine,
        "load_average_1min_at_end": machine_info().get("load_average_1min"),
        "time_s": elapsed,
        "networks": [net.describe() for net in trained_by_label.values()],
        "results": results,
        "verdict": verdict,
    }
    write_study(output, "gradients", table=table, doc=doc, verdict=verdict, elapsed=elapsed)
    return doc, verdict
