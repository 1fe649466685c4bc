"""Chunked losses against a naive reference that materialises every logit and writes the formulas
out: values and gradients for every divergence x positions x detach, chunk sizes that do and don't
divide the work, a tiny LLaMA (one [A; S] forward vs two plain forwards), the identities (identical
distributions: skl = js = 0, sce = 2 x entropy), empty pair sets, ce_views=long, shape errors, and
a dispatch-mode proof that no [N, L, V]-sized tensor is ever allocated."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lsa_ds.align import losses
from lsa_ds.align.losses import IGNORE, alignment_losses, chunked_ce
from lsa_ds.align.views import make_views, pair_mask
from tests.probes import LargestOutput

B, L, H, V = 2, 13, 16, 97
SHIFTS = np.array([3, 7])
TOL = dict(rtol=1e-5, atol=1e-5)
COMBOS = list(itertools.product(["sce", "skl", "js"], ["overlap", "last", "ratio"], ["none", "long", "short"]))


# ---------------------------------------------------------------------------- naive reference
def naive_from_logits(long_logits, short_logits, labels, mask, shifts, divergence="sce", detach="none"):
    """Every logit materialised ([B, L, V] per view), pairs gathered by index, formulas written out."""
    nb = long_logits.shape[0]
    logits = torch.cat([long_logits, short_logits]).float()
    ce_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                             reduction="sum")
    b, j = torch.nonzero(torch.as_tensor(mask), as_tuple=True)
    t = j + torch.as_tensor(shifts)[b]  # the long position paired with short position j
    a, s = logits[b, t], logits[nb + b, j]
    p, q = a.softmax(-1), s.softmax(-1)
    lp, lq = a.log_softmax(-1), s.log_softmax(-1)
    if detach == "long":
        p, lp = p.detach(), lp.detach()
    if detach == "short":
        q, lq = q.detach(), lq.detach()
    sce = -(p * lq).sum(-1) - (q * lp).sum(-1)
    skl = (p * (lp - lq)).sum(-1) + (q * (lq - lp)).sum(-1)
    m = (p + q) / 2
    js = 0.5 * (p * (lp - m.log())).sum(-1) + 0.5 * (q * (lq - m.log())).sum(-1)
    target = labels[b, t].unsqueeze(-1)
    gap = lp.gather(-1, target) - lq.gather(-1, target)  # -log q[y] - (-log p[y])
    return {"ce_sum": ce_sum, "ce_count": (labels != IGNORE).sum().float(), "pair_count": p.new_tensor(len(b)),
            "div_sum": {"sce": sce, "skl": skl, "js": js}[divergence].sum(), "sce_sum": sce.detach().sum(),
            "skl_sum": skl.detach().sum(), "gap_sum": gap.detach().sum()}


def backward_grads(out, params):
    loss = out["ce_sum"] / out["ce_count"] + 0.3 * out["div_sum"] / out["pair_count"].clamp_min(1)
    return torch.autograd.grad(loss, params, allow_unused=True)


def assert_same(ours, ref, params):
    for k in ("ce_sum", "ce_count", "div_sum", "sce_sum", "skl_sum", "gap_sum", "pair_count"):
        assert ours[k].dtype == torch.float32 and ours[k].dim() == 0, k
        torch.testing.assert_close(ours[k], ref[k], **TOL, msg=k)
    g_ours, g_ref = backward_grads(ours, params), backward_grads(ref, params)
    for p, a, b in zip(params, g_ours, g_ref):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"grad of {tuple(p.shape)}: {m}")


def setup(positions="overlap", seed=0):
    g = torch.Generator().manual_seed(seed)
    proj = torch.nn.Linear(H, V)
    with torch.no_grad():
        proj.weight.copy_(torch.randn(V, H, generator=g) * 0.5)
    hidden = torch.randn(2 * B, L, H, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (2 * B, L), generator=g)
    mask = torch.as_tensor(pair_mask(SHIFTS, L, positions))
    return proj, hidden, labels, mask


# ---------------------------------------------------------------------------- function level
# pairs per chunk = chunk_tokens // 2 over B*L = 26 slots: 26 divides them (13 per chunk, = L),
# 7 (3 per chunk) does not, 1000 is one chunk
@pytest.mark.parametrize("chunk_tokens", [26, 7, 1000])
@pytest.mark.parametrize("divergence,positions,detach", COMBOS)
def test_matches_naive(divergence, positions, detach, chunk_tokens, monkeypatch):
    if chunk_tokens == 26:  # the fp32 math in row blocks of 2 pairs: 13 pairs per chunk don't divide
        monkeypatch.setattr(losses, "_CPU_BLOCK_ELEMS", 2 * 2 * V)
    proj, hidden, labels, mask = setup(positions)
    params = [hidden, proj.weight, proj.bias]
    ours = alignment_losses(hidden, labels, proj, mask, torch.as_tensor(SHIFTS), divergence=divergence,
                            detach=detach, chunk_tokens=chunk_tokens)
    logits = proj(hidden)
    ref = naive_from_logits(logits[:B], logits[B:], labels, mask, SHIFTS, divergence, detach)
    assert_same(ours, ref, params)


@pytest.mark.parametrize("divergence", ["sce", "skl", "js"])
def test_closed_form_equals_autograd_impl(divergence):
    proj, hidden, labels, mask = setup()
    kw = dict(divergence=divergence, detach="short", chunk_tokens=9)
    assert_same(alignment_losses(hidden, labels, proj, mask, SHIFTS, **kw),
                alignment_losses(hidden, labels, proj, mask, SHIFTS, impl="autograd", **kw), [hidden, proj.weight])


@pytest.mark.parametrize("divergence", ["sce", "skl", "js"])
def test_backward_without_forward_stats(divergence, monkeypatch):
    """Backward recomputes the per-pair inner products when forward's are absent (the fallback)."""
    proj, hidden, labels, mask = setup()
    kw = dict(divergence=divergence, chunk_tokens=9)
    ref = alignment_losses(hidden, labels, proj, mask, SHIFTS, **kw)
    forward = losses._block_forward
    monkeypatch.setattr(losses, "_block_forward", lambda *a: (forward(*a)[0], None))
    assert_same(alignment_losses(hidden, labels, proj, mask, SHIFTS, **kw), ref, [hidden, proj.weight])


