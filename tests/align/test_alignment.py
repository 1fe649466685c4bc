"""The regularizer in the training step: views, one forward of [A; S], no full logits, and real
2-rank ZeRO-3 runs (alpha 0 reduces to CE on both views; alpha 0.1 lowers held-out misalignment)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lsa_ds.align.views import IGNORE, draw_shifts, make_views, pair_mask
from lsa_ds.recipe import load_recipe
from lsa_ds.train.engine import LMWithLoss
from tests.conftest import SMALL_DATA
from tests.launch import lsa, metrics, sets
from tests.probes import LargestOutput

L, B, V = 64, 2, 512


def test_views_follow_the_contract():
    w = np.arange(3 * (L + 33)).reshape(3, L + 33)
    shifts = np.array([1, 17, 32])
    v = make_views(w, L, shifts)
    assert v["input_ids"].shape == (6, L) and (v["position_ids"] == np.arange(L)).all()
    np.testing.assert_array_equal(v["input_ids"][:3], w[:, :L])
    np.testing.assert_array_equal(v["labels"][:3], w[:, 1:L + 1])
    for b, e in enumerate(shifts):
        np.testing.assert_array_equal(v["input_ids"][3 + b], w[b, e:e + L])
        np.testing.assert_array_equal(v["labels"][3 + b], w[b, e + 1:e + L + 1])
        j = np.flatnonzero(v["pair_mask"][b])
        assert j.tolist() == list(range(L - e))  # overlap: every shared target
        # a pair predicts the same token: short label j == long label j + E
        np.testing.assert_array_equal(v["labels"][3 + b][j], v["labels"][b][j + e])
    assert make_views(w, L)["input_ids"].shape == (3, L)  # alignment off: the long view only
    assert (make_views(w, L, shifts, ce_views="long")["labels"][3:] == IGNORE).all()


def test_pair_modes_and_shift_draws():
    e = np.array([1, 10, 40])
    last = pair_mask(e, L, "last")
    assert last.sum(1).tolist() == [1, 1, 1] and [int(np.flatnonzero(r)[0]) for r in last] == [62, 53, 23]
    ratio = pair_mask(e, L, "ratio", 0.5)
    for b in range(3):  # short context j + 1 >= 32, and still inside the overlap
        assert np.flatnonzero(ratio[b]).tolist() == [j for j in range(31, L) if j <= L - 1 - e[b]]
    assert pair_mask(np.array([40]), L, "ratio", 0.9).sum() == 0  # empty pair set is allowed
    a = draw_shifts(list(range(100)), seed=3, shift_min=1, shift_max=32)
    assert a.min() >= 1 and a.max() <= 32 and len(set(a.tolist())) > 10
    np.testing.assert_array_equal(a[50:], draw_shifts(list(range(50, 100)), 3, 1, 32))  # keyed by sample id


def _tiny_lm():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=L, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def _views():
    rng = np.random.default_rng(0)
    w = rng.integers(0, V, size=(B, L + L // 2 + 1))
    return {k: torch.as_tensor(v) for k, v in make_views(w, L, draw_shifts([0, 1], 0, 1, L // 2)).items()}


def test_one_forward_of_2B_rows_and_no_full_logits_in_a_micro_step():
    recipe = load_recipe(None, ["align.chunk_tokens=32", "train.seq_len=64"])
    module = LMWithLoss(_tiny_lm(), recipe)
    calls = []
    module.lm.model.register_forward_hook(lambda mod, args, kwargs, out: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    views = _views()
    with LargestOutput() as mode:
        out = module(**views)
        (out["ce_sum"] / out["ce_count"] + 0.1 * out["div_sum"] / out["pair_count"]).backward()
    assert calls == [(2 * B, L)]  # one decoder forward over [A; S], none in backward
    full = 2 * B * L * V
    assert mode.largest < full // 4, (mode.largest, full)
    assert all(p.grad is not None for p in module.parameters())


def test_chunked_step_equals_two_plain_forwards():
    """The training module's loss and gradients equal the naive reference: two HF forwards (long and
    short views), materialised logits, SCE written out."""
    recipe = load_recipe(None, ["align.chunk_tokens=48", "train.seq_len=64"])
    lm = _tiny_lm()
    views = _views()
    module = LMWithLoss(lm, recipe)
    out = module(**views)
    loss = out["ce_sum"] / out["ce_count"] + 0.1 * out["div_sum"] / out["pair_count"]
    loss.backward()
    got = [p.grad.clone() for p in lm.parameters()]
    lm.zero_grad()

    long_logits = lm(input_ids=views["input_ids"][:B], position_ids=views["position_ids"][:B]).logits.float()
    short_logits = lm(input_ids=views["input_ids"][B:], position_ids=views["position_ids"][B:]).logits.float()
    logits = torch.cat([long_logits, short_logits])
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, V), views["labels"].reshape(-1))
    terms = []
    for b in range(B):
        e = int(views["shifts"][b])
        for j in torch.nonzero(views["pair_mask"][b]).flatten().tolist():
            lp, lq = long_logits[b, j + e].log_softmax(-1), short_logits[b, j].log_softmax(-1)
            terms.append(-(lp.exp() * lq).sum() - (lq.exp() * lp).sum())
    ref = ce + 0.1 * torch.stack(terms).mean()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    for g, p in zip(got, lm.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.deepspeed
def test_alpha_zero_is_ce_on_both_views_and_alpha_lowers_heldout_misalignment(tmp_path, prepared, data_cache_dir):
    common = [*SMALL_DATA, f"data.cache_dir={data_cache_dir}", f"run.output_dir={tmp_path}", "model.preset=tiny",
              "train.seq_len=64", "train.max_steps=30", "train.micro_batch_size=2", "optim.lr=3e-3",
              "optim.warmup_steps=2", "eval.windows=16", "align.enabled=true"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("{}\n")
    for name, extra in [("a0", ["align.alpha=0"]), ("never", ["align.alpha=0.3", "align.every=1000"]),
                        ("a01", ["align.alpha=0.1"])]:
        lsa("train", str(recipe), *sets(*common, f"run.name={name}", *extra), "--nproc", "2")
    a0, never, a01 = (metrics(tmp_path / n) for n in ("a0", "never", "a01"))
    # CE on both views: the same objective; alpha 0 computes its CE in the pair-aligned chunks, so
    # the sums agree to float rounding at the first step, and drift by no more than rounding grows
    assert a0[0][0]["loss"] == pytest.approx(never[0][0]["loss"], rel=1e-6)
    assert [r["loss"] for r in a0[0]] == pytest.approx([r["loss"] for r in never[0]], rel=1e-3)
    # alpha 0 runs both views anyway: it logs their misalignment without training on it
    assert all(not r["divergence_applied"] and r["misalign"] > 0 for r in a0[0])
    # a step the divergence skips says so, rather than leaving blanks unexplained
    assert [r["divergence_applied"] for r in never[0]] == [False] * len(never[0])
    assert all(r["divergence_applied"] and r["misalign"] > 0 and r["misalign_skl"] >= 0 for r in a01[0])
    assert all(r["misalign_sce"] == r["misalign"] for r in a01[0])  # divergence sce: the same number
    assert a01[0][-1]["loss"] < a01[0][0]["loss"] - 0.3  # it trains
    # held-out symmetric KL between long- and short-context predictions ends lower with the regularizer
    assert a01[1][-1]["misalign_skl"] < a0[1][-1]["misalign_skl"], (a01[1][-1], a0[1][-1])
