"""Small statistics the reports need: means with 95% intervals, paired differences with a sign
test and a bootstrap p-value, Pearson and Spearman r with bootstrap intervals.

Plain numpy, no scipy (it is not a dependency). Two kinds of mean interval, for two kinds of unit:

- `mean_ci` — per-window / per-sample means (held-out NLL of a window, divergence of a sample):
  the normal approximation `mean ± 1.96 · s / sqrt(n)` with the sample standard deviation
  (ddof=1). Each unit is a mean of many tokens, so its spread is close to normal and n is in the
  tens or more; with n = 1 the interval collapses to the mean.
- `across_seeds` — a number measured once per training seed (3–5 seeds, typically): Student t with
  n − 1 degrees of freedom, since with so few units 1.96 would make the interval far too narrow
  (n = 3: the t quantile is 4.30). With one seed there is no interval (NaN bounds).

A share of successes over independent trials (a copy completed exactly or not) gets the Wilson
score interval (`wilson`), which stays inside [0, 1].

Correlations across a handful of models get a percentile bootstrap interval (`bootstrap_ci`): no
normality assumption, and honest about how wide an r over 4–10 models is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054
"""Two-sided 95% quantile of the standard normal."""

T95 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
       2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
       2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
"""Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (T95[df - 1])."""


def t95(df: int) -> float:
    """Two-sided 95% t quantile; the normal's 1.96 above 30 degrees of freedom (within 4%)."""
    if df < 1:
        raise ValueError(f"t quantile needs at least 1 degree of freedom, got {df}")
    return T95[df - 1] if df <= len(T95) else Z95


@dataclass(frozen=True)
class MeanCI:
    """A mean over n independent units and its 95% interval (normal or t, see the module doc)."""

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


def _values(values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("a mean of no values")
    return x


def mean_ci(values) -> MeanCI:
    """Mean and 95% normal interval of per-window / per-sample `values` (non-empty)."""
    x = _values(values)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    half = Z95 * std / math.sqrt(x.size)
    return MeanCI(mean, mean - half, mean + half, std, int(x.size))


def across_seeds(values) -> MeanCI:
    """Mean over seeds and its 95% interval across seeds: `mean ± t(n-1) · s / sqrt(n)` with the
    hard-coded t table `T95` for n - 1 <= 30 and the normal quantile above. One seed: NaN bounds
    (one run says nothing about seed-to-seed spread)."""
    x = _values(values)
    mean = float(x.mean())
    if x.size == 1:
        return MeanCI(mean, math.nan, math.nan, 0.0, 1)
    std = float(x.std(ddof=1))
    half = t95(x.size - 1) * std / math.sqrt(x.size)
    return MeanCI(mean, mean - half, mean + half, std, int(x.size))


@dataclass(frozen=True)
class Proportion:
    """A share of successes (`hits` of `n` independent trials) with its 95% Wilson score interval:
    unlike `mean_ci` on 0/1 values it stays inside [0, 1] and is not empty at 0 or n hits (then
    `mean_ci` would claim certainty from a handful of trials). n = 0: NaN value and bounds."""

    value: float
    lo: float
    hi: float
    hits: int
    n: int

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self, fmt: str = ".2f") -> str:
        return f"{self.value:{fmt}} [{self.lo:{fmt}}, {self.hi:{fmt}}]"


def wilson(hits: int, n: int) -> Proportion:
    """`hits / n` with the 95% Wilson score interval."""
    if n < 0 or not 0 <= hits <= max(n, 0):
        raise ValueError(f"wilson needs 0 <= hits <= n, got hits={hits}, n={n}")
    if n == 0:
        return Proportion(math.nan, math.nan, math.nan, 0, 0)
    p, z2 = hits / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # at 0 (n) hits the lower (upper) bound is exactly 0 (1); rounding would leave it a hair inside
    lo = 0.0 if hits == 0 else max(0.0, centre - half)
    hi = 1.0 if hits == n else min(1.0, centre + half)
    return Proportion(p, lo, hi, int(hits), int(n))


# ------------------------------------------------------------------------------ correlation
def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of two [B, n] arrays; NaN where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / den
    # a constant row has zero spread up to rounding: treat it as exactly constant
    flat = (np.ptp(a, axis=1) == 0) | (np.ptp(b, axis=1) == 0)
    return np.clip(np.where(flat, np.nan, r), -1.0, 1.0)


