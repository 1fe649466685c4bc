"""The cheap evaluation the trainer runs every N steps: perplexity at 1× and 2× the training
length and the last-position misalignment, on the run's held-out windows.

Call it on every rank (work is split across ranks, results are the same everywhere), with a
`LogitsFn` over the model being trained, e.g. under ZeRO-3:

    from lsa_ds.eval import hf_logits_fn
    from lsa_ds.eval.training import cheap_eval
    engine.ds.eval()
    row = cheap_eval(hf_logits_fn(engine.module.hf), recipe, cache)
    log.write({"kind": "eval", "step": step, **row})
"""

from __future__ import annotations

from lsa_ds.config import Recipe
from lsa_ds.eval.forward import LogitsFn
from lsa_ds.eval.heldout import cache_windows
from lsa_ds.eval.misalignment import measure_misalignment
from lsa_ds.eval.perplexity import perplexity_at


def cheap_eval(logits_fn: LogitsFn, recipe: Recipe, cache, *, lengths: list[int] | None = None, windows: int = 8,
               samples: int = 32, seed: int = 0, score_tokens: int | None = None,
               batch_tokens: int = 8192) -> dict[str, float]:
    """A flat metrics row: `ppl@N` and `nll@N` per length (default L and 2L, scored on the same
    final score_tokens = L/2 tokens of `windows` held-out windows), and `misalign_sce` /
    `misalign_skl` (last-position variant, `samples` samples, with `_lo`/`_hi` 95% bounds).
    `cache` is the run's open TokenCache."""
    L = recipe.train.seq_len
    lengths = sorted(lengths or [L, 2 * L])
    row: dict[str, float] = {}
    ppl_windows = cache_windows(recipe, cache, max(lengths) + 1, windows)
    for n, r in perplexity_at(logits_fn, ppl_windows, lengths, score_tokens, batch_tokens=batch_tokens).items():
        row[f"ppl@{n}"], row[f"nll@{n}"] = r.ppl, r.nll.mean
    mis = measure_misalignment(logits_fn, cache_windows(recipe, cache, L, samples), L, "last", samples, seed,
                               batch_tokens=batch_tokens)
    for key, stat in (("sce", mis.sce), ("skl", mis.skl)):
        row[f"misalign_{key}"], row[f"misalign_{key}_lo"], row[f"misalign_{key}_hi"] = stat.mean, stat.lo, stat.hi
    return row