def test_no_grad_evaluation_gives_the_same_values():
    """Eval runs the chunks without checkpoint (and the Function's forward only)."""
    proj, hidden, labels, mask = setup()
    with_grad = alignment_losses(hidden, labels, proj, mask, SHIFTS, divergence="js", chunk_tokens=9)
    with torch.no_grad():
        without = alignment_losses(hidden, labels, proj, mask, SHIFTS, divergence="js", chunk_tokens=9)
    for k, v in with_grad.items():
        assert not without[k].requires_grad
        torch.testing.assert_close(without[k], v.detach(), rtol=0, atol=0)


def test_without_pairs_is_plain_ce(monkeypatch):
    monkeypatch.setattr(losses, "_CPU_BLOCK_ELEMS", 2 * V)  # blocks of 2 rows
    proj, hidden, labels, _ = setup()
    labels[1, 4] = IGNORE
    s, n = chunked_ce(hidden, labels, proj, chunk_tokens=5)
    ref = F.cross_entropy(proj(hidden).reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    torch.testing.assert_close(s, ref, **TOL)
    assert float(n) == 2 * B * L - 1
    g1 = torch.autograd.grad(s, [hidden, proj.weight])
    g2 = torch.autograd.grad(ref, [hidden, proj.weight])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **TOL)


def test_with_divergence_false_logs_but_trains_ce_only():
    proj, hidden, labels, mask = setup()
    out = alignment_losses(hidden, labels, proj, mask, SHIFTS, with_divergence=False, chunk_tokens=8)
    ref = alignment_losses(hidden, labels, proj, mask, SHIFTS, chunk_tokens=8)
    assert out["div_sum"].item() == 0.0 and float(out["pair_count"]) == float(mask.sum())
    for k in ("ce_sum", "sce_sum", "skl_sum", "gap_sum"):
        torch.testing.assert_close(out[k], ref[k], **TOL)
    g = torch.autograd.grad(out["ce_sum"] + out["div_sum"], [hidden, proj.weight])
    g_ce = torch.autograd.grad(ref["ce_sum"], [hidden, proj.weight])
    for a, b in zip(g, g_ce):
        torch.testing.assert_close(a, b, **TOL)


