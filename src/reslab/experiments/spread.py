"""A measurement over several seeds, and a comparison that knows the noise: what the experiments' verdicts rest on.

Each network of an experiment is trained once per seed, so each number it reports is a sample: `Spread` holds the
per-seed values with their mean, standard deviation and standard error of the mean (SEM). `Difference` compares two
of them and calls a difference only when it is larger than the noise, by a criterion it states: the difference of
the means beyond `Z` times its standard error (the SEMs added in quadrature, as Welch's test). Otherwise it says that
the seeds do not resolve it, and about how many would at the spread observed. A single seed is a single run: no
spread is measured, so nothing is called resolved, and the text says so.

Pure functions of the numbers (no torch), so that verdicts are tested on hand-made values.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

Z = 2.0  # a difference is called when it exceeds Z standard errors (about 95% two-sided for a normal spread)
MANY_SEEDS = 100  # beyond this many seeds to resolve it, a difference is called practically nil


@dataclass(frozen=True)
class Spread:
    """One quantity measured on several seeds (fractions, losses, ratios: any float)."""

    values: tuple[float, ...]

    def __init__(self, values: Sequence[float] | float) -> None:
        values = (values,) if isinstance(values, (int, float)) else tuple(values)
        if not values:
            raise ValueError("Spread: expected at least one value")
        object.__setattr__(self, "values", tuple(float(v) for v in values))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """The sample standard deviation (n - 1); None for a single run."""
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def sem(self) -> float | None:
        """The standard error of the mean, std / sqrt(n); None for a single run."""
        return None if self.std is None else self.std / math.sqrt(self.n)

    def describe(self) -> dict[str, float | int | list[float] | None]:
        """What results.json says about it."""
        return {"values": list(self.values), "n": self.n, "mean": self.mean, "std": self.std, "sem": self.sem}

    def text(self, *, scale: float = 100.0, unit: str = "%", digits: int = 2) -> str:
        """'6.53% ± 0.21 (SEM, 3 seeds)', or '6.53% (1 seed)'."""
        mean = f"{scale * self.mean:.{digits}f}{unit}"
        if self.sem is None:
            return f"{mean} (1 seed)"
        return f"{mean} ± {scale * self.sem:.{digits}f} (SEM, {self.n} seeds)"


@dataclass(frozen=True)
class Difference:
    """`a` - `b`: how large, how noisy, and whether the seeds resolve its sign."""

    a: Spread
    b: Spread

    @property
    def diff(self) -> float:
        return self.a.mean - self.b.mean

    @property
    def se(self) -> float | None:
        """The standard error of the difference of the means; None when either side is a single run."""
        if self.a.sem is None or self.b.sem is None:
            return None
        return math.hypot(self.a.sem, self.b.sem)

    @property
    def resolved(self) -> bool:
        """|diff| > Z * se: the seeds tell its sign apart from the noise (never for a single run)."""
        return self.se is not None and abs(self.diff) > Z * self.se

    @property
    def sign(self) -> int:
        """+1 (a above b) or -1 where resolved; 0 where the seeds do not resolve it."""
        return (1 if self.diff > 0 else -1) if self.resolved else 0

    @property
    def seeds_needed(self) -> int | None:
        """Seeds per side for |diff| to reach Z standard errors at the spread observed (the SEM falls as 1/sqrt(n));
        None for a single run (no spread to go by), or where the means are equal."""
        if self.se is None or self.diff == 0:
            return None
        n = max(self.a.n, self.b.n)
        return max(n + 1, math.ceil(n * (Z * self.se / abs(self.diff)) ** 2))

    def criterion(self, *, scale: float = 100.0, unit: str = " points") -> str:
        """The test in words, with its numbers: 'difference 0.60 points, 3.4 standard errors of 0.18: resolved'."""
        d = f"{scale * self.diff:+.2f}{unit}"
        if self.se is None:
            return f"difference {d}; a single run, so seed noise is not measured and the sign is not established"
        ratio = abs(self.diff) / self.se if self.se > 0 else math.inf
        head = f"difference {d}, {ratio:.2f} standard errors of {scale * self.se:.2f} (needs > {Z:g})"
        if self.resolved:
            return head + f": resolved by {min(self.a.n, self.b.n)} seeds"
        needed = self.seeds_needed
        more = f"; about {needed} seeds would at this spread" if needed else ""
        if needed and needed > MANY_SEEDS:  # a difference far inside the noise: the means are practically equal
            more = f"; more than {MANY_SEEDS} seeds would be needed at this spread: practically equal"
        return head + f": {min(self.a.n, self.b.n)} seeds do not resolve it{more}"
