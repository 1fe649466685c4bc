"""How the metrics call a model, and how they split work across ranks.

Every metric takes a `LogitsFn` instead of a model, so the same code scores a plain HF model in
one process (`hf_logits_fn`) and the trainer's ZeRO-3 engine on every rank (the trainer wraps its
own forward). The contract mirrors transformers' `logits_to_keep`: only the positions a metric
needs are projected to the vocabulary, so no [B, n, V] logits tensor exists for long n.

Ranks: when torch.distributed is initialised, `shard` gives each rank every world-th item, padded
so that all ranks run the *same number* of forwards (ZeRO-3 gathers parameters collectively inside
each forward; a rank with one forward fewer would hang the others), and `gather` collects the
per-item results on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist

LogitsFn = Callable[[torch.Tensor, "int | torch.Tensor"], torch.Tensor]
"""(input_ids [B, n] int64, keep) -> logits [B, k, V]. keep: an int k (the last k positions) or a
1-D int64 tensor of positions (the same for every row). Position ids are 0..n-1 in every row and
attention is causal, so right-padding a row never changes its logits at real positions."""


def hf_logits_fn(model: torch.nn.Module) -> LogitsFn:
    """A `LogitsFn` over a Hugging Face causal LM (no KV cache, default position ids)."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def logits_fn(input_ids: torch.Tensor, keep: int | torch.Tensor) -> torch.Tensor:
        k = keep.to(device) if isinstance(keep, torch.Tensor) else int(keep)
        try:
            out = model(input_ids=input_ids.to(device), use_cache=False, logits_to_keep=k)
            return out.logits
        except TypeError:  # an older model class without logits_to_keep: project everything, then slice
            logits = model(input_ids=input_ids.to(device), use_cache=False).logits
            return logits[:, -k:] if isinstance(k, int) else logits[:, k]

    return logits_fn


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(n_items: int, rank: int, world: int) -> list[int | None]:
    """This rank's items: rank, rank + world, ...; every rank gets ceil(n / world) slots, and slots
    past the end are None (the caller runs a dummy item there and drops its result)."""
    per_rank = math.ceil(n_items / world) if n_items else 0
    return [i if i < n_items else None for i in (rank + k * world for k in range(per_rank))]


def gather(local: dict[int, object], world: int) -> dict[int, object]:
    """Union of every rank's {item index: result} (identity in one process)."""
    if world == 1:
        return dict(local)
    parts: list[dict] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(parts, local)
    merged: dict[int, object] = {}
    for part in parts:
        merged.update(part)
    return merged


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position, in fp32: logits [..., V], targets [...] -> [...]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1).to(logp.device)).squeeze(-1)
