"""Perplexity and misalignment against straightforward reference computations on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lsa_ds.eval.forward import hf_logits_fn, shard
from lsa_ds.eval.misalignment import divergences, draw_last_lengths, draw_overlap_shift, measure_misalignment
from lsa_ds.eval.perplexity import perplexity_at


def _windows(n: int, width: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(4, vocab, size=(n, width))


@torch.no_grad()
def _full_logits(model, ids) -> torch.Tensor:
    """Every position's logits of one unpadded sequence, no logits_to_keep."""
    return model(input_ids=torch.as_tensor(ids, dtype=torch.int64)[None]).logits[0].float()


def _sce_skl(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    p, q = torch.softmax(a, -1), torch.softmax(b, -1)
    lp, lq = torch.log(p), torch.log(q)
    sce = -(p * lq).sum() - (q * lp).sum()
    skl = (p * (lp - lq)).sum() + (q * (lq - lp)).sum()
    return float(sce), float(skl)


def test_perplexity_equals_a_plain_per_window_computation(tiny):
    model, tok = tiny
    lengths, K = [8, 20, 33], 5
    windows = _windows(7, 40, tok.vocab_size)
    # small batches (several per length) and 7 windows: batching and remainders are exercised
    got = perplexity_at(hf_logits_fn(model), windows, lengths, K, batch_tokens=60)
    for n in lengths:
        per_window = []
        for w in windows:
            ctx = w[len(w) - 1 - n: len(w) - 1]  # the n tokens before the last target
            logp = torch.log_softmax(_full_logits(model, ctx), -1)
            targets = torch.as_tensor(w[len(w) - K:])
            per_window.append(-logp[n - K:].gather(-1, targets[:, None]).mean().item())
        ref = float(np.mean(per_window))
        assert got[n].nll.mean == pytest.approx(ref, abs=1e-5)
        assert got[n].ppl == pytest.approx(math.exp(ref), rel=1e-5)
        half = 1.959963984540054 * np.std(per_window, ddof=1) / math.sqrt(len(per_window))
        assert got[n].nll.lo == pytest.approx(ref - half, abs=1e-5) and got[n].nll.n == 7


def test_perplexity_rejects_lengths_the_windows_cannot_hold(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="too short"):
        perplexity_at(hf_logits_fn(model), _windows(2, 20, tok.vocab_size), [8, 20], 4)
    with pytest.raises(ValueError, match="score_tokens"):
        perplexity_at(hf_logits_fn(model), _windows(2, 40, tok.vocab_size), [8, 20], 9)


@pytest.mark.parametrize("L", [16, 17])
def test_last_position_misalignment_equals_two_separate_forwards(tiny, L):
    model, tok = tiny
    windows, samples, seed = _windows(5, L, tok.vocab_size, seed=1), 9, 3
    got = measure_misalignment(hf_logits_fn(model), windows, L, "last", samples, seed, batch_tokens=4 * L)
    sce, skl = [], []
    for i in range(samples):
        w = windows[i % len(windows)]
        l1, l2 = draw_last_lengths(seed, i, L)
        assert math.ceil(L / 2) <= min(l1, l2) and max(l1, l2) <= L
        s, k = _sce_skl(_full_logits(model, w[L - l1:L])[-1], _full_logits(model, w[L - l2:L])[-1])
        sce.append(s)
        skl.append(k)
    assert got.sce.mean == pytest.approx(np.mean(sce), abs=1e-5)
    assert got.skl.mean == pytest.approx(np.mean(skl), abs=1e-6)
    assert got.sce.n == samples and got.sce.lo <= got.sce.mean <= got.sce.hi


@pytest.mark.parametrize("L", [2, 3, 32, 33])
def test_last_variant_draws_two_different_lengths_uniformly(L):
    """Independent draws tied 1145 times in 20,000 at L = 32 (each a divergence of exactly 0)."""
    from collections import Counter

    lo, n = math.ceil(L / 2), 20_000 if L >= 32 else 2_000
    pairs = [draw_last_lengths(7, i, L) for i in range(n)]
    assert all(l1 != l2 and lo <= min(l1, l2) and max(l1, l2) <= L for l1, l2 in pairs)
    counts = Counter(l for p in pairs for l in p)  # every length in range, about equally often
    assert set(counts) == set(range(lo, L + 1))
    expected = 2 * n / (L - lo + 1)
    assert max(abs(c - expected) for c in counts.values()) < 5 * math.sqrt(expected)
    assert pairs == [draw_last_lengths(7, i, L) for i in range(n)]  # deterministic


def test_overlap_misalignment_equals_two_separate_forwards(tiny, monkeypatch):
    from lsa_ds.eval import misalignment as module

    monkeypatch.setattr(module, "_PAIR_CHUNK", 5)  # several chunks of aligned pairs per sample
    model, tok = tiny
    L, samples, seed = 16, 6, 0
    windows = _windows(6, L, tok.vocab_size, seed=2)
    got = measure_misalignment(hf_logits_fn(model), windows, L, "overlap", samples, seed, batch_tokens=3 * L)
    sce, skl = [], []
    for i in range(samples):
        w, e = windows[i], draw_overlap_shift(seed, i, L)
        assert 1 <= e <= L // 2
        long_, short = _full_logits(model, w[:L]), _full_logits(model, w[e:L])
        pairs = [_sce_skl(long_[t], short[t - e]) for t in range(e, L)]
        sce.append(np.mean([p[0] for p in pairs]))
        skl.append(np.mean([p[1] for p in pairs]))
    assert got.sce.mean == pytest.approx(np.mean(sce), abs=1e-5)
    assert got.skl.mean == pytest.approx(np.mean(skl), abs=1e-6)
    # the reported entropy is the mean entropy of the two views' predictions over the shared positions
    ent = []
    for i in range(samples):
        w, e = windows[i], draw_overlap_shift(seed, i, L)
        lp, lq = (torch.log_softmax(_full_logits(model, x), -1) for x in (w[:L], w[e:L]))
        h = lambda z: -(z.exp() * z).sum(-1)  # noqa: E731
        ent.append(((h(lp[e:L]) + h(lq[:L - e])) / 2).mean().item())
    assert got.entropy.mean == pytest.approx(np.mean(ent), abs=1e-5) and got.to_dict()["entropy"]["n"] == samples


def test_divergences_of_identical_distributions_are_twice_the_entropy_and_zero():
    z = torch.randn(3, 50)
    sce, skl = divergences(z, z)
    p = torch.softmax(z, -1)
    entropy = -(p * torch.log(p)).sum(-1)
    torch.testing.assert_close(sce, 2 * entropy)
    assert skl.abs().max() < 1e-6
    # masked vocabulary entries (-inf logits) stay finite
    z2 = z.clone()
    z2[:, :5] = float("-inf")
    assert torch.isfinite(torch.stack(divergences(z2, z2))).all()


def test_shard_gives_every_rank_the_same_number_of_slots():
    slots = [shard(7, r, 3) for r in range(3)]
    assert [len(s) for s in slots] == [3, 3, 3]
    assert sorted(i for s in slots for i in s if i is not None) == list(range(7))
    assert slots[1][-1] is None and slots[2][-1] is None


def test_intervals_of_divergences_stay_at_or_above_zero():
    from lsa_ds.eval.misalignment import nonnegative_ci

    ci = nonnegative_ci([0.0, 0.0, 0.0, 0.0, 0.004])  # a normal interval would reach below 0
    assert ci.lo == 0.0 and ci.mean == pytest.approx(0.0008) and ci.hi > ci.mean
    assert nonnegative_ci([1.0, 1.1, 0.9]).lo > 0.8  # far from 0: the interval is left as it is
