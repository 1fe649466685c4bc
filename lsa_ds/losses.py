"""Losses computed chunk by chunk from hidden states: no [N, T, V] logits tensor ever exists.

Pure functions (no DeepSpeed): they take hidden states and a `project` callable (hidden -> logits;
the engine passes the model's output layer as a *module call* so ZeRO-3's hooks gather its sharded
weight). Each chunk's logits are recomputed in backward (`torch.utils.checkpoint`), so peak memory
holds one chunk of logits, and the whole loss stays one autograd graph (one backward per micro-step,
which ZeRO-3's gradient hooks require). Results are (sum, count) pairs: the caller normalises by the
token count of the whole optimizer step across micro-batches and ranks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100
Project = Callable[[torch.Tensor], torch.Tensor]


def _ce_chunk(h: torch.Tensor, y: torch.Tensor, project: Project) -> torch.Tensor:
    logits = project(h).float()  # fp32 softmax whatever the training precision
    return F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum")


def chunked_ce(hidden: torch.Tensor, labels: torch.Tensor, project: Project, chunk_tokens: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token CE over positions whose label is not IGNORE, and their count.

    hidden: [N, T, H]; labels: [N, T] (the target of each position, already shifted).
    """
    if hidden.shape[:2] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)}: expected [N, T, H] and [N, T]")
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    total = hidden.new_zeros((), dtype=torch.float32)
    for lo in range(0, h.shape[0], chunk_tokens):
        hc, yc = h[lo:lo + chunk_tokens], y[lo:lo + chunk_tokens]
        if torch.is_grad_enabled() and hc.requires_grad:
            total = total + checkpoint(_ce_chunk, hc, yc, project, use_reentrant=False)
        else:
            total = total + _ce_chunk(hc, yc, project)
    return total, (y != IGNORE).sum()