def _rank_rows(a: np.ndarray) -> np.ndarray:
    """1-based ranks within each row of a [B, n] array, ties given their average rank."""
    n = a.shape[1]
    order = np.argsort(a, axis=1, kind="stable")
    s = np.take_along_axis(a, order, axis=1)
    pos = np.broadcast_to(np.arange(n), a.shape)
    starts = np.ones(a.shape, dtype=bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    ends = np.ones(a.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
    r = np.empty(a.shape, dtype=np.float64)
    np.put_along_axis(r, order, (first + last) / 2.0 + 1.0, axis=1)
    return r


def pearson(x, y) -> float:
    """Pearson correlation; NaN when either side is constant or there are fewer than 2 points."""
    a, b = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if a.size < 2:
        return float("nan")
    return float(_pearson_rows(a[None], b[None])[0])


def ranks(x) -> np.ndarray:
    """1-based ranks with ties given their average rank (what Spearman's r needs)."""
    a = np.asarray(x, dtype=np.float64).ravel()
    return _rank_rows(a[None])[0] if a.size else a


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson r of the (tie-averaged) ranks."""
    return pearson(ranks(x), ranks(y))


_ROWWISE = {pearson: _pearson_rows, spearman: lambda a, b: _pearson_rows(_rank_rows(a), _rank_rows(b))}
"""Vectorised versions of the statistics the reports bootstrap (2000 Spearman r one by one over
200 points would take seconds)."""


@dataclass(frozen=True)
class BootCI:
    """A two-sample statistic with its 95% percentile-bootstrap interval."""

    value: float
    lo: float
    hi: float
    n: int
    """Number of (x, y) pairs."""
    n_boot: int
    """Resamples the interval rests on: those drawn, less those where the statistic is undefined."""

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self, fmt: str = ".2f") -> str:
        return f"{self.value:{fmt}} [{self.lo:{fmt}}, {self.hi:{fmt}}]"


def bootstrap_ci(x, y, stat: Callable = pearson, n_boot: int = 2000, seed: int = 0, groups=None) -> BootCI:
    """`stat(x, y)` with the 2.5 and 97.5 percentiles of its bootstrap distribution: (x_i, y_i)
    pairs are resampled with replacement, and resamples where the statistic is NaN (one side
    constant, likely with a handful of points) are dropped. `groups` (one label per pair) resamples
    whole groups instead — the seeds of one arm share the arm's effect, so resampling them one by
    one would treat them as independent models and make the interval too narrow. Deterministic
    given `seed`."""
    a, b = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"bootstrap_ci needs x and y of one length, got {a.size} and {b.size}")
    value = float(stat(a, b))
    if a.size < 2:
        return BootCI(value, math.nan, math.nan, int(a.size), 0)
    rng = np.random.default_rng(seed)
    if groups is not None:
        labels = np.asarray([str(g) for g in groups])
        members = [np.flatnonzero(labels == g) for g in dict.fromkeys(labels)]
        draws = rng.integers(0, len(members), size=(n_boot, len(members)))
        boot = np.array([stat(a[i], b[i]) for i in (np.concatenate([members[k] for k in row]) for row in draws)],
                        dtype=np.float64)
    else:
        idx = rng.integers(0, a.size, size=(n_boot, a.size))
        rows = _ROWWISE.get(stat)
        boot = rows(a[idx], b[idx]) if rows else np.array([stat(a[i], b[i]) for i in idx], dtype=np.float64)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return BootCI(value, math.nan, math.nan, int(a.size), 0)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return BootCI(value, float(lo), float(hi), int(a.size), int(boot.size))


def bootstrap_p(diffs, n_boot: int = 10000, seed: int = 0) -> float:
    """Two-sided bootstrap p-value of "mean difference = 0" for paired differences: the diffs are
    centred (the null made true), resampled with replacement, and p is the share of resampled means
    at least as far from 0 as the observed one, `(1 + count) / (1 + n_boot)` so it is never 0.
    With very few units (3 seeds: 10 distinct resamples) it is optimistic; read it beside the
    t interval and the sign test."""
    d = np.asarray(diffs, dtype=np.float64).ravel()
    if d.size == 0:
        raise ValueError("bootstrap_p of no differences")
    if not np.isfinite(d).all():
        return math.nan  # a NaN would fail every comparison and read as the smallest p
    observed = abs(float(d.mean()))
    centred = d - d.mean()
    rng = np.random.default_rng(seed)
    hits, done = 0, 0
    # tolerance: centred resample means of a constant shift are 0 only up to rounding
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    while done < n_boot:  # blocks keep memory flat for long difference vectors
        block = min(n_boot - done, max(1, 2_000_000 // d.size))
        means = centred[rng.integers(0, d.size, size=(block, d.size))].mean(axis=1)
        hits += int((np.abs(means) >= observed - tol).sum())
        done += block
    return (1 + hits) / (1 + n_boot)


# ------------------------------------------------------------------------------ paired
@dataclass(frozen=True)
class Paired:
    """Model minus baseline over the same units (windows, samples or seeds): the mean difference,
    its 95% interval, and the two-sided exact sign test of "as many units better as worse"."""

    diff: MeanCI
    better: int
    """Units where the model's value is below the baseline's."""
    worse: int
    p_sign: float
    p_boot: float | None = None
    """Two-sided bootstrap p-value of a zero mean difference, when asked for."""

    def to_dict(self) -> dict:
        out = {"diff": self.diff.to_dict(), "better": self.better, "worse": self.worse, "p_sign": self.p_sign}
        return out if self.p_boot is None else {**out, "p_boot": self.p_boot}


def sign_test(plus: int, minus: int) -> float:
    """Two-sided exact binomial p-value of `plus` vs `minus` under p = 1/2 (ties left out)."""
    n = plus + minus
    if n == 0:
        return 1.0
    k = min(plus, minus)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def paired(model, baseline, interval: Callable[..., MeanCI] = mean_ci, n_boot: int = 0, seed: int = 0) -> Paired:
    """The paired comparison of two equally long sequences of per-unit values. `interval`:
    `mean_ci` for windows/samples, `across_seeds` for seeds; `n_boot` > 0 adds a bootstrap p."""
    a, b = np.asarray(model, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired values need the same non-zero length, got {a.shape} and {b.shape}")
    d = a - b
    better, worse = int((d < 0).sum()), int((d > 0).sum())
    p_boot = bootstrap_p(d, n_boot, seed) if n_boot > 0 else None
    return Paired(interval(d), better, worse, sign_test(better, worse), p_boot)


@dataclass(frozen=True)
class CrossedPaired:
    """Model minus baseline over seeds × windows: both trained with the same seeds and scored on
    the same windows, so the difference of seed s on window w is paired twice over."""

    diff: BootCI
    """Mean difference over every (seed, window) pair, with a two-way bootstrap interval."""
    seeds: int
    units: int
    better: int
    """Windows whose difference, averaged over the seeds, is below 0."""
    worse: int
    p_sign: float
    """Exact sign test over those seed-averaged windows (given these seeds: no seed noise in it)."""
    p_boot: float
    """Two-sided p of a zero mean from the same two-way bootstrap, centred."""

    def to_dict(self) -> dict:
        return asdict(self)


def _crossed_means(d: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `n_boot` two-way resamples of d [seeds, units]: seeds with replacement and,
    independently, one draw of units with replacement shared by every drawn seed — every seed read
    the same windows, so a window's own effect must move with it across seeds."""
    s, u = d.shape
    out = np.empty(n_boot)
    block = max(1, 2_000_000 // (s * u))
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        seeds = rng.integers(0, s, size=(b, s, 1))
        units = rng.integers(0, u, size=(b, 1, u))
        out[start:start + b] = d[seeds, units].mean(axis=(1, 2))
    return out


def crossed_paired(model, baseline, n_boot: int = 10000, seed: int = 0) -> CrossedPaired:
    """The paired comparison of two [seeds, units] arrays: seed i of the model against seed i of
    the baseline, unit j the same held-out window in every run. Seeds and windows are crossed
    factors, so the interval and p come from a two-way ("pigeonhole") bootstrap that resamples
    seeds and windows independently: the training noise and the choice of text are both in them.
    With 3 seeds the seed level has 10 distinct draws, so the interval under-covers (the tests
    measure it). The sign test asks whether most windows gain once the seeds are averaged; it is
    conditional on these seeds. Non-finite values are refused."""
    a, b = np.asarray(model, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"crossed_paired needs two equal non-empty [seeds, units] arrays, got {a.shape} and {b.shape}")
    if n_boot < 1:
        raise ValueError(f"crossed_paired needs n_boot >= 1, got {n_boot}")
    d = a - b
    if not np.isfinite(d).all():
        raise ValueError("crossed_paired of non-finite values")
    rng = np.random.default_rng(seed)
    mean = float(d.mean())
    lo, hi = np.percentile(_crossed_means(d, n_boot, rng), [2.5, 97.5])
    null = _crossed_means(d - mean, n_boot, rng)
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    p_boot = (1 + int((np.abs(null) >= abs(mean) - tol).sum())) / (1 + n_boot)
    per_unit = d.mean(axis=0)
    better, worse = int((per_unit < 0).sum()), int((per_unit > 0).sum())
    return CrossedPaired(BootCI(mean, float(lo), float(hi), int(d.size), n_boot), d.shape[0], d.shape[1],
                         better, worse, sign_test(better, worse), p_boot)
