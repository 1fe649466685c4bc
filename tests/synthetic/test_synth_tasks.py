"""Task generators and output transforms: exact targets, exact inversions, robust clamping."""

import pytest
import torch

from lsa_ds.synthetic import tasks


def test_tokens_are_bos_bits_then_padding():
    lengths = torch.tensor([1, 4, 2])
    tokens = tasks.sample_tokens(lengths, torch.Generator().manual_seed(0))
    assert tokens.shape == (3, 5)
    assert (tokens[:, 0] == tasks.BOS).all()
    for row, n in zip(tokens, lengths.tolist()):
        assert set(row[1 : n + 1].tolist()) <= {0, 1}
        assert (row[n + 1 :] == tasks.PAD).all()


def test_lengths_cover_the_training_range_uniformly():
    lengths = tasks.sample_lengths(20_000, 1, 10, torch.Generator().manual_seed(0))
    counts = torch.bincount(lengths, minlength=11)
    assert counts[0] == 0 and lengths.max() == 10
    assert (counts[1:] - 2000).abs().max() < 200  # ~5 sigma


def test_bits_are_fair():
    lengths = torch.full((4000,), 10)
    tokens = tasks.sample_tokens(lengths, torch.Generator().manual_seed(1))
    assert abs(tokens[:, 1:].double().mean().item() - 0.5) < 0.01


def test_mean_target_is_exact_and_ignores_bos_and_padding():
    # BOS = 2 and padding must not count; rows hand-built, padding is 0 but a "1" in padding would also be ignored.
    tokens = torch.tensor([[2, 1, 0, 1, 1], [2, 0, 0, 1, 1], [2, 1, 1, 1, 0]])
    lengths = torch.tensor([4, 2, 3])
    targets = tasks.true_targets("mean", tokens, lengths)
    assert targets.dtype == torch.float64
    assert targets.tolist() == [3 / 4, 0 / 2, 3 / 3]


@pytest.mark.parametrize("task", ["length", "length-invsqrt", "length-sqrt", "length-log"])
def test_length_targets_are_the_length(task):
    lengths = torch.tensor([1, 7, 50])
    tokens = tasks.sample_tokens(lengths, torch.Generator().manual_seed(0))
    assert tasks.true_targets(task, tokens, lengths).tolist() == [1.0, 7.0, 50.0]


def test_training_targets_apply_f_exactly():
    n = torch.tensor([1.0, 4.0, 9.0, 100.0], dtype=torch.float64)
    assert tasks.training_targets("length", n).tolist() == n.tolist()
    assert tasks.training_targets("mean", n).tolist() == n.tolist()
    assert tasks.training_targets("length-invsqrt", n).tolist() == [1.0, 0.5, 1 / 3, 0.1]
    assert tasks.training_targets("length-sqrt", n).tolist() == [1.0, 2.0, 3.0, 10.0]
    torch.testing.assert_close(tasks.training_targets("length-log", n), n.log(), rtol=0, atol=0)


@pytest.mark.parametrize("task", ["length-invsqrt", "length-sqrt", "length-log"])
def test_inverse_undoes_f(task):
    n = torch.arange(1, 1001, dtype=torch.float64)
    decoded = tasks.decode_predictions(task, tasks.training_targets(task, n))
    torch.testing.assert_close(decoded, n, rtol=1e-12, atol=0)
    assert decoded.round().tolist() == n.tolist()


@pytest.mark.parametrize(
    ("task", "outputs", "expected"),
    [
        # Outputs outside f's range over n >= 1 are clamped to it: never NaN, inf or a length < 1.
        ("length-invsqrt", [-3.0, 0.0, 2.0], [1e12, 1e12, 1.0]),
        ("length-sqrt", [-3.0, 0.5, 3.0], [1.0, 1.0, 9.0]),
        ("length-log", [-3.0, 0.0], [1.0, 1.0]),
    ],
)
def test_inverse_clamps_to_the_range_of_f(task, outputs, expected):
    decoded = tasks.decode_predictions(task, torch.tensor(outputs, dtype=torch.float64))
    torch.testing.assert_close(decoded, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=0)


def test_decoding_is_identity_for_untransformed_tasks():
    outputs = torch.tensor([-1.0, 0.3, 70.0])
    assert tasks.decode_predictions("mean", outputs).tolist() == outputs.tolist()
    assert tasks.decode_predictions("length", outputs).tolist() == outputs.tolist()


def test_constant_baselines_are_exact():
    label, mse = tasks.constant_baseline("mean", 10)
    assert label == "predict 0.5" and mse(1) == 0.25 and mse(50) == 0.005
    label, mse = tasks.constant_baseline("length-log", 10)
    assert label == "predict 10" and mse(10) == 0.0 and mse(50) == 1600.0


def test_mean_baseline_matches_simulation():
    lengths = torch.full((20_000,), 8)
    tokens = tasks.sample_tokens(lengths, torch.Generator().manual_seed(2))
    simulated = (tasks.true_targets("mean", tokens, lengths) - 0.5).square().mean().item()
    assert simulated == pytest.approx(tasks.constant_baseline("mean", 10)[1](8), rel=0.05)


def test_buckets_cover_every_length_once():
    assert tasks.length_buckets(50) == [(1, 10), (11, 20), (21, 30), (31, 40), (41, 50)]
    assert tasks.length_buckets(12) == [(1, 10), (11, 12)]
    assert [tasks.bucket_label(b) for b in tasks.length_buckets(11)] == ["1-10", "11"]


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown synthetic task 'bogus'"):
        tasks.true_targets("bogus", torch.zeros(1, 2, dtype=torch.long), torch.tensor([1]))
