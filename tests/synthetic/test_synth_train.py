"""A short training run learns the in-distribution mean task; runs are deterministic per seed."""

import statistics

import pytest
import torch

from lsa_ds.synthetic import tasks
from lsa_ds.synthetic.study import grid, run_grid
from lsa_ds.synthetic.train import StudySettings, evaluate, train_model

TINY = StudySettings(
    steps=300, batch_size=32, lr=3e-3, d_model=32, n_layers=1, n_heads=2, test_max_len=10, eval_samples=128
)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_short_run_learns_in_distribution_mean():
    model, final_loss = train_model("mean", "rope", seed=0, settings=TINY)
    mse, _ = evaluate(model, "mean", TINY)
    _, baseline = tasks.constant_baseline("mean", TINY.train_max_len)
    ratios = [mse[n - 1] / baseline(n) for n in range(1, 11)]
    # Predicting 0.5 scores 0.25/n; the trained model should be at least 10x better at every train length.
    assert max(ratios) < 0.1, ratios
    assert final_loss < 0.1 * statistics.fmean(baseline(n) for n in range(1, 11))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        StudySettings(steps=0)
    with pytest.raises(ValueError, match="train_min_len <= train_max_len <= test_max_len"):
        StudySettings(train_max_len=60)


def test_grid_results_do_not_depend_on_worker_count():
    settings = StudySettings(steps=3, batch_size=8, d_model=16, n_layers=1, n_heads=2, test_max_len=12, eval_samples=4)
    specs = grid(["mean", "length-sqrt"], ["rope", "learned"], seeds=[0])
    inline = run_grid(specs, settings, workers=1)
    pooled = run_grid(specs, settings, workers=2)
    assert [(r.task, r.pe, r.seed) for r in pooled] == [(s.task, s.pe, s.seed) for s in specs]
    for a, b in zip(inline, pooled):
        assert a.mse_by_length == b.mse_by_length
