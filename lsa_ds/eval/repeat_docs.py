"""Held-out documents of a repeated-span source with their span layout, and windows cut from them
with a label per token: what `copy_retrieval` and `misalign_split` read.

The documents are a source's eval split (by key, as for any source: training never saw them),
tokenized with the model's tokenizer and given the source's `repeat` spans exactly as `lsa prepare`
and `heldout.text_windows` give them (`data/repeats.repeat_layout`: the same tokens, plus where each
copy came from). Documents are kept whole, so a copy and its source always sit in the same array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lsa_ds.data.repeats import repeat_layout
from lsa_ds.data.tokenizer import Tokenizer
from lsa_ds.errors import UserError
from lsa_ds.eval.heldout import eval_batches, spread
from lsa_ds.recipe.schema import DataConfig, SourceConfig


@dataclass(frozen=True)
class LabelledDoc:
    """One held-out document with its repeated spans (document coordinates)."""

    key: str
    tokens: np.ndarray
    """int64 [n]: the document as training reads it (BOS ... EOS, spans repeated)."""
    spans: np.ndarray
    """int64 [K, 3]: (source_start, copy_start, length) of every copy, in the order written."""
    source_of: np.ndarray
    """int64 [n]: for a copied token the position of the token it copies, else -1."""


def repeat_source(data: DataConfig, name: str | None = None) -> SourceConfig:
    """The source whose spans are read: the one named, else the only source with `repeat` set."""
    with_repeat = [s for s in data.sources if s.repeat is not None]
    if name is not None:
        chosen = [s for s in data.sources if s.name == name]
        if not chosen:
            raise UserError(f"source {name}: no such source (have: {', '.join(s.name for s in data.sources)})")
        if chosen[0].repeat is None:
            raise UserError(f"source {name} has no `repeat` spans: copy metrics need a repeated-span source")
        return chosen[0]
    if len(with_repeat) != 1:
        have = ", ".join(s.name for s in with_repeat) or "none"
        raise UserError(f"copy metrics need exactly one source with `repeat` set, or its name (have: {have})")
    return with_repeat[0]


def labelled_documents(data: DataConfig, tok: Tokenizer, source: str | None = None, *, max_tokens: int = 1_000_000,
                       batch_docs: int = 64) -> list[LabelledDoc]:
    """The held-out documents of `data`'s repeated-span source (`repeat_source`), in source order,
    until `max_tokens` tokens; documents shorter than `data.min_doc_tokens` are left out, as the
    windows of training and of `heldout.text_windows` leave them out. Same iteration as
    `heldout.text_windows`: `heldout.eval_batches`."""
    src = repeat_source(data, source)
    ordinary = tok.ordinary_ids()
    docs: list[LabelledDoc] = []
    total = 0
    for encoded in eval_batches(src, tok, batch_docs):
        for key, ids in encoded:
            if len(ids) < data.min_doc_tokens:
                continue
            tokens, spans, source_of = repeat_layout(ids, key, src.repeat, ordinary)
            docs.append(LabelledDoc(key, np.asarray(tokens, dtype=np.int64), spans, source_of))
            total += len(tokens)
        if total >= max_tokens:
            break
    if not docs:
        raise UserError(f"source '{src.name}' has no held-out documents; set `holdout` on it")
    return docs


def labelled_windows(docs: list[LabelledDoc], window: int, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(windows, copy_distance), both int64 [N, window]: the documents laid end to end (as training
    streams them) and cut into consecutive windows, `count` of them spread evenly over the stream.
    copy_distance[i, t] is, for a copied token, its distance to the token it copies (>= 1; the
    source sits at t - distance in window coordinates, before the window when that is negative),
    and 0 for a token that is not a copy."""
    tokens = np.concatenate([d.tokens for d in docs])
    # a distance is the same in any coordinates, so laying documents end to end keeps it
    distance = np.concatenate([np.where(d.source_of >= 0, np.arange(len(d.tokens)) - d.source_of, 0) for d in docs])
    available = len(tokens) // window
    if available == 0:
        raise UserError(f"held-out documents hold {len(tokens)} tokens, fewer than one window of {window}")
    pick = spread(available, available if count is None else count)  # the whole held-out set, not its start
    rows = pick[:, None] * window + np.arange(window)[None, :]
    return tokens[rows], distance[rows]
