"""Memory options for long sequences change what is kept, never the numbers: the loss and every
gradient with TiledMLP and with activation offload equal the plain step's (one process)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lsa_ds.align.views import draw_shifts, make_views
from lsa_ds.model.memory import tile_mlps
from lsa_ds.recipe import load_recipe
from lsa_ds.train.engine import LMWithLoss

L, V = 96, 300


def step(tiled: bool, offload: bool, checkpointing: bool) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=L)
    lm = LlamaForCausalLM(cfg)
    if checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if tiled:
        assert tile_mlps(lm) == 2
    recipe = load_recipe(None, [f"train.seq_len={L}", f"model.activation_offload={str(offload).lower()}"])
    module = LMWithLoss(lm, recipe).train()
    w = np.random.default_rng(0).integers(0, V, size=(2, L + L // 2 + 1))
    v = {k: torch.as_tensor(x) for k, x in make_views(w, L, draw_shifts([1, 2], 0, 1, L // 2)).items()}
    out = module(**v)
    loss = out["ce_sum"] / out["ce_count"] + 0.1 * out["div_sum"] / out["pair_count"]
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in lm.named_parameters()}


@pytest.mark.parametrize("tiled, offload, checkpointing", [(True, False, False), (True, False, True),
                                                            (False, True, True), (True, True, True)])
def test_tiled_mlp_and_activation_offload_keep_loss_and_gradients(tiled, offload, checkpointing):
    loss, grads = step(False, False, False)
    got_loss, got = step(tiled, offload, checkpointing)
    assert got_loss == pytest.approx(loss, abs=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-6, msg=name)
