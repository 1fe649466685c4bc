"""Summaries: bucket means over lengths, mean ± std over seeds, exact baselines, ratios."""

import pytest

from lsa_ds.synthetic import report
from lsa_ds.synthetic.train import RunResult, StudySettings

SETTINGS = StudySettings(test_max_len=20)


def _run(task: str, seed: int, mse: list[float]) -> RunResult:
    return RunResult(
        task=task, pe="rope", seed=seed, mse_by_length=mse, final_train_loss=0.0, seconds=0.0, parameters=1
    )


def test_cells_are_bucket_means_then_seed_mean_and_std():
    runs = [_run("length", 0, [1.0] * 10 + [10.0] * 9 + [40.0]), _run("length", 1, [3.0] * 10 + [30.0] * 9 + [80.0])]
    rows = report.summarise(runs, SETTINGS)
    assert [(r.task, r.pe) for r in rows] == [("length", "rope"), ("length: predict 10", "—")]
    first, second = rows[0].buckets
    assert (first.mean, first.std, first.seeds) == (2.0, pytest.approx(2**0.5), 2)
    assert second.mean == pytest.approx((13.0 + 35.0) / 2)  # seed 0: (9*10+40)/10, seed 1: (9*30+80)/10
    assert rows[0].at_max_len.mean == 60.0
    baseline = rows[1]
    assert baseline.at_max_len.mean == 100.0 and baseline.buckets[0].mean == pytest.approx(28.5)


def test_reparam_ratio_is_plain_over_reparam_seed_means():
    runs = [_run("length", 0, [4.0] * 20), _run("length-invsqrt", 0, [1.0] * 19 + [0.5])]
    ratios = report.reparam_ratios(report.summarise(runs, SETTINGS))
    assert len(ratios) == 1
    assert ratios[0].formula == "1/sqrt(n)"
    assert ratios[0].ratio_at_max_len == 8.0
    assert ratios[0].ratio_last_bucket == pytest.approx(4.0 / 0.95)


def test_markdown_names_every_row_and_bucket():
    runs = [_run("mean", 0, [0.01] * 20)]
    text = report.markdown_table(report.summarise(runs, SETTINGS), [], SETTINGS, seeds=1)
    assert "| task | pe | 1-10 | 11-20 | n=20 |" in text
    assert "| mean | rope | 0.01 | 0.01 | 0.01 |" in text
    assert "| mean: predict 0.5 | — |" in text
