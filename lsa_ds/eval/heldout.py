"""Held-out token windows for perplexity and misalignment.

Two ways to get them, both from documents that training never saw (the sources' eval split):

- a run's own token cache (`open_cache(recipe.data)`, the windows `build_windows(..., "eval")`
  gives, which is what the trainer's evaluation reads), when the model is a run and no --data is
  given;
- otherwise the held-out documents of a recipe's sources (default: the builtin stdlib corpus)
  tokenized in memory with the *model's own* tokenizer, framed BOS ... EOS and laid end to end.

Either way the same code cuts, blends and spreads the windows: each source's held-out documents in
order, end to end, cut into consecutive windows, sources interleaved by weight, and `count` windows
taken evenly spaced over the whole held-out set (the first windows alone would all come from a few
documents). So a run, its `hf/` export and a copy of that folder elsewhere are scored on the same
windows (the export records its recipe's data in `lsa_data.json`, and its SentencePiece model
tokenizes exactly as the run's cache did).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lsa_ds.data import build_windows, open_cache
from lsa_ds.data.repeats import repeat_spans
from lsa_ds.data.sources import iter_records
from lsa_ds.data.tokenizer import Tokenizer
from lsa_ds.data.windows import BlendedWindows, SourceWindows
from lsa_ds.errors import UserError
from lsa_ds.eval.data_choice import DataChoice
from lsa_ds.recipe import Recipe
from lsa_ds.recipe.schema import DataConfig, SourceConfig


def spread(available: int, count: int) -> np.ndarray:
    """`count` indices (or all, if fewer are available) evenly spaced over range(available)."""
    if available <= count:
        return np.arange(available)
    return np.unique(np.linspace(0, available - 1, count).round().astype(np.int64))


MAX_EVAL_TOKENS = 4_000_000
"""Held-out tokens per source that windows are spread over (the first ones, in document order):
enough for any count of windows asked here, and a bound on tokenizing a large eval split in memory."""


def _spread(blended, count: int) -> np.ndarray:
    """`count` windows spread evenly over the blended eval windows. Without shuffling the blend
    interleaves sources by weight; stay below the index where the smallest source (relative to its
    share, within MAX_EVAL_TOKENS) would wrap around and repeat its windows."""
    available = int(min(min(s.num_windows, MAX_EVAL_TOKENS // s.window) / w
                        for s, w in zip(blended.sources, blended.weights)))
    return np.stack([blended[int(i)] for i in spread(max(1, available), count)])


def cache_windows(recipe: Recipe, cache, window: int, count: int) -> np.ndarray:
    """[<= count, window] windows of the eval split of an open token cache (what the trainer has)."""

    return _spread(build_windows(recipe, cache, "eval", window=window), count)


def open_run_cache(recipe: Recipe, run_dir: Path):
    """The run's token cache, or a UserError saying how to prepare it."""

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


