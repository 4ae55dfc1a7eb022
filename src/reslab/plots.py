"""Figures written to files: training curves, confusion matrices and the experiments' error curves (matplotlib,
Agg backend: no display needed).

matplotlib is imported inside the functions so that importing reslab stays fast and never touches a display.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reslab.atomic import write_bytes


def pyplot():
    """matplotlib.pyplot with the Agg backend (files only, no display)."""
    import matplotlib

    # Agg before pyplot: a headless machine (CI, ssh, a cluster node) has no display for the default backend.
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, *, dpi: int) -> Path:
    """Render `fig` in memory, close it, and write the file atomically (reslab.atomic): a full disk leaves the previous
    image whole, never a truncated one."""
    path = Path(path)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png")
    finally:
        pyplot().close(fig)
    return write_bytes(path, buffer.getbuffer())


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the rows where `key` has a number (val_acc is None without a validation split)."""
    xs, ys = [], []
    for i, row in enumerate(history):
        v = row.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        xs.append(float(row.get("epoch", i + 1)))
        ys.append(float(v))
    return xs, ys


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path, *, title: str | None = None) -> Path:
    """Loss (left) and accuracy (right) per epoch from `fit`'s history rows; returns the path written.

    Rows are dicts with `epoch` and any of `train_loss`, `train_acc`, `val_acc`, `test_acc` (fractions in [0, 1]);
    missing or None values are skipped, so a run without a validation split still plots.
    """
    plt = pyplot()
    path = Path(path)

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    xs, ys = _series(history, "train_loss")
    ax_loss.plot(xs, ys, "o-", color="C0", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_title("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()

    for key, label, color in [("train_acc", "train", "C0"), ("val_acc", "val", "C1"), ("test_acc", "test", "C2")]:
        xs, ys = _series(history, key)
        if xs:
            ax_acc.plot(xs, [100 * y for y in ys], "o-", color=color, label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        # whole epochs only: a 2-epoch run should not get ticks at 1.25, 1.5, ...
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    save_figure(fig, path, dpi=120)
    return path


def plot_confusion_matrix(
    cm: Any, classes: Sequence[str], path: str | Path, *, title: str | None = None, normalize: bool = True
) -> Path:
    """A (K, K) confusion matrix (rows: true class, columns: predicted) as a labelled heat map; returns the path.

    Each cell shows its count; the colour is the row-normalised fraction (recall per true class) so that classes of
    different sizes are comparable. `cm` is a torch tensor, numpy array or nested list.
    """
    import numpy as np

    plt = pyplot()
    path = Path(path)

    counts = np.asarray(cm.cpu() if hasattr(cm, "cpu") else cm, dtype=np.int64)
    k = len(classes)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match {k} classes")
    row_sums = counts.sum(axis=1, keepdims=True)
    frac = counts / np.maximum(row_sums, 1) if normalize else counts / max(counts.max(), 1)

    size = max(5.0, 0.6 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.2, size), layout="constrained")
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    cbar = fig.colorbar(im, ax=ax, shrink=0.8)
    cbar.set_label("fraction of the true class" if normalize else "fraction of the largest cell")
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fontsize = 9 if k <= 12 else max(5, 9 - (k - 12) // 4)
    for i in range(k):
        for j in range(k):
            if counts[i, j] == 0:
                continue
            # white text on dark cells, black on light ones
            color = "white" if frac[i, j] > 0.5 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=color, fontsize=fontsize)
    total = int(counts.sum())
    acc = float(np.trace(counts)) / max(total, 1)
    ax.set_title(title or f"confusion matrix: {100 * acc:.2f}% of {total:,} correct")
    save_figure(fig, path, dpi=120)
    return path


@dataclass(frozen=True)
class ErrorCurve:
    """One network's training and test error (fractions) per epoch, for `plot_error_curves`."""

    label: str
    epochs: list[int]
    train_error: list[float]
    test_error: list[float | None]
    # over several seeds: each epoch's standard error of the mean, drawn as a band around the curve (None: no band)
    train_sem: list[float | None] | None = None
    test_sem: list[float | None] | None = None


def _band(ax: Any, epochs: list[int], mean: list[float | None], sem: list[float | None] | None, color: str) -> None:
    """mean ± sem as a shaded band and error bars (in %), where both are known: the bars show it at every epoch,
    the band between epochs (with one epoch, only the bars)."""
    if sem is None:
        return
    points = [(x, m, s) for x, m, s in zip(epochs, mean, sem, strict=True) if m is not None and s is not None]
    if points:
        xs = [x for x, _, _ in points]
        ax.fill_between(
            xs, [100 * (m - s) for _, m, s in points], [100 * (m + s) for _, m, s in points], color=color, alpha=0.18,
            linewidth=0,
        )  # fmt: skip
        ax.errorbar(
            xs, [100 * m for _, m, _ in points], yerr=[100 * s for _, _, s in points], fmt="none", ecolor=color,
            capsize=3, linewidth=1,
        )  # fmt: skip


def plot_error_curves(panels: dict[str, list[ErrorCurve]], path: str | Path, *, title: str = "") -> Path:
    """The paper's Figure 6 style: one panel per group, training error dashed, test error solid, error in %.

    Within a panel each curve has its own colour, and the n-th curve of every panel the same colour (plain-20 and
    ResNet-20 alike). A curve with standard errors (several seeds) gets a band of ± 1 SEM around each line.
    """
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(max(7.0, 5.5 * len(panels)), 4.4), sharey=True, layout="constrained", squeeze=False
    )
    for ax, (panel, curves) in zip(axes[0], panels.items(), strict=True):
        for i, c in enumerate(curves):
            color = f"C{i}"
            # small markers: with a few epochs (or one, in --quick) the points are the data
            ax.plot(
                c.epochs, [100 * e for e in c.train_error], "--", color=color, linewidth=1.2, marker=".", markersize=5
            )
            test = [(x, 100 * e) for x, e in zip(c.epochs, c.test_error, strict=True) if e is not None]
            ax.plot(
                [x for x, _ in test],
                [e for _, e in test],
                "-",
                color=color,
                linewidth=2.2,
                marker="o",
                markersize=4,
                label=c.label,
            )
            _band(ax, c.epochs, c.train_error, c.train_sem, color)
            _band(ax, c.epochs, c.test_error, c.test_sem, color)
        ax.set_title(panel)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        last = max(x for c in curves for x in c.epochs)
        if last <= 12:
            ax.set_xticks(range(1, last + 1))
            ax.set_xlim(0.7, last + 0.3)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
        # the line styles once, then the networks
        handles, labels = ax.get_legend_handles_labels()
        style = [
            plt.Line2D([], [], color="gray", linestyle="--", linewidth=1.2),
            plt.Line2D([], [], color="gray", linestyle="-", linewidth=2.2),
        ]
        ax.legend(handles + style, labels + ["training error", "test error"], loc="upper right")
    axes[0][0].set_ylabel("error (%)")
    if title:
        fig.suptitle(textwrap.fill(title, width=int(11 * fig.get_figwidth())))
    path = Path(path)
    save_figure(fig, path, dpi=120)
    return path
