"""Document sources: each `data.sources` entry becomes a stream of `Record`s in a fixed order.

A record is one document (or a malformed one, with the reason it is skipped). Sources never raise
for a bad *record*; they raise `UserError` for a bad *source* (missing path, unreadable file,
missing column). Which split a document belongs to is decided here, by a stable hash of its key, so
evaluation never sees a training document whatever machine or order the corpus is read on.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import sys
import sysconfig
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lsa_ds.data.hub as hub
from lsa_ds.errors import UserError
from lsa_ds.recipe.schema import SourceConfig

STDLIB_HOLDOUT = 0.05
"""Held-out fraction for the builtin corpus when the source leaves `holdout` at 0."""


@dataclass(frozen=True)
class Record:
    key: str
    """Stable identity of the document: relative path, `file:line`, or `file:row`."""
    text: str | None
    """Document text; None when the record is skipped."""
    skip: str | None = None
    """Why the record is skipped (malformed JSON, missing field, undecodable, empty)."""


def split_of(key: str, holdout: float) -> str:
    """'eval' for a stable `holdout` fraction of keys, 'train' otherwise (sha1 of the key)."""
    if holdout <= 0:
        return "train"
    h = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return "eval" if h < holdout else "train"


def effective_holdout(src: SourceConfig) -> float:
    return src.holdout if (src.holdout > 0 or src.type != "stdlib") else STDLIB_HOLDOUT


def _checked_text(key: str, text: object) -> Record:
    if not isinstance(text, str):
        return Record(key, None, f"text is {type(text).__name__}, not a string")
    if not text.strip():
        return Record(key, None, "empty")
    return Record(key, text)


# ------------------------------------------------------------------------------ file listing
def _expand(src: SourceConfig) -> tuple[Path, list[Path]]:
    """The source's root folder and its files, sorted; a path matching nothing is an error."""
    pattern = os.path.expanduser(src.path or "")
    if os.path.isdir(pattern) and src.type in ("txt", "parquet", "jsonl"):
        ext = {"txt": "*", "parquet": "*.parquet", "jsonl": "*.jsonl"}[src.type]
        pattern = os.path.join(pattern, "**", ext)
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    root = Path(pattern.split("*")[0] or ".")
    root = root if root.is_dir() else root.parent
    files = [f for f in files if not _excluded(f.relative_to(root).as_posix() if f.is_relative_to(root) else f.name, src.exclude)]
    if not files:
        raise UserError(f"source '{src.name}': path '{src.path}' matches no files")
    return root, files


def _excluded(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) for p in patterns)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name


