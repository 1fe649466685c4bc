"""Perplexity versus context length, scored on the same target tokens at every length.

Each held-out window holds W >= max(lengths) + 1 tokens. Its *targets* are its final K tokens
(K = `score_tokens`). At context length n the model reads the n tokens that end just before the
last target, w[W-1-n : W-1], and its last K positions predict exactly those targets, so every
length scores the same tokens and the numbers are comparable: only the amount of left context
changes (the last target sees n tokens, the first one n - K + 1). Positions restart at 0 for every
length, as for any input of n tokens.

Per window: mean NLL over its K targets. Per length: the mean over windows with a 95% normal
interval (windows are the independent units, tokens within a window are not); perplexity is
exp(mean NLL) and its interval is exp of the NLL interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from lsa_ds.eval.forward import LogitsFn, gather, rank_world, shard, token_log_probs
from lsa_ds.eval.stats import MeanCI, mean_ci


@dataclass(frozen=True)
class LengthPerplexity:
    """Held-out perplexity at one context length."""

    length: int
    """Context length n (tokens the model reads)."""
    nll: MeanCI
    """Mean next-token NLL (nats) over windows, with its 95% interval."""
    score_tokens: int
    """Targets scored per window (the same tokens at every length)."""
    per_window: tuple[float, ...] = ()
    """Each window's mean NLL, in window order: what paired comparisons between models use."""

    @property
    def ppl(self) -> float:
        return math.exp(self.nll.mean)

    @property
    def ppl_ci(self) -> tuple[float, float]:
        return math.exp(self.nll.lo), math.exp(self.nll.hi)

    def to_dict(self) -> dict:
        return {"length": self.length, "nll": self.nll.mean, "nll_ci": [self.nll.lo, self.nll.hi],
                "ppl": self.ppl, "ppl_ci": list(self.ppl_ci), "windows": self.nll.n,
                "score_tokens": self.score_tokens, "tokens": self.nll.n * self.score_tokens,
                "per_window": list(self.per_window)}


def default_score_tokens(lengths: list[int]) -> int:
    """K = half the shortest length (at least 1): every target keeps at least half its context."""
    return max(1, min(lengths) // 2)


def check_lengths(lengths: list[int], window: int, score_tokens: int) -> None:
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths {lengths} must be positive")
    if window < max(lengths) + 1:
        raise ValueError(f"windows of {window} tokens are too short for length {max(lengths)} (need length + 1)")
    if not 1 <= score_tokens <= min(lengths):
        raise ValueError(f"score_tokens={score_tokens} must be in [1, shortest length {min(lengths)}]")


def window_nll(logits_fn: LogitsFn, windows: np.ndarray, length: int, score_tokens: int) -> np.ndarray:
    """Mean NLL over the final `score_tokens` targets of each window, with `length` tokens of
    context for the last one. windows: [B, W] -> [B] (float64)."""
    w = torch.as_tensor(np.asarray(windows, dtype=np.int64))
    W, K = w.shape[1], score_tokens
    inputs = w[:, W - 1 - length: W - 1]
    targets = w[:, W - K:]
    logits = logits_fn(inputs, K)
    return (-token_log_probs(logits, targets)).mean(-1).double().cpu().numpy()


def perplexity_at(logits_fn: LogitsFn, windows: np.ndarray, lengths: list[int], score_tokens: int | None = None,
                  *, batch_tokens: int = 8192, progress: bool = False, desc: str = "perplexity",
                  ) -> dict[int, LengthPerplexity]:
    """Held-out perplexity of a model at each context length, on the same final tokens.

    logits_fn: see `lsa_ds.eval.forward.LogitsFn`. windows: [N, W] token ids with
    W >= max(lengths) + 1. score_tokens: targets per window (default half the shortest length).
    batch_tokens: input tokens per forward (rows per batch = batch_tokens // length, at least 1).
    Under torch.distributed every rank must call this with the same windows; each scores its share
    and all get the full result.
    """
    windows = np.asarray(windows)
    K = score_tokens or default_score_tokens(lengths)
    check_lengths(lengths, windows.shape[1], K)
    rank, world = rank_world()
    mine = shard(len(windows), rank, world)
    bar = None
    if progress and rank == 0:
        total = sum(math.ceil(len(mine) / max(1, batch_tokens // n)) for n in lengths)
        bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=None)
    out = {}
    try:
        for n in sorted(lengths):
            rows = max(1, batch_tokens // n)
            local: dict[int, float] = {}
            for start in range(0, len(mine), rows):
                ids = mine[start:start + rows]
                batch = windows[[0 if i is None else i for i in ids]]
                nll = window_nll(logits_fn, batch, n, K)
                local.update({i: float(v) for i, v in zip(ids, nll) if i is not None})
                if bar is not None:
                    bar.update(1)
            per_window = gather(local, world)
            values = [per_window[i] for i in sorted(per_window)]
            out[n] = LengthPerplexity(n, mean_ci(values), K, tuple(values))
    finally:
        if bar is not None:
            bar.close()
    return out
