"""Held-out token windows for perplexity and misalignment.

Two ways to get them, both from documents that training never saw (the sources' eval split):

- a run's own token cache (`open_cache(recipe.data)`, the windows `build_windows(..., "eval")`
  gives, which is what the trainer's evaluation reads), when the model is a run and no --data is
  given;
- otherwise the held-out documents of a recipe's sources (default: the builtin stdlib corpus)
  tokenized in memory with the *model's own* tokenizer, framed BOS ... EOS and laid end to end.

Either way the stream is cut into consecutive windows and `count` of them are taken evenly spaced
over the whole held-out set (the first windows alone would all come from a few documents).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from lsa_ds.config import DataConfig, Recipe
from lsa_ds.data.tokenizer import Tokenizer
from lsa_ds.errors import UserError


def spread(available: int, count: int) -> np.ndarray:
    """`count` indices (or all, if fewer are available) evenly spaced over range(available)."""
    if available <= count:
        return np.arange(available)
    return np.unique(np.linspace(0, available - 1, count).round().astype(np.int64))


def cache_windows(recipe: Recipe, cache, window: int, count: int) -> np.ndarray:
    """[<= count, window] windows of the eval split of an open token cache (what the trainer has)."""
    from lsa_ds.data import build_windows

    blended = build_windows(recipe, cache, "eval", window=window)
    # Without shuffling the blend interleaves sources by weight; stay below the index where the
    # smallest source (relative to its share) would wrap around and repeat its windows.
    available = int(min(s.num_windows / w for s, w in zip(blended.sources, blended.weights)))
    return np.stack([blended[int(i)] for i in spread(max(1, available), count)])


def open_run_cache(recipe: Recipe, run_dir: Path):
    """The run's token cache, or a UserError saying how to prepare it."""
    from lsa_ds.data import open_cache

    try:
        return open_cache(recipe.data)
    except UserError as e:
        why = str(e).split("; run `lsa prepare")[0]
        raise UserError(f"{run_dir}: held-out data not available ({why}); "
                        f"run `lsa prepare {run_dir / 'config.yaml'}` first") from None


def run_windows(recipe: Recipe, run_dir: Path, window: int, count: int, cache=None) -> np.ndarray:
    """[<= count, window] windows from a run's prepared token cache (opened here unless given)."""
    cache = cache or open_run_cache(recipe, run_dir)
    try:
        return cache_windows(recipe, cache, window, count)
    except UserError as e:
        raise UserError(f"{run_dir}: {e} (held-out windows of {window} tokens; use shorter --lengths)") from None


def text_windows(data: DataConfig, tok: Tokenizer, window: int, count: int, batch_docs: int = 64) -> np.ndarray:
    """[<= count, window] windows from the held-out documents of `data`'s sources, tokenized with
    `tok`. Tokenizing stops once the stream holds 4 × count windows (enough to spread over)."""
    from lsa_ds.data.sources import iter_records

    need = 4 * count * window
    pieces: list[np.ndarray] = []
    total = 0
    for src in data.sources:
        batch: list[str] = []
        for split, rec in iter_records(src):
            if split != "eval" or rec.text is None:
                continue
            batch.append(rec.text)
            if len(batch) >= batch_docs:
                pieces += [np.asarray(ids, dtype=np.int64) for ids in tok.encode_documents(batch)]
                total += sum(len(p) for p in pieces[-len(batch):])
                batch = []
                if total >= need:
                    break
        if batch and total < need:
            pieces += [np.asarray(ids, dtype=np.int64) for ids in tok.encode_documents(batch)]
            total += sum(len(p) for p in pieces[-len(batch):])
        if total >= need:
            break
    if total == 0:
        names = ", ".join(s.name for s in data.sources)
        raise UserError(f"sources {names} have no held-out documents; set `holdout` on a source in the --data recipe")
    stream = np.concatenate(pieces)
    available = len(stream) // window
    if available == 0:
        raise UserError(f"held-out text has {len(stream)} tokens, fewer than one window of {window}; "
                        "use shorter --lengths")
    idx = spread(available, count)
    return np.stack([stream[i * window:(i + 1) * window] for i in idx])


class HeldOut:
    """Windows for one target, cached by (data, tokenizer, window, count): compared models that
    share a tokenizer and data read exactly the same windows, computed once."""

    def __init__(self, data_override: DataConfig | None):
        self.data_override = data_override
        self._cache: dict[tuple, np.ndarray] = {}
        self._token_caches: dict[str, object] = {}  # opening one fingerprints every source file

    def _token_cache(self, target):
        key = target.recipe.data.model_dump_json()
        if key not in self._token_caches:
            self._token_caches[key] = open_run_cache(target.recipe, target.run_dir)
        cache = self._token_caches[key]
        spm_file = target.hf_dir / "tokenizer.model"
        if cache.tokenizer.kind == "sentencepiece" and spm_file.is_file():
            if hashlib.sha256(spm_file.read_bytes()).hexdigest()[:16] != cache.tokenizer.fingerprint:
                raise UserError(f"{target.run_dir}: hf/tokenizer.model is not the tokenizer of the run's token cache "
                                f"({cache.tokenizer.path}); held-out tokens would be read with the wrong vocabulary")
        return cache

    def check(self, target) -> None:
        """Fail early (before any model is loaded) when a run's token cache is missing."""
        if target.recipe is not None and self.data_override is None:
            self._token_cache(target)

    def windows(self, target, window: int, count: int) -> np.ndarray:
        use_run = target.recipe is not None and self.data_override is None
        data = target.recipe.data if use_run else (self.data_override or DataConfig())
        # a run's windows depend on its cache only (its own tokenizer was checked against it)
        key = (data.model_dump_json(), "cache" if use_run else target.tokenizer.fingerprint, window, count)
        if key not in self._cache:
            if use_run:
                self._cache[key] = run_windows(target.recipe, target.run_dir, window, count, self._token_cache(target))
            else:
                self._cache[key] = text_windows(data, target.tokenizer, window, count)
        return self._cache[key]

    def source(self, target) -> str:
        """Where a target's held-out text comes from, for the report."""
        if target.recipe is not None and self.data_override is None:
            return "the run's token cache (eval split of its recipe's sources)"
        data = self.data_override or DataConfig()
        names = ", ".join(f"{s.name} ({s.type})" for s in data.sources)
        return f"eval split of {names}, tokenized with the model's tokenizer"
