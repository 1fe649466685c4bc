"""Small statistics the reports need: a mean with its 95% interval, a paired difference with its
interval and a sign test, Pearson and Spearman r.

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


@dataclass(frozen=True)
class Paired:
    """Model minus baseline over the same units (windows or samples): the mean difference, its 95%
    interval, and the two-sided exact sign test of "as many units better as worse"."""

    diff: MeanCI
    better: int
    """Units where the model's value is below the baseline's."""
    worse: int
    p_sign: float

    def to_dict(self) -> dict:
        return {"diff": self.diff.to_dict(), "better": self.better, "worse": self.worse, "p_sign": self.p_sign}


def sign_test(plus: int, minus: int) -> float:
    """Two-sided exact binomial p-value of `plus` vs `minus` under p = 1/2 (ties left out)."""
    n = plus + minus
    if n == 0:
        return 1.0
    k = min(plus, minus)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def paired(model, baseline) -> Paired:
    """The paired comparison of two equally long sequences of per-unit values."""
    a, b = np.asarray(model, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired values need the same non-zero length, got {a.shape} and {b.shape}")
    d = a - b
    return Paired(mean_ci(d), int((d < 0).sum()), int((d > 0).sum()), sign_test(int((d < 0).sum()), int((d > 0).sum())))
