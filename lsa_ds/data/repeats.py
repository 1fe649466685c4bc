"""Repeated spans: a documented, token-level way to make a share of the training text reward
long-range use (the method of docs/design.md needs models that use their context before alignment can matter).

A source with `repeat:` set reads its documents as usual and, after tokenizing, cuts each one into
consecutive segments of `segment_tokens`. Each segment is cut into `per_segment` equal parts, and
each part receives one copy (it overwrites what was there) of a span of `span_min`..`span_max`
tokens from anywhere earlier in the segment: the span's start is drawn uniformly over everything
that fits before the part's end, then the copy's place uniformly over what fits after the span and
inside the part. With one part this is one span per segment at a distance drawn over the whole
segment. With `content: random` every span of the segment is first replaced by tokens drawn
uniformly from the ordinary vocabulary (no special or byte pieces), or from a fixed `alphabet` of
that many of them, so that nothing but copying predicts its second occurrence. Copies are written
left to right after that and every source lies before its copy, so each copy stays exact (a later
span's source may hold part of an earlier copy). The draws are keyed by the document's key and
`seed`: the same tokens on every machine, and the source's held-out split (by key, as for any
source) holds other documents than its training split. `repeat_layout` also returns where every copy
came from (the held-out copy-retrieval and misalignment-split metrics read it). Pure numpy.

Why no write lands on a span's source after its copy was made: within a segment, part j's span
ends before its copy, and its copy ends inside part j, so copy k > j (in part k) starts after
span j's source; the random refills of a segment all come before its copies; segments are disjoint.
"""

from __future__ import annotations

import hashlib

import numpy as np

from lsa_ds.recipe.schema import RepeatConfig


def _rng(key: str, seed: int) -> np.random.Generator:
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def repeat_layout(ids: list[int], key: str, cfg: RepeatConfig,
                  ordinary: np.ndarray) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(tokens with repeated spans, spans, source_of): the tokens `repeat_spans` gives, and where
    they came from, in document coordinates.

    spans: int64 [K, 3], one row (source_start, copy_start, length) per copy in the order written.
    source_of: int64 [len(ids)], for each token that is a copy the position of the token it copies,
    else -1. It describes the final tokens: a write that lands on a span's source after its copy
    was made (the draws never do that, see the module doc, but the labels do not rely on it) unlabels
    the copied tokens that pointed there, and a copy written over an earlier copy relabels those
    positions. So tokens[p] == tokens[source_of[p]] wherever source_of[p] >= 0, and a source may
    itself be a copy (a later span's source may hold part of an earlier copy): source_of is the
    direct source, the nearest earlier occurrence the model can copy from."""
    out = np.asarray(ids, dtype=np.int64).copy()
    source_of = np.full(len(out), -1, dtype=np.int64)
    if cfg.alphabet is not None:  # the same fixed subset for every document
        ordinary = np.random.default_rng(cfg.seed).permutation(ordinary)[:cfg.alphabet]
    rng = _rng(key, cfg.seed)
    spans: list[tuple[int, int, int]] = []

    def overwrite(lo: int, seg: int, start: int, n: int, src: int) -> None:
        # sources lie in their copy's segment, so only this segment's labels can point at [start, start + n)
        labels = source_of[lo:lo + seg]
        labels[(labels >= start) & (labels < start + n)] = -1
        source_of[start:start + n] = np.arange(src, src + n) if src >= 0 else -1

    lo, end = 1, len(out) - 1  # inside the framing
    while end - lo >= 2 * cfg.span_min:
        seg = min(cfg.segment_tokens, end - lo)
        parts = min(cfg.per_segment, seg // (2 * cfg.span_min))
        width = seg // parts
        draws = []
        for j in range(parts):
            hi = seg if j == parts - 1 else (j + 1) * width       # this part is [j·width, hi)
            n = int(rng.integers(cfg.span_min, min(cfg.span_max, width // 2) + 1))
            a = int(rng.integers(0, hi - 2 * n + 1))                 # the span's first occurrence
            b = int(rng.integers(max(a + n, j * width), hi - n + 1))  # its copy: in the part, after it
            draws.append((n, a, b))
        if cfg.content == "random":  # every span first, then the copies: no copy is overwritten later
            for n, a, _ in draws:
                out[lo + a: lo + a + n] = ordinary[rng.integers(0, len(ordinary), size=n)]
                overwrite(lo, seg, lo + a, n, -1)
        for n, a, b in draws:
            out[lo + b: lo + b + n] = out[lo + a: lo + a + n]
            overwrite(lo, seg, lo + b, n, lo + a)
            spans.append((lo + a, lo + b, n))
        lo += seg
    return out.tolist(), np.array(spans, dtype=np.int64).reshape(-1, 3), source_of


def repeat_spans(ids: list[int], key: str, cfg: RepeatConfig, ordinary: np.ndarray) -> tuple[list[int], int, int]:
    """(tokens with repeated spans, spans, copied tokens). The first and last token (BOS / EOS
    framing) are never touched; a tail too short for two spans is left as it is, and a short last
    segment gets as many parts as fit. `repeat_layout` gives the same tokens with their layout."""
    out, spans, _ = repeat_layout(ids, key, cfg, ordinary)
    return out, len(spans), int(spans[:, 2].sum())
