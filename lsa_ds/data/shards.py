"""Token cache: Megatron-style `.bin` (tokens) + `.idx` (document offsets) shards per source and split.

The cache folder is named by a hash of everything that determines its bytes (source fingerprints,
the tokenizer's file digest, framing, dtype), so a second `prepare` with the same inputs finds it and
changed inputs get a new folder. It is built under a temporary name and renamed only when complete
(manifest written last), so a killed `prepare` never leaves a cache that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lsa_ds.data.repeats import repeat_spans
from lsa_ds.data.sources import iter_records, source_fingerprint
from lsa_ds.data.tokenizer import Tokenizer, load_tokenizer, tokenizer_sources
from lsa_ds.errors import UserError
from lsa_ds.recipe.schema import DataConfig

FORMAT_VERSION = 1
SHARD_TOKENS = 1 << 28
"""Tokens per .bin file before a new shard starts (512 MiB of uint16)."""
BATCH_CHARS = 4_000_000
"""A tokenization batch is flushed at this many characters too, so peak memory is bounded by the
batch size in text, not in documents (256 book-length documents would otherwise take gigabytes)."""
SPLITS = ("train", "eval")
MANIFEST = "manifest.json"


def token_dtype(data: DataConfig, vocab_size: int) -> np.dtype:
    """uint16 when the vocabulary fits (or as asked), else uint32; a vocabulary too large is an error."""
    fits16 = vocab_size <= 1 << 16
    if data.token_dtype == "uint16" and not fits16:
        raise UserError(f"data.token_dtype=uint16 cannot hold a vocabulary of {vocab_size} tokens; use uint32 or auto")
    if data.token_dtype == "uint16" or (data.token_dtype == "auto" and fits16):
        return np.dtype(np.uint16)
    if vocab_size > 1 << 32:
        raise UserError(f"vocabulary of {vocab_size} tokens does not fit uint32")
    return np.dtype(np.uint32)


def cache_dir_for(data: DataConfig, fingerprints: list[dict], tok: Tokenizer) -> Path:
    dtype = token_dtype(data, tok.vocab_size)
    key = json.dumps({"v": FORMAT_VERSION, "sources": fingerprints, "tokenizer": tok.file_digest,
                      "bos": tok.add_bos, "eos": tok.add_eos, "dtype": dtype.name}, sort_keys=True, default=str)
    return Path(data.cache_dir) / f"tokens-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


# ---------------------------------------------------------------------------------- writing
class _ShardWriter:
    """Appends documents to `<prefix>-NNNNN.bin/.idx`, starting a new shard every SHARD_TOKENS."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.documents = self.tokens = 0
        self._fh = None

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}"
        self._fh = open(self.folder / f"{name}.bin", "wb")
        self._offsets = array("q", [0])
        self.shards.append({"name": name, "documents": 0, "tokens": 0})

    def add(self, ids: list[int]) -> None:
        if self._fh is None or self._offsets[-1] >= self.shard_tokens:
            self._close_shard()
            self._open()
        self._fh.write(np.asarray(ids, dtype=self.dtype).tobytes())
        self._offsets.append(self._offsets[-1] + len(ids))
        self.documents += 1
        self.tokens += len(ids)

    def _close_shard(self) -> None:
        if self._fh is None:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        name = self.shards[-1]["name"]
        np.asarray(self._offsets, dtype=np.int64).tofile(self.folder / f"{name}.idx")
        self.shards[-1].update(documents=len(self._offsets) - 1, tokens=int(self._offsets[-1]))

    def close(self) -> dict:
        self._close_shard()
        return {"documents": self.documents, "tokens": self.tokens, "shards": self.shards}


@dataclass
class SourceReport:
    name: str
    records: int = 0
    documents: dict = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    tokens: dict = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    skipped: Counter = field(default_factory=Counter)
    first_skip: dict = field(default_factory=dict)
    seconds: float = 0.0
    repeated: dict = field(default_factory=lambda: {"spans": 0, "tokens": 0})
    """Spans repeated (and tokens copied) by the source's `repeat` option, over both splits."""


def _tokenize_source(src, tok: Tokenizer, data: DataConfig, folder: Path, dtype: np.dtype,
                     shard_tokens: int, bar) -> tuple[dict, SourceReport]:
    folder.mkdir(parents=True)
    writers = {s: _ShardWriter(folder, s, dtype, shard_tokens) for s in SPLITS}
    rep = SourceReport(src.name)
    t0 = time.perf_counter()
    batch: list[tuple[str, str, str]] = []
    batch_chars = 0
    ordinary = tok.ordinary_ids() if src.repeat is not None else None

    def flush() -> None:
        nonlocal batch_chars
        batch_chars = 0
        for (split, key, _), ids in zip(batch, tok.encode_documents([t for _, _, t in batch])):
            if ids and max(ids) >= tok.vocab_size:
                raise UserError(f"tokenizer {tok.path} produced id {max(ids)} >= its vocab_size {tok.vocab_size}")
            if src.repeat is not None:
                ids, spans, copied = repeat_spans(ids, key, src.repeat, ordinary)
                rep.repeated["spans"] += spans
                rep.repeated["tokens"] += copied
            writers[split].add(ids)
            rep.documents[split] += 1
            rep.tokens[split] += len(ids)
        if bar is not None:
            bar.update(len(batch))
            bar.set_postfix(tokens=f"{sum(rep.tokens.values()):,}")
        batch.clear()

    for split, rec in iter_records(src):
        rep.records += 1
        if rec.text is None:
            rep.skipped[rec.skip.split(" (")[0]] += 1
            rep.first_skip.setdefault(rec.skip.split(" (")[0], f"{rec.key}: {rec.skip}")
            continue
        batch.append((split, rec.key, rec.text))
        batch_chars += len(rec.text)
        if len(batch) >= data.batch_docs or batch_chars >= BATCH_CHARS:
            flush()
    flush()
    rep.seconds = time.perf_counter() - t0
    _check_skips(src, rep, data.max_skip_fraction)
    splits = {s: w.close() for s, w in writers.items()}
    return splits, rep


