"""S²-Attn (LongLoRA's shifted sparse attention) against a naive per-head masked reference, and as
a transformers attention function: training only, full attention in eval mode."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from lsa_ds.model.s2_attention import check_group, register, s2_attention


def reference(q, k, v, mask, g):
    """Every head's scores over the whole sequence, masked to its group: heads [0, H/2) groups
    [kG, (k+1)G), heads [H/2, H) groups shifted by G/2 (no wrap-around), within `mask`."""
    _, h, length, d = q.shape
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    allowed = (j <= i)[None] if mask is None else mask
    out = []
    for head in range(h):
        s = 0 if head < h // 2 else g // 2
        m = allowed & ((i + s) // g == (j + s) // g)
        scores = (q[:, head] @ k[:, head].transpose(-1, -2) / math.sqrt(d)).masked_fill(~m, float("-inf"))
        out.append(torch.softmax(scores, -1) @ v[:, head])
    return torch.stack(out, 1)


def packed_mask(batch: int, docs: list[int]) -> torch.Tensor:
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(docs)])
    n = len(doc)
    return ((doc[:, None] == doc[None, :]) & (torch.arange(n)[None, :] <= torch.arange(n)[:, None]))[None].expand(batch, n, n)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("g", [4, 8, 16])
def test_s2_equals_the_naive_masked_reference_values_and_gradients(packed, g):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 32, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = packed_mask(2, [10, 15, 7]) if packed else None
    got, want = s2_attention(q, k, v, mask, g), reference(q, k, v, mask, g)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    weights = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad((got * weights).sum(), (q, k, v)),
                    torch.autograd.grad((want * weights).sum(), (q, k, v))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_s2_is_full_attention_with_one_group_and_differs_otherwise():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 4, 32, 8) for _ in range(3))
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(s2_attention(q, k, v, None, 32), full, rtol=0, atol=0)
    assert (s2_attention(q, k, v, None, 8) - full).abs().max() > 0.1
    # the first group's plain heads see exactly what full attention sees
    torch.testing.assert_close(s2_attention(q, k, v, None, 8)[:, :2, :8], full[:, :2, :8], rtol=0, atol=1e-6)


def test_group_size_must_divide_the_length_and_be_even():
    assert check_group(64, 0.25) is None and check_group(64, 1.0) is None
    assert "does not divide train.seq_len=64" in check_group(64, 0.3)
    assert "odd" in check_group(66, 1 / 22)  # 3 tokens


def test_as_a_transformers_attention_it_trains_sparse_and_evaluates_full():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("llama", vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, intermediate_size=128)
    torch.manual_seed(0)
    dense = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="sdpa")
    sparse = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation=register(0.25))
    sparse.load_state_dict(dense.state_dict())
    ids = torch.randint(0, 100, (2, 32))
    pos = torch.cat([torch.arange(12), torch.arange(20)])[None].expand(2, -1)  # two packed documents
    out = {}
    for mode in ("eval", "train"):
        for name, m in (("dense", dense), ("sparse", sparse)):
            getattr(m, mode)()
            out[mode, name] = m(ids, position_ids=pos).logits
    torch.testing.assert_close(out["eval", "sparse"], out["eval", "dense"], rtol=0, atol=0)
    assert (out["train", "sparse"] - out["train", "dense"]).abs().max() > 1e-3
    register(1.0)  # re-binds the name (one ratio per process): one group, i.e. full attention
    torch.testing.assert_close(sparse(ids, position_ids=pos).logits, out["train", "dense"], rtol=0, atol=1e-5)
