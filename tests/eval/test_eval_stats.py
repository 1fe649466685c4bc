"""Interval, bootstrap and correlation helpers against hand values, scipy and known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lsa_ds.eval.correlation import correlate
from lsa_ds.eval.stats import (
    across_seeds,
    bootstrap_ci,
    bootstrap_p,
    mean_ci,
    paired,
    pearson,
    ranks,
    sign_test,
    spearman,
    t95,
)


def test_mean_ci_is_the_normal_approximation():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    half = 1.959963984540054 * np.std([1, 2, 3, 4], ddof=1) / 2
    assert (ci.mean, ci.n) == (2.5, 4) and ci.lo == pytest.approx(2.5 - half) and ci.hi == pytest.approx(2.5 + half)
    one = mean_ci([7.0])
    assert one.lo == one.mean == one.hi == 7.0


def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.normal(size=9)
    y = 2 * x + rng.normal(size=9)
    y[3] = y[5]  # a tie for Spearman's average ranks
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    assert list(ranks([10, 20, 20, 5])) == [2.0, 3.5, 3.5, 1.0]
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def _model(name, ppl, sce, loss):
    return {"name": name, "train_loss": loss, "perplexity": {"lengths": [{"length": 64, "ppl": ppl * 0.9},
                                                                          {"length": 128, "ppl": ppl}]},
            "misalignment": {"last": {"sce": {"mean": sce}, "skl": {"mean": sce / 10}}}}


def test_correlate_uses_the_longest_length_and_needs_four_models():
    models = [_model("a", 10, 1.0, 3.0), _model("b", 20, 2.0, None), _model("c", 30, 3.0, 2.0),
              _model("d", 45, 4.0, 4.0)]
    out = correlate(models)
    assert out["length"] == 128
    mis, skl, loss = out["predictors"]
    assert mis["n"] == 4 and mis["spearman"] == pytest.approx(1.0) and mis["pearson"] > 0.99
    assert loss["n"] == 3 and "skipped" in loss  # one model has no training loss
    assert "skipped" in correlate(models[:3])


def test_sign_test_and_paired_difference_by_hand():
    assert sign_test(0, 0) == 1.0 and sign_test(3, 3) == 1.0
    assert sign_test(10, 0) == pytest.approx(2 / 2 ** 10)  # all ten one way: 2 * (1/2)^10
    assert sign_test(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    got = paired([1.0, 2.0, 3.0, 5.0], [2.0, 2.0, 2.0, 2.0])  # differences -1, 0, 1, 3
    assert got.diff.mean == pytest.approx(0.75) and (got.better, got.worse) == (1, 2)
    assert got.p_sign == pytest.approx(1.0) and got.diff.lo < 0.75 < got.diff.hi
    with pytest.raises(ValueError):
        paired([1.0], [1.0, 2.0])


def test_across_seeds_uses_student_t_and_falls_back_to_z_above_30():
    ci = across_seeds([1.0, 2.0, 3.0])  # s = 1, n = 3, t(2) = 4.303
    assert ci.mean == 2.0 and ci.std == pytest.approx(1.0)
    assert ci.hi - ci.mean == pytest.approx(4.303 / math.sqrt(3), rel=1e-3)
    assert t95(4) == pytest.approx(2.776, abs=1e-3) and t95(30) == pytest.approx(2.042, abs=1e-3)
    assert t95(31) == pytest.approx(1.96, abs=1e-3)
    one = across_seeds([5.0])
    assert one.mean == 5.0 and math.isnan(one.lo) and math.isnan(one.hi)  # one seed: no spread known


def test_paired_over_seeds_by_hand():
    base, arm = [4.0, 4.2, 4.4], [3.9, 4.0, 4.2]  # differences -0.1, -0.2, -0.2
    got = paired(arm, base, interval=across_seeds, n_boot=5000)
    s = np.std([-0.1, -0.2, -0.2], ddof=1)
    assert got.diff.mean == pytest.approx(-1 / 6) and got.diff.std == pytest.approx(s)
    assert got.diff.hi == pytest.approx(-1 / 6 + 4.3027 * s / math.sqrt(3))
    assert (got.better, got.worse) == (3, 0) and got.p_sign == pytest.approx(0.25)  # 2 * (1/2)^3
    # centred differences are +1/15, -1/30, -1/30: no resampled mean reaches 1/6, only the +1 correction is left
    assert got.p_boot == pytest.approx(1 / 5001)
    assert "p_boot" in got.to_dict() and "p_boot" not in paired(arm, base).to_dict()


def test_bootstrap_interval_covers_a_known_correlation():
    rng = np.random.default_rng(3)
    xy = rng.multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], size=200)
    for stat in (pearson, spearman):
        ci = bootstrap_ci(xy[:, 0], xy[:, 1], stat)
        assert ci.lo < 0.8 < ci.hi and ci.lo > 0, (stat, ci)  # Spearman's rho of this normal is 0.786
        assert ci.n == 200 and ci.n_boot == 2000 and ci.value == pytest.approx(stat(xy[:, 0], xy[:, 1]))
    assert bootstrap_ci(xy[:, 0], xy[:, 1], pearson, seed=5) == bootstrap_ci(xy[:, 0], xy[:, 1], pearson, seed=5)
    # a generic statistic goes through the slow path and agrees with the vectorised one
    slow = bootstrap_ci(xy[:50, 0], xy[:50, 1], lambda a, b: pearson(a, b), n_boot=300)
    assert slow == bootstrap_ci(xy[:50, 0], xy[:50, 1], pearson, n_boot=300)


def test_bootstrap_drops_resamples_where_a_side_is_constant():
    ci = bootstrap_ci([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0], spearman, n_boot=4000)
    assert 0 < ci.n_boot < 4000 and -1 <= ci.lo <= ci.value <= ci.hi <= 1  # 4 of 256 draws repeat one point
    flat = bootstrap_ci([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])
    assert math.isnan(flat.value) and flat.n_boot == 0 and math.isnan(flat.lo)


def test_bootstrap_p_is_small_for_a_clear_shift_and_large_for_none():
    rng = np.random.default_rng(0)
    shifted, centred = rng.normal(1.0, 1.0, 30), rng.normal(0.0, 1.0, 30)
    centred -= centred.mean() - 0.01  # mean 0.01 against a spread of 1
    assert bootstrap_p(shifted) < 0.001
    assert bootstrap_p(centred) > 0.5
    assert bootstrap_p(shifted, seed=1) == bootstrap_p(shifted, seed=1)
    assert bootstrap_p([0.0, 0.0, 0.0]) == 1.0


# ------------------------------------------------------------------ seeds × windows (crossed)
def test_crossed_paired_on_hand_computed_cases():
    from lsa_ds.eval.stats import crossed_paired

    # a constant shift: every resample has the same mean, so the interval is the shift itself
    base = np.arange(12, dtype=float).reshape(3, 4)
    out = crossed_paired(base + 0.5, base, n_boot=500)
    assert (out.diff.value, out.diff.lo, out.diff.hi) == pytest.approx((0.5, 0.5, 0.5))
    assert (out.seeds, out.units, out.better, out.worse) == (3, 4, 0, 4)
    assert out.p_sign == pytest.approx(2 / 2 ** 4) and out.p_boot == pytest.approx(1 / 501)
    # two seeds whose windows agree: seed draws {1,1}, {1,3}, {3,1}, {3,3} give means 1, 2, 2, 3
    # (window draws change nothing), so the 2.5 / 97.5 percentiles are 1 and 3 — the seed level is in
    # the interval, which a pooled window bootstrap (mean ± 1.96·s/√8 ≈ [1.3, 2.7]) would miss
    d = np.array([[1.0, 1.0, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0]])
    out = crossed_paired(d, np.zeros_like(d), n_boot=4000, seed=3)
    assert (out.diff.value, out.diff.lo, out.diff.hi) == pytest.approx((2.0, 1.0, 3.0))
    # a window effect shared by the seeds: one window draw for all seeds gives means 0, 1, 2 with
    # probabilities 1/4, 1/2, 1/4, so the percentiles are 0 and 2; drawing windows anew for each seed
    # (a nested bootstrap) would average the window effect away and never reach 0 or 2 this often
    d = np.array([[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    out = crossed_paired(d, np.zeros_like(d), n_boot=4000, seed=5)
    assert (out.diff.value, out.diff.lo, out.diff.hi) == pytest.approx((1.0, 0.0, 2.0))
    # the sign test reads windows averaged over seeds: window means -1, -1, +2, -3 -> 3 lower, 1 higher
    d = np.array([[-2.0, 0.0, 1.0, -3.0], [0.0, -2.0, 3.0, -3.0]])
    out = crossed_paired(d, np.zeros_like(d), n_boot=200)
    assert (out.better, out.worse, out.p_sign) == (3, 1, pytest.approx(10 / 16))
    assert out.diff.value == pytest.approx(d.mean())
    with pytest.raises(ValueError, match="seeds, units"):
        crossed_paired([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-finite"):
        crossed_paired([[1.0, math.nan]], [[1.0, 2.0]])
    assert math.isnan(bootstrap_p([0.1, math.nan]))  # not the smallest p a NaN used to give


def test_crossed_paired_interval_covers_the_true_shift_with_three_seeds():
    """Seed noise (sd 0.05), a per-window effect shared by every seed (sd 0.4, the same text is hard
    for every run) and noise (sd 0.1), 3 seeds × 32 windows: the two-way interval covers the true
    shift ≈ 92% of the time (200 trials). Resampling windows anew for each seed would give ≈ 80%."""
    from lsa_ds.eval.stats import crossed_paired

    rng, hits = np.random.default_rng(0), 0
    for _ in range(200):
        d = 0.2 + rng.normal(0.0, 0.05, (3, 1)) + rng.normal(0.0, 0.4, (1, 32)) + rng.normal(0.0, 0.1, (3, 32))
        out = crossed_paired(d, np.zeros_like(d), n_boot=400, seed=int(rng.integers(1 << 30)))
        hits += out.diff.lo <= 0.2 <= out.diff.hi
    assert 0.86 <= hits / 200 <= 0.99


def test_a_grouped_bootstrap_draws_whole_groups():
    """Three arms of three seeds: drawing arms whole, all three drawn arms are the same one with
    probability 3/27, and then x is constant and the resample is dropped; drawing the nine runs one
    by one almost never makes x constant."""
    x = np.repeat([0.0, 1.0, 2.0], 3)
    y = x + np.array([0.1, -0.1, 0.0, 0.2, -0.2, 0.0, 0.1, 0.0, -0.1])
    arms = np.repeat(["a", "b", "c"], 3)
    grouped, single = bootstrap_ci(x, y, pearson, 4000, 0, arms), bootstrap_ci(x, y, pearson, 4000, 0)
    assert grouped.value == single.value == pytest.approx(pearson(x, y))
    assert 4000 * (1 - 3 / 27) * 0.95 < grouped.n_boot < 4000 * (1 - 3 / 27) * 1.05
    assert single.n_boot > 3990 and grouped.lo <= grouped.value <= grouped.hi