def _check_skips(src, rep: SourceReport, max_fraction: float) -> None:
    if sum(rep.documents.values()) == 0:
        why = f" (skipped: {dict(rep.skipped)}; first: {next(iter(rep.first_skip.values()))})" if rep.skipped else ""
        raise UserError(f"source '{src.name}': no documents in '{src.path or 'stdlib'}'{why}")
    # Every skipped record counts, empty ones too, as docs/recipe-reference.md says (the stdlib
    # reader leaves empty modules out: they are not records of the user's data).
    bad = sum(rep.skipped.values())
    if bad and bad > max_fraction * rep.records:
        first = next(iter(rep.first_skip.values()))
        raise UserError(f"source '{src.name}': {bad} of {rep.records} records skipped (malformed or empty) "
                        f"({bad / rep.records:.1%} > data.max_skip_fraction={max_fraction:g}); first: {first}")


def prepare(data: DataConfig, progress: bool = True, shard_tokens: int = SHARD_TOKENS) -> tuple[Path, list[SourceReport] | None]:
    """Build the token cache for `data` if it is not there. Returns (cache folder, reports), with
    reports None when the cache was already up to date."""
    fingerprints = [source_fingerprint(s) for s in data.sources]
    tok = load_tokenizer(data, [source_fingerprint(s) for s in tokenizer_sources(data)], train=True)
    final = cache_dir_for(data, fingerprints, tok)
    if (final / MANIFEST).is_file():
        return final, None
    dtype = token_dtype(data, tok.vocab_size)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    reports = []
    try:
        manifest = {"version": FORMAT_VERSION, "dtype": dtype.name, "tokenizer": tok.describe(), "sources": {}}
        for src, fp in zip(data.sources, fingerprints):
            bar = None
            if progress:
                bar = tqdm(desc=f"tokenizing {src.name}", unit="doc", leave=False, disable=None)  # None: off when not a TTY
            try:
                splits, rep = _tokenize_source(src, tok, data, tmp / src.name, dtype, shard_tokens, bar)
            finally:
                if bar is not None:
                    bar.close()
            reports.append(rep)
            manifest["sources"][src.name] = {"fingerprint": fp, "splits": splits, "records": rep.records,
                                             "skipped": dict(rep.skipped), "first_skip": rep.first_skip,
                                             "repeated": rep.repeated}
        # The manifest is written last and the folder renamed after: its presence means complete.
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if final.exists():  # someone else finished the same cache meanwhile
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, reports


# ---------------------------------------------------------------------------------- reading
class SplitStore:
    """The documents of one source and split, read through memory maps (zero copies)."""

    def __init__(self, folder: Path, info: dict, dtype: np.dtype):
        self._bins = [np.memmap(folder / f"{s['name']}.bin", dtype=dtype, mode="r") if s["tokens"] else np.zeros(0, dtype)
                      for s in info["shards"]]
        self._idx = [np.fromfile(folder / f"{s['name']}.idx", dtype=np.int64) for s in info["shards"]]
        self.lengths = np.concatenate([np.diff(i) for i in self._idx]) if self._idx else np.zeros(0, np.int64)
        # first global document id of each shard
        self._shard_start = np.cumsum([0] + [len(i) - 1 for i in self._idx])
        self.num_docs = int(self._shard_start[-1])
        self.num_tokens = int(self.lengths.sum())

    def tokens(self, doc: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Tokens [start:stop] of document `doc` (a view into the memory map)."""
        s = int(np.searchsorted(self._shard_start, doc, side="right") - 1)
        local = doc - self._shard_start[s]
        lo, hi = self._idx[s][local], self._idx[s][local + 1]
        stop = hi - lo if stop is None else stop
        return self._bins[s][lo + start: lo + stop]


class TokenCache:
    """A complete token cache: its manifest, tokenizer and per-source split stores."""

    def __init__(self, folder: Path, tok: Tokenizer):
        self.folder, self.tokenizer = folder, tok
        self.manifest = json.loads((folder / MANIFEST).read_text())
        self.dtype = np.dtype(self.manifest["dtype"])
        self._stores: dict[tuple[str, str], SplitStore] = {}

    def store(self, source: str, split: str) -> SplitStore:
        if (source, split) not in self._stores:
            info = self.manifest["sources"][source]["splits"][split]
            self._stores[source, split] = SplitStore(self.folder / source, info, self.dtype)
        return self._stores[source, split]


def open_cache(data: DataConfig) -> TokenCache:
    """The complete cache for `data`, or UserError telling the user to prepare it."""
    fingerprints = [source_fingerprint(s) for s in data.sources]
    tok = load_tokenizer(data, [source_fingerprint(s) for s in tokenizer_sources(data)], train=False)
    folder = cache_dir_for(data, fingerprints, tok)
    if not (folder / MANIFEST).is_file():
        raise UserError(f"token cache {folder} not prepared (or its inputs changed); run `lsa prepare RECIPE`")
    return TokenCache(folder, tok)
