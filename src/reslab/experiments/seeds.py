"""A study over several seeds: the spread of its headline numbers and the agreement of its claims, as pure functions.

Each seed's networks are measured by the study as with one seed (reslab.experiments.study); here the per-seed
numbers become a `Spread` each (mean, standard deviation, SEM), and the verdict's claims are called by a criterion
stated in the verdict: a claim holds (or fails) only when every seed agrees; otherwise the seeds do not resolve it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reslab.experiments.spread import Spread
from reslab.plots import pyplot, save_figure

Numbers = dict[str, dict[str, float | None]]  # label -> quantity -> value, for one seed


def spreads(per_seed: Sequence[Numbers]) -> dict[str, dict[str, Spread | None]]:
    """label -> quantity -> its Spread over the seeds (None where a seed has no value)."""
    out: dict[str, dict[str, Spread | None]] = {}
    for label, quantities in per_seed[0].items():
        out[label] = {}
        for q in quantities:
            values = [numbers[label][q] for numbers in per_seed]
            out[label][q] = None if None in values else Spread(values)
    return out


def agreement(per_seed: Sequence[dict[str, bool | None]], seeds: Sequence[int], *, name: str) -> str:
    """The verdict over seeds: each claim holds, fails, or is not resolved (the seeds disagree), with its count."""
    n = len(seeds)
    lines = [f"Over {n} seeds ({', '.join(map(str, seeds))}); a claim is called only when every seed agrees:"]
    called = []
    for claim in per_seed[0]:
        values = [f[claim] for f in per_seed]
        if None in values:
            lines.append(f"  {claim}: not tested on every seed.")
            continue
        held = sum(values)
        if held == n:
            lines.append(f"  {claim}: yes, on all {n} seeds.")
            called.append(claim)
        elif held == 0:
            lines.append(f"  {claim}: no, on all {n} seeds.")
        else:
            lines.append(f"  {claim}: not resolved: yes on {held} of {n} seeds.")
    settled = all(None not in (v := [f[c] for f in per_seed]) and len(set(v)) == 1 for c in per_seed[0])
    verdict = "every claim is settled" if settled else "the seeds do not settle every claim; more seeds may"
    lines.append(f"Verdict ({name}, {n} seeds): {verdict}" + (f"; holding: {', '.join(called)}." if called else "."))
    return "\n".join(lines)


def spread_rows(per_seed: Sequence[Numbers], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """results.csv over seeds: one row per network, quantity and seed."""
    return [
        {"network": label, "quantity": q, "seed": seed, "value": v}
        for seed, numbers in zip(seeds, per_seed, strict=True)
        for label, quantities in numbers.items()
        for q, v in quantities.items()
    ]


def spread_table(table: dict[str, dict[str, Spread | None]]) -> str:
    """table.md over seeds: each network's headline numbers, mean ± SEM, standard deviation and each seed's."""
    lines = ["| network | quantity | mean ± SEM | std | per seed |", "|---|---|---:|---:|---|"]
    for label, quantities in table.items():
        for q, s in quantities.items():
            if s is None:
                lines.append(f"| {label} | {q} | - | - | - |")
                continue
            per = ", ".join(f"{v:.4g}" for v in s.values)
            lines.append(f"| {label} | {q} | {s.mean:.4g} ± {s.sem:.2g} | {s.std:.2g} | {per} |")
    return "\n".join(lines)


def plot_spreads(table: dict[str, dict[str, Spread | None]], path: Path, *, title: str) -> Path:
    """One panel per quantity: each network's mean with its SEM as an error bar, and each seed's value as a dot."""
    plt = pyplot()
    quantities = list(next(iter(table.values())))
    fig, axes = plt.subplots(1, len(quantities), figsize=(4.2 * len(quantities), 4), squeeze=False)
    labels = list(table)
    for ax, q in zip(axes[0], quantities, strict=True):
        for i, label in enumerate(labels):
            s = table[label][q]
            if s is None:
                continue
            ax.errorbar([i], [s.mean], yerr=[s.sem], fmt="o", capsize=4, c="k")
            ax.plot([i] * s.n, s.values, ".", c="tab:blue", alpha=0.6)
        values = [v for label in labels if table[label][q] is not None for v in table[label][q].values]
        if values and min(values) > 0 and max(values) > 100 * min(values):
            ax.set_yscale("log")  # ratios over orders of magnitude (a gradient norm growing 10^6-fold)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(q, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(title + " (mean ± SEM over seeds; dots: each seed)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