class _MemoryStore:
    """The part of `SplitStore` that windows read, over documents tokenized in memory."""

    def __init__(self, docs: list[np.ndarray]):
        self._docs = docs
        self.lengths = np.array([len(d) for d in docs], dtype=np.int64)
        self.num_docs = len(docs)

    def tokens(self, doc: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._docs[doc][start:stop]


def eval_batches(src: SourceConfig, tok: Tokenizer, batch_docs: int = 64) -> Iterator[list[tuple[str, list[int]]]]:
    """A source's held-out documents in source order as (key, framed token ids), `batch_docs` encoded
    together per batch: the one reading of the eval split that `text_windows` and
    `repeat_docs.labelled_documents` share (so their documents are the same)."""
    batch: list[tuple[str, str]] = []
    for split, rec in iter_records(src):
        if split == "eval" and rec.text is not None:
            batch.append((rec.key, rec.text))
            if len(batch) >= batch_docs:
                yield list(zip([k for k, _ in batch], tok.encode_documents([t for _, t in batch])))
                batch = []
    if batch:
        yield list(zip([k for k, _ in batch], tok.encode_documents([t for _, t in batch])))


def text_windows(data: DataConfig, tok: Tokenizer, window: int, count: int, batch_docs: int = 64) -> np.ndarray:
    """[<= count, window] windows from the held-out documents of `data`'s sources, tokenized with
    `tok` (a source's `repeat` spans applied as `lsa prepare` applies them) and cut, blended and
    spread exactly as `cache_windows` does a token cache: with the tokenizer a run's cache was built
    with, the very same windows."""

    sources, weights = [], []
    for src in data.sources:
        docs: list[np.ndarray] = []
        total = 0
        ordinary = tok.ordinary_ids() if src.repeat is not None else None
        for encoded in eval_batches(src, tok, batch_docs):
            for key, ids in encoded:
                if src.repeat is not None:
                    ids = repeat_spans(ids, key, src.repeat, ordinary)[0]
                docs.append(np.asarray(ids, dtype=np.int64))
                total += len(ids)
            if total >= MAX_EVAL_TOKENS + window:
                break
        if docs:
            try:
                sources.append(SourceWindows(_MemoryStore(docs), window, seed=0, min_doc_tokens=data.min_doc_tokens,
                                             shuffle_docs=False, name=f"{src.name}/eval"))
            except UserError:
                raise UserError(f"held-out text of source '{src.name}' has {total} tokens, fewer than one window "
                                f"of {window}; use shorter --lengths") from None
            weights.append(src.weight)
    if not sources:
        names = ", ".join(s.name for s in data.sources)
        raise UserError(f"sources {names} have no held-out documents; set `holdout` on a source in the --data recipe")
    return _spread(BlendedWindows(sources, weights, seed=0, shuffle=False), count)


class HeldOut:
    """Windows for one target, cached by (data, tokenizer, window, count): compared models that
    share a tokenizer read exactly the same windows, computed once. Which data every target reads
    is `lsa_ds.eval.data_choice`'s choice."""

    def __init__(self, choice: DataChoice, source: str | None = None):
        self.choice, self.source_name = choice, source
        self._cache: dict[tuple, np.ndarray] = {}
        self._token_caches: dict[str, object] = {}  # opening one fingerprints every source file

    def _token_cache(self, target):
        key = target.recipe.data.model_dump_json()
        if key not in self._token_caches:
            self._token_caches[key] = open_run_cache(target.recipe, target.run_dir)
        cache = self._token_caches[key]
        spm_file = target.hf_dir / "tokenizer.model"
        if cache.tokenizer.kind == "sentencepiece" and spm_file.is_file():
            if hashlib.sha256(spm_file.read_bytes()).hexdigest()[:16] != cache.tokenizer.file_digest:
                raise UserError(f"{target.run_dir}: hf/tokenizer.model is not the tokenizer of the run's token cache "
                                f"({cache.tokenizer.path}); held-out tokens would be read with the wrong vocabulary")
        return cache

    def _from_cache(self, target) -> bool:
        return target.name in self.choice.from_cache

    def check(self, target) -> None:
        """Fail early (before any model is loaded): a run's missing token cache, an unknown --source."""
        self._only(self.choice.data)
        if self._from_cache(target):
            self._token_cache(target)

    def windows(self, target, window: int, count: int) -> np.ndarray:
        """[<= count, window] held-out windows for `target` (fewer when the split is that short)."""
        use_run = self._from_cache(target)
        data = self._only(self.choice.data)
        # a run's windows depend on its cache only (its own tokenizer was checked against it)
        key = (data.model_dump_json(), "cache" if use_run else target.tokenizer.fingerprint, window, count)
        if key not in self._cache:
            if use_run:
                recipe = target.recipe.model_copy(deep=True)
                recipe.data.sources = data.sources
                self._cache[key] = run_windows(recipe, target.run_dir, window, count, self._token_cache(target))
            else:
                self._cache[key] = text_windows(data, target.tokenizer, window, count)
        return self._cache[key]

    def _only(self, data: DataConfig) -> DataConfig:
        """`data`, restricted to the one source --source names (when given)."""
        if self.source_name is None:
            return data
        chosen = [s for s in data.sources if s.name == self.source_name]
        if not chosen:
            raise UserError(f"--source {self.source_name}: no such source in the held-out data of "
                            f"{self.choice.origin} (have: {', '.join(s.name for s in data.sources)})")
        out = data.model_copy(deep=True)
        out.sources = chosen
        return out

    def source(self, target) -> str:
        """Where a target's held-out text comes from, for the report (one sentence)."""
        only = f", source {self.source_name} only" if self.source_name else ""
        if self._from_cache(target):
            return f"the run's token cache (eval split of its recipe's sources{only})"
        names = ", ".join(f"{s.name} ({s.type})" for s in self._only(self.choice.data).sources)
        return f"eval split of {names} ({self.choice.origin}), tokenized with the model's tokenizer"