def test_bf16_follows_fp32(monkeypatch):
    """bf16 logits: the math runs in fp32, gradients come back in bf16 (row blocks of 3 pairs)."""
    monkeypatch.setattr(losses, "_CPU_BLOCK_ELEMS", 3 * 2 * V)
    proj, hidden, labels, mask = setup()
    ref = alignment_losses(hidden, labels, proj, mask, SHIFTS, chunk_tokens=12)
    g_ref = torch.autograd.grad(ref["ce_sum"] + ref["div_sum"], [hidden])[0]
    h16 = hidden.detach().bfloat16().requires_grad_()
    out = alignment_losses(h16, labels, proj.bfloat16(), mask, SHIFTS, chunk_tokens=12)
    assert all(v.dtype == torch.float32 for v in out.values())
    (g,) = torch.autograd.grad(out["ce_sum"] + out["div_sum"], [h16])
    assert g.dtype == torch.bfloat16
    torch.testing.assert_close(out["ce_sum"], ref["ce_sum"], rtol=2e-2, atol=0)
    torch.testing.assert_close(out["div_sum"], ref["div_sum"], rtol=5e-2, atol=0)
    torch.testing.assert_close(g.float(), g_ref, rtol=0.1, atol=2e-2)


def test_identical_distributions():
    """Short row j := long row j + E at every pair: skl = js = 0 (and no gradient), sce = 2 x entropy."""
    proj, hidden, labels, mask = setup()
    with torch.no_grad():
        for b, e in enumerate(SHIFTS):
            hidden[B + b, : L - e] = hidden[b, e:]
    ents = []
    for b, e in enumerate(SHIFTS):
        lp = proj(hidden[b, e:]).log_softmax(-1)
        ents.append(-(lp.exp() * lp).sum())
    for divergence in ("skl", "js"):
        out = alignment_losses(hidden, labels, proj, mask, SHIFTS, divergence=divergence, chunk_tokens=6)
        assert abs(out["div_sum"].item()) < 1e-5 and abs(float(out["skl_sum"])) < 1e-5
        (g,) = torch.autograd.grad(out["div_sum"], [hidden])
        assert g.abs().max() < 1e-5
    out = alignment_losses(hidden, labels, proj, mask, SHIFTS, divergence="sce", chunk_tokens=6)
    torch.testing.assert_close(out["div_sum"], 2 * sum(ents).detach(), **TOL)
    assert abs(float(out["gap_sum"])) < 1e-5


def test_empty_pair_set():
    proj, hidden, labels, _ = setup("last")
    empty = torch.zeros(B, L, dtype=torch.bool)
    for divergence in ("sce", "skl", "js"):
        out = alignment_losses(hidden, labels, proj, empty, SHIFTS, divergence=divergence, chunk_tokens=5)
        assert all(torch.isfinite(v) for v in out.values())
        assert float(out["pair_count"]) == 0 and out["div_sum"].item() == 0 and float(out["sce_sum"]) == 0
        mean = out["div_sum"] / out["pair_count"].clamp_min(1)  # how the engine normalises
        g = torch.autograd.grad(mean, [hidden, proj.weight, proj.bias])
        assert all(torch.equal(x, torch.zeros_like(x)) for x in g)


def test_ce_views_long_counts_long_targets_only():
    rng = np.random.default_rng(0)
    windows = rng.integers(0, V, (B, L + SHIFTS.max() + 1))
    v = make_views(windows, L, SHIFTS, ce_views="long")
    proj, hidden, _, _ = setup()
    labels, mask = torch.as_tensor(v["labels"]), torch.as_tensor(v["pair_mask"])
    out = alignment_losses(hidden, labels, proj, mask, v["shifts"], chunk_tokens=7)
    assert float(out["ce_count"]) == B * L
    long_ce = F.cross_entropy(proj(hidden[:B]).reshape(-1, V), labels[:B].reshape(-1), reduction="sum")
    torch.testing.assert_close(out["ce_sum"], long_ce, **TOL)
    ref = naive_from_logits(proj(hidden[:B]), proj(hidden[B:]), labels, mask, SHIFTS)
    torch.testing.assert_close(out["gap_sum"], ref["gap_sum"], **TOL)  # gap uses the long target


