"""Throughput figures of one training step: tokens/s, model FLOPs, TFLOP/s and MFU (README, "What
each logged number means").

Every figure is derived from the rows the engine ran (all ranks, a sequence-parallel group's rows
once), the recipe's shapes and rank 0's step time; the FLOP formula is `lsa_ds.model.flops`.
"""

from __future__ import annotations

import torch

from lsa_ds.model.flops import head_recompute_rows, peak_tflops, step_flops
from lsa_ds.model.s2_attention import group_size
from lsa_ds.recipe import Recipe


def device_name() -> str | None:
    """The accelerator's name as torch reports it (what the peak table matches); None on CPU."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def device_peak(recipe: Recipe) -> float | None:
    """Peak TFLOP/s of one device for MFU: run.peak_tflops, else the table's entry, else None."""
    return peak_tflops(device_name(), recipe.train.precision, recipe.run.peak_tflops)


def step_figures(recipe: Recipe, hf_config, world: int, rows: int, step_time: float, paired: bool,
                 peak: float | None) -> dict:
    """The throughput keys of a metrics row. `rows`: sequences of length L the step ran (both views
    when alignment is on); `paired`: the step computed the divergence (the losses then chunk by
    pairs); `peak`: one device's peak TFLOP/s, or None (then `mfu` is None)."""
    t, m = recipe.train, recipe.model
    L, views = t.seq_len, 2 if recipe.align.enabled else 1
    tokens = rows * L
    # each rank projects its micro-batches' rows (L / SP columns of them) chunk by chunk
    micro_rows = t.micro_batch_size * views
    head = world * t.grad_accum * head_recompute_rows(micro_rows, L // t.sequence_parallel,
                                                      recipe.align.chunk_tokens, paired)
    span = group_size(L, m.s2_group_ratio) if m.attn_pattern == "s2" else None
    flops = step_flops(hf_config, rows, L, recompute=m.activation_checkpointing, tiled_mlp=m.tiled_mlp,
                       head_recompute_rows=head, attn_span=span)
    tflops = flops.model / step_time / 1e12
    return {"tokens_per_s": tokens / step_time, "tokens_per_s_per_rank": tokens / step_time / world,
            "effective_tokens_per_s": tokens / views / step_time,
            "flops_per_step": flops.model, "hardware_flops_per_step": flops.hardware,
            "tflops": tflops, "tflops_per_rank": tflops / world,
            "mfu": tflops / world / peak if peak else None}
