"""The long-short misalignment metric (docs/design.md, "The misalignment metric") for any causal LM.

Two variants, both over held-out windows of L tokens (L = the model's training length), one
window per sample, with lengths drawn from an RNG keyed by (seed, sample index):

- last: two different suffix lengths l1 != l2 in [ceil(L/2), L] (uniform) ending at the same
  token w[L-1]; the divergence between the next-token distributions at that last position. The
  paper's metric.
- overlap: the long context w[0:L] and a left-truncated one w[E:L], E ~ U[1, L//2]; the
  divergence averaged over every position the two share (long position t <-> short t - E), as the
  training regularizer sees it.

Per sample one number; reported: the mean over samples with a 95% normal interval. Both SCE
(CE(p,q) + CE(q,p), the paper's, which includes both entropies: identical distributions give
2 × entropy) and symmetric KL (KL(p||q) + KL(q||p), 0 for identical distributions) are computed,
in fp32. Inputs of different lengths share a forward by right-padding (causal attention: padding
after a position never changes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from lsa_ds.eval.forward import LogitsFn, gather, rank_world, shard
from lsa_ds.eval.stats import MeanCI, mean_ci

Variant = Literal["last", "overlap"]
VARIANTS: tuple[str, ...] = ("last", "overlap")
_LOG_FLOOR = -1e4  # log-probs of exactly-zero probabilities (masked vocab): finite, so 0 * log 0 = 0
_PAIR_CHUNK = 512  # aligned pairs per divergence call in the overlap variant


@dataclass(frozen=True)
class Misalignment:
    """The metric for one model and variant."""

    variant: str
    seq_len: int
    """L: contexts are drawn from [L/2, L] (last) or truncated by E in [1, L/2] (overlap)."""
    sce: MeanCI
    skl: MeanCI
    seed: int
    per_sample: tuple[tuple[float, float], ...] = ()
    """(SCE, symmetric KL) of each sample in order: what paired comparisons between models use."""

    @property
    def entropy(self) -> MeanCI:
        """Mean entropy of the two views' predictions: SCE = H(p) + H(q) + symmetric KL exactly,
        so (SCE - SKL) / 2 per sample. Shows whether SCE moved by sharpening, not aligning."""
        return nonnegative_ci([(s - k) / 2 for s, k in self.per_sample])

    def to_dict(self) -> dict:
        return {"variant": self.variant, "seq_len": self.seq_len, "samples": self.sce.n, "seed": self.seed,
                "interval": "95% normal approximation over samples",
                "sce": self.sce.to_dict(), "skl": self.skl.to_dict(), "entropy": self.entropy.to_dict(),
                "per_sample": {"sce": [v[0] for v in self.per_sample], "skl": [v[1] for v in self.per_sample]}}


def nonnegative_ci(values) -> MeanCI:
    """`mean_ci` of a quantity that cannot be negative (SCE, symmetric KL, entropy): the normal
    interval's lower end is cut at 0, where it would otherwise claim values the quantity never has."""
    ci = mean_ci(values)
    return replace(ci, lo=max(0.0, ci.lo))