def test_shape_errors_name_the_expected_shapes():
    proj, hidden, labels, mask = setup()
    cases = [
        (dict(hidden=hidden[0]), "expected [N, L, H]"),
        (dict(labels=labels[:, :-1]), "expected [N, L, H] and [N, L]"),
        (dict(mask=mask[:, :-1]), "pair_mask [B, L]"),
        (dict(shifts=SHIFTS[:1]), "shifts [B]"),
        (dict(hidden=hidden[:3], labels=labels[:3]), "N = 2B"),
        (dict(shifts=None), "expected both"),
        (dict(shifts=SHIFTS + 5), "j + shifts[b] <= L - 1"),
        (dict(divergence="kl"), "sce|skl|js"),
    ]
    for change, expected in cases:
        kw = {**dict(hidden=hidden, labels=labels, mask=mask, shifts=SHIFTS, divergence="sce"), **change}
        with pytest.raises(ValueError, match=re.escape(expected)):
            alignment_losses(kw["hidden"], kw["labels"], proj, kw["mask"], kw["shifts"], divergence=kw["divergence"])


@pytest.mark.parametrize("divergence", ["sce", "js"])
def test_no_full_logits_tensor(divergence):
    n, length, h, vocab = 2, 64, 8, 97  # one sample: N * L * V = 12416 >> hidden (1024), weight (776)
    proj = torch.nn.Linear(h, vocab)
    hidden = torch.randn(n, length, h, requires_grad=True)
    labels = torch.randint(0, vocab, (n, length))
    shifts = np.array([20])
    mask = torch.as_tensor(pair_mask(shifts, length))
    with LargestOutput() as mode:
        out = alignment_losses(hidden, labels, proj, mask, shifts, divergence=divergence, chunk_tokens=16)
        (out["ce_sum"] + out["div_sum"]).backward()
    assert mode.largest < n * length * vocab / 4, mode.largest  # one chunk: 16 x 97 logits
    with LargestOutput() as naive:  # the probe does see a materialised loss
        F.cross_entropy(proj(hidden).reshape(-1, vocab), labels.reshape(-1)).backward()
    assert naive.largest >= n * length * vocab


# ---------------------------------------------------------------------------- model level
@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=97, max_position_embeddings=64, tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    return LlamaForCausalLM(cfg).float()


# every value of every knob; pairs per chunk 8 (divides the B*L = 32 slots), 5 and 3 (don't)
@pytest.mark.parametrize("i", range(len(COMBOS)))
def test_tiny_llama_one_forward_equals_two(tiny_llama, i):
    divergence, positions, detach = COMBOS[i]
    chunk_tokens = [16, 10, 7][i % 3]
    lm, seq, shifts = tiny_llama, 16, np.array([5, 9])
    windows = np.random.default_rng(i).integers(0, 97, (2, seq + shifts.max() + 1))
    v = {k: torch.as_tensor(x) for k, x in make_views(windows, seq, shifts, positions=positions,
                                                      ce_views="long" if i % 4 == 3 else "both").items()}
    params = [p for p in lm.parameters()]

    hidden = lm.model(input_ids=v["input_ids"], position_ids=v["position_ids"], use_cache=False).last_hidden_state
    ours = alignment_losses(hidden, v["labels"], lm.get_output_embeddings(), v["pair_mask"], v["shifts"],
                            divergence=divergence, detach=detach, chunk_tokens=chunk_tokens)
    logits_long = lm(input_ids=v["input_ids"][:2], position_ids=v["position_ids"][:2], use_cache=False).logits
    logits_short = lm(input_ids=v["input_ids"][2:], position_ids=v["position_ids"][2:], use_cache=False).logits
    ref = naive_from_logits(logits_long, logits_short, v["labels"], v["pair_mask"], shifts, divergence, detach)
    assert_same(ours, ref, params)
