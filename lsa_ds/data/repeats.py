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
source) holds other documents than its training split. Pure numpy.
"""

from __future__ import annotations

import hashlib

import numpy as np

from lsa_ds.recipe.schema import RepeatConfig


def _rng(key: str, seed: int) -> np.random.Generator:
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def repeat_spans(ids: list[int], key: str, cfg: RepeatConfig, ordinary: np.ndarray) -> tuple[list[int], int, int]:
    """(tokens with repeated spans, spans, copied tokens). The first and last token (BOS / EOS
    framing) are never touched; a tail too short for two spans is left as it is, and a short last
    segment gets as many parts as fit."""
    out = np.asarray(ids, dtype=np.int64).copy()
    if cfg.alphabet is not None:  # the same fixed subset for every document
        ordinary = np.random.default_rng(cfg.seed).permutation(ordinary)[:cfg.alphabet]
    rng = _rng(key, cfg.seed)
    spans = copied = 0
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
        for n, a, b in draws:
            out[lo + b: lo + b + n] = out[lo + a: lo + a + n]
            spans, copied = spans + 1, copied + n
        lo += seg
    return out.tolist(), spans, copied