def divergences(logits_p: torch.Tensor, logits_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(SCE, symmetric KL) between the distributions of two logit tensors [..., V] -> [...], fp32."""
    lp = torch.log_softmax(logits_p.float(), -1).clamp_min(_LOG_FLOOR)
    lq = torch.log_softmax(logits_q.float(), -1).clamp_min(_LOG_FLOOR)
    p, q = lp.exp(), lq.exp()
    sce = -(p * lq).sum(-1) - (q * lp).sum(-1)
    skl = ((p - q) * (lp - lq)).sum(-1)  # = KL(p||q) + KL(q||p), without cancelling entropies
    return sce, skl


def draw_last_lengths(seed: int, sample: int, seq_len: int) -> tuple[int, int]:
    """(l1, l2), two *different* lengths in [ceil(L/2), L], uniform over the ordered pairs, for one
    sample of the last-position variant. (Drawn independently they tie with probability
    1 / (L/2 + 1), and a tie compares a distribution with itself: SKL 0, SCE 2 × entropy.)"""
    rng = np.random.default_rng([seed, 0x1A57, sample])
    lo = max(1, math.ceil(seq_len / 2))
    if seq_len - lo < 1:
        raise ValueError(f"seq_len={seq_len}: the last variant needs two different lengths in [L/2, L] (L >= 2)")
    l1 = int(rng.integers(lo, seq_len + 1))
    l2 = int(rng.integers(lo, seq_len))  # one of the other L - lo values: skip over l1
    return l1, l2 + (l2 >= l1)


def draw_overlap_shift(seed: int, sample: int, seq_len: int) -> int:
    """E ~ U[1, L//2] for one sample of the overlap variant."""
    rng = np.random.default_rng([seed, 0x0E1A, sample])
    return int(rng.integers(1, max(1, seq_len // 2) + 1))


def _right_padded(seqs: list[np.ndarray]) -> torch.Tensor:
    n = max(len(s) for s in seqs)
    out = torch.zeros(len(seqs), n, dtype=torch.int64)  # id 0 as padding: never read by real positions
    for r, s in enumerate(seqs):
        out[r, :len(s)] = torch.as_tensor(s, dtype=torch.int64)
    return out


def last_position_logits(logits_fn: LogitsFn, seqs: list[np.ndarray]) -> torch.Tensor:
    """Logits at the last token of each sequence [R, V], one right-padded forward."""
    ends = [len(s) - 1 for s in seqs]
    keep = sorted(set(ends))
    logits = logits_fn(_right_padded(seqs), torch.tensor(keep, dtype=torch.int64))
    col = torch.tensor([keep.index(e) for e in ends], device=logits.device)
    return logits[torch.arange(len(seqs), device=logits.device), col]


def _last_batch(logits_fn: LogitsFn, windows: list[np.ndarray], samples: list[int], L: int, seed: int):
    seqs = []
    for w, i in zip(windows, samples):
        l1, l2 = draw_last_lengths(seed, i, L)
        seqs += [w[L - l1:L], w[L - l2:L]]
    z = last_position_logits(logits_fn, seqs)
    return divergences(z[0::2], z[1::2])


def _overlap_batch(logits_fn: LogitsFn, windows: list[np.ndarray], samples: list[int], L: int, seed: int):
    shifts = [draw_overlap_shift(seed, i, L) for i in samples]
    seqs = []
    for w, e in zip(windows, shifts):
        seqs += [w[:L], w[e:L]]
    z = logits_fn(_right_padded(seqs), L)  # [2B, L, V]
    sce, skl = [], []
    for b, e in enumerate(shifts):
        s_sum = k_sum = 0.0
        # long position t <-> short position t - E for t in [E, L-1], in chunks: the fp32
        # temporaries of `divergences` stay at [_PAIR_CHUNK, V] whatever L is
        for t0 in range(e, L, _PAIR_CHUNK):
            t1 = min(L, t0 + _PAIR_CHUNK)
            s, k = divergences(z[2 * b, t0:t1], z[2 * b + 1, t0 - e:t1 - e])
            s_sum, k_sum = s_sum + s.double().sum(), k_sum + k.double().sum()
        sce.append(s_sum / (L - e))
        skl.append(k_sum / (L - e))
    return torch.stack(sce), torch.stack(skl)


def measure_misalignment(logits_fn: LogitsFn, windows: np.ndarray, seq_len: int, variant: Variant = "last",
                         samples: int = 64, seed: int = 0, *, batch_tokens: int = 8192, progress: bool = False,
                         desc: str = "misalignment") -> Misalignment:
    """Long-short misalignment of a model: mean SCE and symmetric KL with 95% intervals.

    logits_fn: see `lsa_ds.eval.forward.LogitsFn`. windows: [N, >= L] held-out token ids; sample i
    uses window i mod N (its first L tokens). seq_len: L. batch_tokens bounds the tokens per forward
    (each sample is two sequences of at most L tokens). Under torch.distributed every rank calls
    this with the same arguments; samples are split across ranks and all get the full result.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: expected one of {VARIANTS}")
    windows = np.asarray(windows)
    L = seq_len
    if L < 2 or windows.ndim != 2 or windows.shape[1] < L or len(windows) == 0:
        raise ValueError(f"need windows [N >= 1, >= L={L}] with L >= 2, got {windows.shape}")
    run_batch = _last_batch if variant == "last" else _overlap_batch
    per_batch = max(1, batch_tokens // (2 * L))
    rank, world = rank_world()
    mine = shard(samples, rank, world)
    bar = None
    if progress and rank == 0:
        bar = tqdm(total=len(mine), desc=desc, unit="sample", leave=False, dynamic_ncols=True, disable=None)
    local: dict[int, tuple[float, float]] = {}
    try:
        for start in range(0, len(mine), per_batch):
            ids = mine[start:start + per_batch]
            idx = [0 if i is None else i for i in ids]
            sce, skl = run_batch(logits_fn, [windows[i % len(windows)] for i in idx], idx, L, seed)
            for i, s, k in zip(ids, sce.tolist(), skl.tolist()):
                if i is not None:
                    local[i] = (s, k)
            if bar is not None:
                bar.update(len(ids))
    finally:
        if bar is not None:
            bar.close()
    per_sample = gather(local, world)
    values = [per_sample[i] for i in sorted(per_sample)]
    return Misalignment(variant, L, nonnegative_ci([v[0] for v in values]), nonnegative_ci([v[1] for v in values]), seed,
                        tuple(values))
