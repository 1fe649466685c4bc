"""The FLOP formula behind flops_per_step, TFLOP/s and MFU (lsa_ds/model/flops.py): a count by hand
on a config small enough to write out, and torch's own FLOP counter on real forward/backward
passes, model FLOPs and recomputed (hardware) FLOPs alike; the peak table and its override."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry
from transformers import LlamaConfig, LlamaForCausalLM

from lsa_ds.align.views import draw_shifts, make_views
from lsa_ds.model.flops import head_recompute_rows, peak_tflops, step_flops
from lsa_ds.model.memory import tile_mlps
from lsa_ds.recipe import load_recipe
from lsa_ds.train.engine import LMWithLoss

HAND = SimpleNamespace(num_hidden_layers=2, hidden_size=8, num_attention_heads=2, num_key_value_heads=1,
                       head_dim=4, intermediate_size=12, vocab_size=10)


def test_the_formula_equals_a_count_by_hand():
    rows, L = 3, 5
    q = o = 2 * 8 * (2 * 4)          # h -> n_q·d and back
    k = v = 2 * 8 * (1 * 4)          # h -> n_kv·d (GQA: one key-value head)
    mlp = 3 * 2 * 8 * 12             # gate, up, down
    attn = 2 * (2 * (2 * 4) * L)     # QK^T and AV: every query against all L keys (mask counted in full)
    layer = q + k + v + o + mlp + attn
    head = 2 * 8 * 10
    tokens = rows * L
    forward = tokens * (2 * layer + head)
    assert (q + k + v + o, mlp, attn, layer, head, forward) == (384, 576, 160, 1120, 160, 36_000)

    plain = step_flops(HAND, rows, L)
    assert plain.model == plain.hardware == 3 * forward == 108_000
    recompute = step_flops(HAND, rows, L, recompute=True, tiled_mlp=True, head_recompute_rows=7)
    assert recompute.model == 108_000
    assert recompute.hardware == 108_000 + tokens * 2 * layer + tokens * 2 * mlp + 7 * head == 160_000
    # without TiledMLP, checkpointing's early stop leaves each layer's down_proj (2·h·I) uncomputed
    assert step_flops(HAND, rows, L, recompute=True).hardware == 108_000 + tokens * 2 * (layer - 2 * 8 * 12)
    # S²-Attn: each query attends within its group of G keys
    assert step_flops(HAND, rows, L, attn_span=2).model == 3 * tokens * (2 * (layer - attn + attn * 2 // L) + head)


def tiny(attn="eager", vocab=300, L=48) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=L,
                       attn_implementation=attn)


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class RegistryCounter(TorchDispatchMode):
    """FlopCounterMode's per-op FLOP formulas without its module tracker, whose hooks fail on
    TiledMLP (DeepSpeed runs the MLP shards under no_grad in forward)."""

    total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._overloadpacket in flop_registry:
            self.total += flop_registry[func._overloadpacket](*args, **(kwargs or {}), out_val=out)
        return out


def test_the_formula_equals_torchs_flop_counter_on_a_forward_and_backward():
    """Exact: eager attention multiplies the full L×L score matrix (the formula counts the causal
    mask in full for that reason), the counter counts matrix products only (softmax, norms, RoPE,
    SiLU and the cross-entropy are not among its ops), and backward is two products per product."""
    torch.manual_seed(0)
    rows, L, cfg = 3, 48, tiny()
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, cfg.vocab_size, (rows, L))

    def step():
        model(input_ids=ids, labels=ids).loss.backward()

    assert counted(step) == step_flops(cfg, rows, L).model


@pytest.mark.parametrize("checkpointing, tiled", [(False, False), (True, False), (False, True), (True, True)])
def test_hardware_flops_count_every_recompute_of_a_training_forward(checkpointing, tiled):
    """The training module itself (both views, chunked losses) under the counter: the chunks the
    losses recompute in backward, activation checkpointing's second forward and TiledMLP's."""
    torch.manual_seed(0)
    B, L, chunk = 2, 48, 40
    cfg = tiny(L=L)
    lm = LlamaForCausalLM(cfg)
    if checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if tiled:
        tile_mlps(lm)
    recipe = load_recipe(None, [f"train.seq_len={L}", f"align.chunk_tokens={chunk}"])
    module = LMWithLoss(lm, recipe).train()
    w = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(B, L + L // 2 + 1))
    views = {k: torch.as_tensor(x) for k, x in make_views(w, L, draw_shifts([1, 2], 0, 1, L // 2)).items()}

    def step():
        out = module(**views)
        (out["ce_sum"] / out["ce_count"] + 0.1 * out["div_sum"] / out["pair_count"]).backward()

    again = head_recompute_rows(2 * B, L, chunk, paired=True)
    assert again == 2 * B * L - (2 * B * L) % chunk  # 96 pairs in chunks of 20: four recomputed, 16 left
    want = step_flops(cfg, 2 * B, L, recompute=checkpointing, tiled_mlp=tiled, head_recompute_rows=again)
    with RegistryCounter() as counter:
        step()
    assert counter.total == want.hardware
    assert want.model == step_flops(cfg, 2 * B, L).model


def test_ce_only_chunks_and_a_single_chunk():
    assert head_recompute_rows(2, 64, 1024, paired=False) == 0  # one chunk: nothing recomputed
    assert head_recompute_rows(2, 64, 50, paired=False) == 100  # 128 rows: chunks of 50, 50, 28
    assert head_recompute_rows(2, 64, 51, paired=True) == 100   # 64 pairs in chunks of 25, 25, 14


def test_peak_table_matches_device_names_and_yields_to_the_override():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.5
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312.0
    assert peak_tflops("NVIDIA A10", "fp16") == 125.0
    assert peak_tflops("NVIDIA A10G", "bf16") is None  # not A10, not A100: unlisted
    assert peak_tflops("Tesla V100-SXM2-32GB", "bf16") is None and peak_tflops("Tesla V100-SXM2-32GB", "fp16") == 125.0
    assert peak_tflops("AMD Instinct MI300X", "bf16") == 1307.4
    assert peak_tflops("NVIDIA H200", "fp32") is None  # the fp32 peak depends on TF32: not guessed
    assert peak_tflops(None, "bf16") is None and peak_tflops(None, "fp32", 2.5) == 2.5
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16", 900.0) == 900.0
