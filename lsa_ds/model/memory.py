"""Memory options for long sequences, besides activation checkpointing and the chunked losses.

- `model.tiled_mlp`: every decoder MLP through DeepSpeed's `TiledMLP`, which runs the MLP over
  sequence shards of about `hidden_size` tokens and recomputes each shard in backward, so the
  MLP's intermediate activations ([rows, L, intermediate]) never exist for the whole sequence.
- `model.activation_offload`: tensors autograd saves for backward (with activation checkpointing:
  the layer inputs it keeps) go to CPU memory while the forward runs and come back for backward
  (`torch.autograd.graph.save_on_cpu`); on a CPU-only machine it changes nothing.

And what a run logs of memory: `peak_memory_mb`.
"""

from __future__ import annotations

import contextlib
import math
import resource
import types

import torch
from torch import nn


def _is_gated_mlp(module: nn.Module) -> bool:
    return all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))


def _mlp(self, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def _tiled_forward(self, x: torch.Tensor) -> torch.Tensor:
    # deferred: DeepSpeed is imported on ranks only (never by the `lsa train` parent)
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP

    # Shards depend only on the shape, which every rank shares (equal local slices), so no
    # collective is needed to agree on them (DeepSpeed's example all-reduces a max).
    shards = max(1, math.ceil(x.shape[-2] / x.shape[-1]))
    compute_params = [p for p in self.parameters() if p.requires_grad]  # LoRA adapters included
    return TiledMLP.apply(_mlp, self, x, shards, compute_params)


def tile_mlps(model: nn.Module) -> int:
    """Route every LLaMA-style gated MLP of `model` through TiledMLP; returns how many."""
    mlps = [m for m in model.modules() if _is_gated_mlp(m)]
    for m in mlps:
        m.forward = types.MethodType(_tiled_forward, m)
    if not mlps:
        raise RuntimeError(f"model.tiled_mlp: no gated MLP (gate_proj/up_proj/down_proj) in {type(model).__name__}")
    return len(mlps)


def offloaded_activations(enabled: bool):
    """The context a training forward runs in: saved tensors on CPU when `enabled`."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())


def peak_memory_mb() -> float:
    """This process's peak memory so far (the metrics' `peak_mem_mb`): the CUDA caching allocator's
    `max_memory_allocated` on a GPU (tensors only, not the allocator's reserve or the CUDA context),
    else the process's peak resident set (`ru_maxrss`, KiB on Linux)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
