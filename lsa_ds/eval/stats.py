"""Small statistics the reports need: a mean with its 95% interval, Pearson and Spearman r.

Plain numpy, no scipy (it is not a dependency). The interval is the normal approximation
`mean ± 1.96 · s / sqrt(n)` with the sample standard deviation (ddof=1): every quantity we average
(per-window NLL, per-sample divergence) is a mean of many tokens, so its spread is close to normal
and n is in the tens; with n = 1 the interval collapses to the mean.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054
"""Two-sided 95% quantile of the standard normal."""


@dataclass(frozen=True)
class MeanCI:
    """A mean over n independent units and its 95% normal-approximation interval."""

    mean: float
    lo: float
    hi: float
    std: float
    """Sample standard deviation (ddof=1) of the units; 0 when n = 1."""
    n: int

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self, fmt: str = ".3f") -> str:
        return f"{self.mean:{fmt}} [{self.lo:{fmt}}, {self.hi:{fmt}}]"


def mean_ci(values) -> MeanCI:
    """Mean and 95% interval of `values` (non-empty)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_ci of no values")
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    half = Z95 * std / math.sqrt(x.size)
    return MeanCI(mean, mean - half, mean + half, std, int(x.size))


def pearson(x, y) -> float:
    """Pearson correlation; NaN when either side is constant or there are fewer than 2 points."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def ranks(x) -> np.ndarray:
    """1-based ranks with ties given their average rank (what Spearman's r needs)."""
    a = np.asarray(x, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    r = np.empty(a.size, dtype=np.float64)
    r[order] = np.arange(1, a.size + 1)
    for v in np.unique(a):
        tied = a == v
        if tied.sum() > 1:
            r[tied] = r[tied].mean()
    return r


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson r of the (tie-averaged) ranks."""
    return pearson(ranks(x), ranks(y))