# ---------------------------------------------------------------------------------- readers
def _jsonl(src: SourceConfig) -> Iterator[Record]:
    root, files = _expand(src)
    for f in files:
        with open(f, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                key = f"{_rel(f, root)}:{lineno}"
                if not raw.strip():
                    continue  # blank lines are not records
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    yield Record(key, None, "undecodable bytes (not UTF-8)")
                    continue
                except json.JSONDecodeError as e:
                    yield Record(key, None, f"malformed JSON ({e.msg})")
                    continue
                if not isinstance(obj, dict) or src.text_field not in obj:
                    yield Record(key, None, f"missing field '{src.text_field}'")
                    continue
                yield _checked_text(key, obj[src.text_field])


def _txt(src: SourceConfig) -> Iterator[Record]:
    root, files = _expand(src)
    for f in files:
        key = _rel(f, root)
        try:
            yield _checked_text(key, f.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            yield Record(key, None, f"undecodable bytes at offset {e.start} (not UTF-8)")


def _parquet(src: SourceConfig) -> Iterator[Record]:
    # deferred: pyarrow only for parquet sources
    import pyarrow.parquet as pq

    root, files = _expand(src)
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise UserError(f"{f}: not a readable parquet file ({e})") from None
        if src.text_field not in pf.schema_arrow.names:
            raise UserError(f"{f}: no column '{src.text_field}' (columns: {', '.join(pf.schema_arrow.names)})")
        row = 0
        for batch in pf.iter_batches(columns=[src.text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                yield _checked_text(f"{_rel(f, root)}:{row}", text)
                row += 1


def hf_dataset_folder(src: SourceConfig) -> Path | None:
    """The cached snapshot an `hf` source without `format` names by hub id (`owner/name[@rev]`,
    resolved offline by `lsa_ds.data.hub`), or None when its path is a local one. A snapshot is
    a folder of data files (parquet, jsonl, csv, ...) that `datasets.load_dataset` reads as it
    would the repository; `format` always means local files."""
    if src.type != "hf" or src.format or not hub.is_hub_name(src.path or ""):
        return None
    return hub.resolve(src.path, f"source '{src.name}': path", repo_type="dataset")


def _hf(src: SourceConfig) -> Iterator[Record]:
    # deferred: `datasets` takes seconds to import; only hf sources need it
    import datasets

    path = Path(os.path.expanduser(src.path or ""))
    snapshot = hf_dataset_folder(src)
    if snapshot is not None:  # a hub dataset: its files as the repository lays them out, never the network
        try:
            ds = datasets.load_dataset(str(snapshot), split=src.split, streaming=True)
        except ValueError as e:  # an unknown split, or no data files datasets recognises
            raise UserError(f"source '{src.name}': cannot read the cached dataset {src.path} at {snapshot} "
                            f"({' '.join(str(e).split())[:200]})") from None
    elif path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if src.split not in ds:
                raise UserError(f"source '{src.name}': split '{src.split}' not in {path} (has {', '.join(ds)})")
            ds = ds[src.split]
    else:
        if not src.format:
            raise UserError(f"source '{src.name}': '{src.path}' is not a saved dataset folder; set `format` (json, csv, parquet, text) to read files")
        _expand(src)  # same "matches no files" error as the other file sources
        ds = datasets.load_dataset(src.format, data_files=os.path.expanduser(src.path), split="train", streaming=True)
    names = ds.column_names or []
    if names and src.text_field not in names:
        raise UserError(f"source '{src.name}': no field '{src.text_field}' (fields: {', '.join(names)})")
    for row, item in enumerate(ds):
        yield _checked_text(str(row), item.get(src.text_field))


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def stdlib_files(src: SourceConfig) -> list[tuple[str, Path]]:
    """(relative path, path) of the standard library's .py files, sorted, without site-packages.

    On some machines site-packages lies inside the stdlib folder; it is someone else's code and
    changes with every install, so it is excluded by path component.
    """
    root = stdlib_root()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        for name in filenames:
            if name.endswith(".py"):
                p = Path(dirpath) / name
                rel = p.relative_to(root).as_posix()
                if not _excluded(rel, src.exclude):
                    out.append((rel, p))
    return sorted(out)


def _stdlib(src: SourceConfig) -> Iterator[Record]:
    for rel, path in stdlib_files(src):
        try:
            # Python sources may declare their own encoding (PEP 263); tokenize.open honours it.
            with tokenize.open(path) as fh:
                text = fh.read()
            if text.strip():  # an empty module (many __init__.py) is no document and no malformed record
                yield _checked_text(rel, text)
        except (SyntaxError, UnicodeDecodeError, LookupError) as e:
            yield Record(rel, None, f"undecodable source ({type(e).__name__})")
    # deferred: a large module, only for the stdlib source
    from pydoc_data import topics

    for name in sorted(topics.topics):
        if not _excluded(f"pydoc_data.topics/{name}", src.exclude):
            yield _checked_text(f"pydoc_data.topics/{name}", topics.topics[name])


_READERS = {"jsonl": _jsonl, "txt": _txt, "parquet": _parquet, "hf": _hf, "stdlib": _stdlib}


def iter_records(src: SourceConfig) -> Iterator[tuple[str, Record]]:
    """(split, record) for every record of the source, in a deterministic order.

    `max_documents` counts good documents after the split, so the eval split is stable when it
    changes.
    """
    holdout = effective_holdout(src)
    taken = 0
    for rec in _READERS[src.type](src):
        if src.max_documents is not None and taken >= src.max_documents:
            return
        if rec.text is not None:
            taken += 1
        yield split_of(rec.key, holdout), rec


def source_fingerprint(src: SourceConfig) -> dict:
    """What identifies the source's content: its options plus the files' names, sizes and mtimes
    (the builtin corpus: the Python version and the file list)."""
    opts = src.model_dump(mode="json", exclude={"weight"})
    opts["holdout"] = effective_holdout(src)
    h = hashlib.sha256()
    if src.type == "stdlib":
        opts["python"] = sys.version
        for rel, p in stdlib_files(src):
            h.update(f"{rel}\0{p.stat().st_size}\n".encode())
    else:
        path = hf_dataset_folder(src) or Path(os.path.expanduser(src.path or ""))
        if src.type == "hf" and path.is_dir() and not src.format:
            files = sorted(p for p in path.rglob("*") if p.is_file())
        else:
            files = _expand(src)[1]
        for p in files:
            st = p.stat()
            h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    opts["files"] = h.hexdigest()[:16]
    return opts


def sample_text(sources: list[SourceConfig], max_chars: int) -> Iterator[str]:
    """Training-split text for tokenizer training: each source contributes ∝ its weight."""
    total_w = sum(s.weight for s in sources)
    for src in sources:
        budget = int(max_chars * src.weight / total_w)
        for split, rec in iter_records(src):
            if budget <= 0:
                break
            if split == "train" and rec.text is not None:
                piece = rec.text[:budget]
                budget -= len(piece)
                yield piece

