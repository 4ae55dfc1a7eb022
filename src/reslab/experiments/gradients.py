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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reslab.config import study_options
from reslab.errors import ReslabError
from reslab.experiments.degradation import degradation_runs
from reslab.experiments.harness import duration
from reslab.experiments.networks import Network, fixed_subset, initial_network, trained_networks, training_images
from reslab.experiments.study import Measured, Study, StudyRun, StudySetup, run_study
from reslab.plots import pyplot, save_figure
from reslab.understand import (
    calibrate_bn,
    gradient_correlation,
    input_gradients_along_line,
    layer_gradient_norms,
    summarize_gradient_norms,
)

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


@dataclass(frozen=True)
class GradientsInputs:
    calibration: torch.Tensor  # training images whose statistics a network at initialisation's BN takes
    batch_images: torch.Tensor  # the batch the gradient norms are taken on
    batch_labels: torch.Tensor
    line_images: torch.Tensor  # the test images a line is drawn through
    line_index: list[int]  # their indices in the test set
    seed: int  # of the lines' directions


class GradientsStudy(Study):
    """Gradient norms and input-gradient correlations of plain-D and ResNet-D for each D in the options' depths at
    initialisation, and for each D in trained_depths trained. batch: training images for the gradient norms; lines:
    test images a line is drawn through; points: points per line, over t in [-span, span] along a Gaussian direction
    (one standard deviation per normalised pixel)."""

    name, what = "gradients", "gradients"

    def prepare(self, setup: StudySetup) -> GradientsInputs:
        o = self.options
        if not set(o.trained_depths) <= set(o.depths):
            raise ReslabError(f"--trained-depths: expected depths among --depths {o.depths}, got {o.trained_depths}")
        if o.points < 2 * o.max_lag + 1:
            raise ReslabError(f"--points: expected at least {2 * o.max_lag + 1}, got {o.points}")
        data, seed = setup.data, setup.seed
        train_images, train_labels = training_images(setup.config, data)
        calibration, _, _ = fixed_subset(train_images, train_labels, CALIBRATION_IMAGES, seed=seed + 1)
        batch_images, batch_labels, _ = fixed_subset(train_images, train_labels, o.batch, seed=seed)
        line_images, _, line_index = fixed_subset(data.test_images, data.test_labels, o.lines, seed=seed)
        return GradientsInputs(calibration, batch_images, batch_labels, line_images, line_index, seed)

    def networks(self, setup: StudySetup) -> list[Network]:
        """Every depth at initialisation, then the trained_depths trained (the degradation networks)."""
        config, data = setup.config, setup.data
        at_init = [initial_network(run, config=config, data=data) for run in degradation_runs(self.options.depths)]
        runs = degradation_runs(self.options.trained_depths)
        return at_init + trained_networks(runs, config=config, data=data, networks=setup.networks)

    def measure(self, net: Network, inputs: GradientsInputs) -> dict[str, Any]:
        o = self.options
        if net.state == "init":
            calibrate_bn(net.model, net.inputs(inputs.calibration))
        return measure(
            net, net.inputs(inputs.batch_images), inputs.batch_labels, net.inputs(inputs.line_images),
            points=o.points, span=o.span, max_lag=o.max_lag, seed=inputs.seed,
        )  # fmt: skip

    def done(self, m: Measured) -> str:
        ratio, lag1 = m.value["norm_summary"]["first_over_last"], m.value["correlation"][0]
        return (
            f"{m.net.label} ({m.net.state}): first/last conv gradient {ratio:.3g}, lag-1 correlation {lag1:.2f} "
            f"({duration(m.time_s)})"
        )

    def verdict(self, measured: list[Measured], inputs: GradientsInputs) -> str:
        return gradients_verdict(_results(measured)).text

    def title(self, inputs: GradientsInputs) -> str:
        o = self.options
        return (
            f"Gradients through depth: plain (dashed) vs residual (solid); norms on {o.batch} training images, "
            f"correlations on {o.lines} lines of {o.points} points"
        )

    def plot(self, measured: list[Measured], inputs: GradientsInputs, path: Path, *, title: str) -> None:
        plot_gradients(_results(measured), path, title=title)

    def table(self, measured: list[Measured]) -> str:
        return format_gradients_table(_results(measured), self.options.max_lag)

    def csvs(self, measured: list[Measured]) -> dict[str, tuple[list[dict[str, Any]], list[str]]]:
        results = _results(measured)
        layers = [{"network": r["label"], "state": r["state"], **n} for r in results for n in r["norms"]]
        correlations = [
            {"network": r["label"], "state": r["state"], "lag": lag, "correlation": c, "directional_autocorrelation": a}
            for r in results
            for lag, c, a in zip(r["lag"], r["correlation"], r["directional_autocorrelation"], strict=True)
        ]
        return {
            "results.csv": (layers, LAYER_COLUMNS),
            "correlation.csv": (
                correlations,
                ["network", "state", "lag", "correlation", "directional_autocorrelation"],
            ),
        }

    def settings(self, inputs: GradientsInputs, setup: StudySetup) -> dict[str, Any]:
        o = self.options
        return {
            "depths": list(o.depths),
            "trained_depths": list(o.trained_depths),
            "batch": o.batch,
            "lines": o.lines,
            "points": o.points,
            "span": o.span,
            "max_lag": o.max_lag,
            "calibration_images": CALIBRATION_IMAGES,
            "line_test_indices": inputs.line_index,
            "seed": setup.seed,
        }

    def document(self, measured: list[Measured], inputs: GradientsInputs) -> dict[str, Any]:
        return {
            "networks": [m.net.describe() for m in measured if m.net.state == "trained"],
            "results": _results(measured),
        }

    def numbers(self, measured: list[Measured]) -> dict[str, dict[str, float | None]]:
        keys = ("first_over_last", "growth_towards_input", "correlation_lag1")
        return {f"{r['label']} ({r['state']})": {k: r[k] for k in keys} for r in _results(measured)}

    def findings(self, measured: list[Measured], inputs: GradientsInputs) -> dict[str, bool | None]:
        v = gradients_verdict(_results(measured))
        return {
            "plain gradients explode towards the input at initialisation": v.explodes_at_init,
            "plain gradients shatter at initialisation": v.shatters_at_init,
        }


LAYER_COLUMNS = [
    "network",
    "state",
    "index",
    "layer",
    "kind",
    "shortcut",
    "depth",
    "grad_norm",
    "weight_norm",
    "relative",
]


def _results(measured: list[Measured]) -> list[dict[str, Any]]:
    """One row per network and state, as gradients_verdict, the table and results.json read them."""
    out = []
    for x in measured:
        net, m = x.net, x.value
        s = m["norm_summary"]
        out.append(
            {
                "label": net.label,
                "family": net.run.family,
                "depth": net.run.depth,
                "state": net.state,
                "first_over_last": s["first_over_last"],
                "growth_towards_input": s["growth_towards_input"],
                "correlation_lag1": m["correlation"][0],
                "time_s": x.time_s,
                **m,
            }
        )
    return out


def run_gradients(run: StudyRun | None = None, **options: Any) -> tuple[dict[str, Any], str]:
    """The gradients study (`GradientsStudy`) with `run`'s shared settings and GradientsOptions' `options` (depths,
    trained_depths, batch, lines, points; None or absent: the default, or the --quick value); writes its outputs,
    returns (results.json's doc, the verdict)."""
    run = run or StudyRun()
    return run_study(GradientsStudy(study_options("gradients", quick=run.quick, **options)), run)
