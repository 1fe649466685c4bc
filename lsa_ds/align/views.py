"""Views: windows -> the model's inputs for one micro-step (docs/design.md, "The method"). Pure
numpy, no torch.

A window `w` holds `L + E_max + 1` tokens. The long view is `w[0:L]`, the short view `w[E:E+L]`,
both with positions 0..L-1, stacked as rows `[A; S]` so one forward covers both. Position `i` of a
view predicts the window's next token. Aligned pairs are kept in short-view coordinates: short
position `j` and long position `j + E` predict the same token, with contexts `j + 1` and `j + 1 + E`.
Shapes never depend on E (pairs are a mask), so every rank runs the same chunk schedule.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: the view functions read a recipe's fields, nothing more
    from lsa_ds.recipe import Recipe

IGNORE = -100
"""The label of a position without a target (what torch's cross-entropy ignores by default)."""


def draw_shifts(sample_ids: list[int], seed: int, shift_min: int, shift_max: int) -> np.ndarray:
    """E for each sample, from an RNG keyed by (seed, global sample index): reproducible, the same
    on any number of ranks, and restored on resume with the sample cursor alone."""
    return np.array([np.random.default_rng([seed, 0x5A1F7, i]).integers(shift_min, shift_max + 1)
                     for i in sample_ids], dtype=np.int64)


def pair_mask(shifts: np.ndarray, seq_len: int, positions: str = "overlap", min_ratio: float = 0.5) -> np.ndarray:
    """[B, L] bool: short position j is paired with long position j + E.

    overlap: every j in [0, L-1-E]; last: only j = L-1-E (the long view's last token);
    ratio: short context j + 1 >= ceil(min_ratio * L).
    """
    j = np.arange(seq_len)[None, :]
    e = np.asarray(shifts)[:, None]
    mask = j <= seq_len - 1 - e
    if positions == "last":
        mask &= j == seq_len - 1 - e
    elif positions == "ratio":
        mask &= j + 1 >= math.ceil(min_ratio * seq_len)
    elif positions != "overlap":
        raise ValueError(f"positions={positions!r}: expected overlap, last or ratio")
    return mask


def make_views(windows: np.ndarray, seq_len: int, shifts: np.ndarray | None = None, *,
               positions: str = "overlap", min_ratio: float = 0.5, ce_views: str = "both") -> dict[str, np.ndarray]:
    """Model inputs for a micro-batch of windows [B, >= L + max(E) + 1].

    Without shifts (alignment off, the baseline): the long view only, rows [B].
    With shifts: rows [2B] = long views then short views, plus `pair_mask` [B, L] and `shifts` [B].
    """
    windows = np.asarray(windows, dtype=np.int64)
    B, W = windows.shape
    pos = np.broadcast_to(np.arange(seq_len, dtype=np.int64), (B, seq_len))
    long_in, long_lab = windows[:, :seq_len], windows[:, 1:seq_len + 1]
    if shifts is None:
        if W < seq_len + 1:
            raise ValueError(f"windows of {W} tokens are too short for L={seq_len} (need L + 1)")
        return {"input_ids": long_in.copy(), "labels": long_lab.copy(), "position_ids": pos.copy()}
    shifts = np.asarray(shifts, dtype=np.int64)
    if shifts.shape != (B,) or shifts.min() < 1 or shifts.max() > seq_len - 1 or W < seq_len + shifts.max() + 1:
        raise ValueError(f"shifts {shifts.tolist()} must be in [1, L-1={seq_len - 1}] with windows of at least "
                         f"L + E + 1 tokens (got {W})")
    idx = shifts[:, None] + np.arange(seq_len)[None, :]
    short_in = np.take_along_axis(windows, idx, axis=1)
    short_lab = np.take_along_axis(windows, idx + 1, axis=1)
    if ce_views == "long":
        short_lab = np.full_like(short_lab, IGNORE)
    elif ce_views != "both":
        raise ValueError(f"ce_views={ce_views!r}: expected both or long")
    return {
        "input_ids": np.concatenate([long_in, short_in]),
        "labels": np.concatenate([long_lab, short_lab]),
        "position_ids": np.concatenate([pos, pos]),
        "pair_mask": pair_mask(shifts, seq_len, positions, min_ratio),
        "shifts": shifts,
    }


# ------------------------------------------------------------------- a recipe's views
def both_views(recipe: Recipe, ids: list[int], windows: np.ndarray, ce_views: str = "both") -> dict:
    """Both views of `windows` with the recipe's shift range and pair positions: a training
    micro-batch with alignment on, and every arm's held-out misalignment (the baseline measured
    the same way). `ids` are the windows' global sample indices, which key their shifts."""
    L, align = recipe.train.seq_len, recipe.align
    shifts = draw_shifts(ids, recipe.train.seed, align.shift_min, recipe.shift_max)
    return make_views(windows, L, shifts, positions=align.positions, min_ratio=align.min_ratio, ce_views=ce_views)


def micro_views(recipe: Recipe, ids: list[int], windows: np.ndarray) -> dict:
    """Model inputs for one training micro-batch: the long view only (`align.enabled: false`, the
    baseline) or long + short views."""
    if not recipe.align.enabled:
        return make_views(windows, recipe.train.seq_len)
    return both_views(recipe, ids, windows, recipe.align.ce_views)
