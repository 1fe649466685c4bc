"""The evaluation a run makes while it trains (every `eval.every_steps` and at the end).

Held-out loss at each length exactly as `lsa eval` measures it (the same windows, spread over the
eval split, and the same final K = min(lengths)/2 tokens scored at every length; so `loss@N` of
the last row is the `nll@N` that `lsa eval RUN --windows eval.windows` reports), each source's
held-out text apart when there are several, and the long-short misalignment of held-out windows
with fixed shifts for every arm (the baseline included: the pairs cost one more forward of both
views, without gradient).
"""

from __future__ import annotations

import math

import numpy as np

from lsa_ds.align.views import both_views
from lsa_ds.data import build_windows
from lsa_ds.eval.forward import hf_logits_fn
from lsa_ds.eval.heldout import cache_windows
from lsa_ds.eval.perplexity import perplexity_at
from lsa_ds.recipe import Recipe

EVAL_SHIFT_KEY = 1 << 40
"""Held-out windows draw their shifts from sample keys offset by this, apart from training samples:
the same shifts at every evaluation and in every arm (windows hold L + shift_max + 1 tokens either way)."""


def eval_lengths(recipe: Recipe) -> list[int]:
    """Context lengths of the in-training evaluation: eval.lengths, or L and 2L."""
    return sorted(recipe.eval.lengths or [recipe.train.seq_len, 2 * recipe.train.seq_len])


def evaluate(engine, recipe: Recipe, cache, lengths: list[int], rank: int, world: int) -> dict:
    """One eval row (without `kind`/`step`): `loss@N`, `ppl@N`, `loss@N/<source>`, and the held-out
    misalignment `misalign_sce`, `misalign_skl`, `ce_gap`, `misalign_entropy`. Collective."""
    out = {}
    engine.ds.eval()
    logits_fn = hf_logits_fn(engine.module.hf)
    heldout = cache_windows(recipe, cache, max(lengths) + 1, recipe.eval.windows)
    for n, r in perplexity_at(logits_fn, heldout, lengths).items():
        out[f"loss@{n}"], out[f"ppl@{n}"] = r.nll.mean, r.ppl
    if len(recipe.data.sources) > 1:  # and each source's held-out text apart (natural text, a mixture)
        for name, source_recipe in per_source(recipe, cache):
            windows = cache_windows(source_recipe, cache, max(lengths) + 1, recipe.eval.windows)
            out.update({f"loss@{n}/{name}": r.nll.mean for n, r in perplexity_at(logits_fn, windows, lengths).items()})
    out.update(heldout_misalignment(engine, recipe, cache, rank, world))
    return out


def heldout_misalignment(engine, recipe: Recipe, cache, rank: int, world: int) -> dict:
    """SCE, symmetric KL, CE gap and prediction entropy per aligned pair of `eval.windows` held-out
    windows, split across ranks in micro-batches."""
    mbs = recipe.train.micro_batch_size
    mine = [rank + k * world for k in range(math.ceil(recipe.eval.windows / world))]
    batches = [mine[i:i + mbs] for i in range(0, len(mine), mbs)]
    windows = build_windows(recipe, cache, "eval")
    sums = engine.eval_sums([both_views(recipe, [EVAL_SHIFT_KEY + i for i in batch], np.stack([windows[i] for i in batch]))
                             for batch in batches])
    pairs = max(sums["pair_count"], 1.0)
    out = {"misalign_sce": sums["sce_sum"] / pairs, "misalign_skl": sums["skl_sum"] / pairs,
           "ce_gap": sums["gap_sum"] / pairs}
    # SCE = H(long) + H(short) + symmetric KL at every position, so the mean entropy of the two
    # views' predictions is exact from the two sums: "SCE fell because entropy fell" is visible.
    out["misalign_entropy"] = (out["misalign_sce"] - out["misalign_skl"]) / 2
    return out


def per_source(recipe: Recipe, cache) -> list[tuple[str, Recipe]]:
    """(source name, the recipe restricted to that source) for each source with held-out documents."""
    out = []
    for src in recipe.data.sources:
        if cache.store(src.name, "eval").num_docs:
            source_recipe = recipe.model_copy(deep=True)
            source_recipe.data.sources = [src]
            out.append((src.name, source_recipe))
    return out
