"""Interval and correlation helpers against hand values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lsa_ds.eval.report import correlate
from lsa_ds.eval.stats import mean_ci, paired, pearson, ranks, sign_test, spearman


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
