"""Data pipeline: sources -> tokenizer -> token shards -> windows. A window becomes the model's
inputs (the long and short views) in `lsa_ds.align.views`."""

from __future__ import annotations

from lsa_ds.data.shards import TokenCache, open_cache, prepare
from lsa_ds.data.windows import BlendedWindows, SourceWindows, WindowLoader
from lsa_ds.errors import UserError
from lsa_ds.recipe import Recipe

__all__ = ["BlendedWindows", "SourceWindows", "TokenCache", "WindowLoader", "build_windows", "open_cache", "prepare"]


def build_windows(recipe: Recipe, cache: TokenCache, split: str = "train", window: int | None = None) -> BlendedWindows:
    """The recipe's window sequence over `split`: blended and shuffled for training; for
    evaluation, every source with held-out documents in a fixed order. `window` defaults to the
    recipe's L + E_max + 1."""
    data, train = recipe.data, split == "train"
    sources, weights = [], []
    for i, src in enumerate(data.sources):
        store = cache.store(src.name, split)
        if not train and store.num_docs == 0:
            continue  # a source without held-out documents simply has no eval windows
        sources.append(SourceWindows(
            store, window or recipe.window_tokens, seed=recipe.train.seed + 7919 * i, name=f"{src.name}/{split}",
            min_doc_tokens=data.min_doc_tokens, long_doc_tokens=data.long_doc_tokens if train else None,
            long_doc_repeat=data.long_doc_repeat if train else 1, shuffle_docs=train))
        weights.append(src.weight)
    if not sources:
        raise UserError("no source has held-out documents for evaluation; set `holdout` on a source in data.sources")
    return BlendedWindows(sources, weights, seed=recipe.train.seed, shuffle=train)
