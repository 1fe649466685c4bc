"""Repeated spans: a documented, token-level way to make a share of the training text reward
long-range use (DESIGN.md §2 needs models that use their context before alignment can matter).

A source with `repeat:` set reads its documents as usual and, after tokenizing, cuts each one into
consecutive segments of `segment_tokens`; in every segment one span of `span_min`..`span_max` tokens
is copied to a later place in the same segment (it overwrites what was there), at a distance drawn
uniformly over everything that fits. With `content: random` the span is first replaced by tokens
drawn uniformly from the ordinary vocabulary (no special or byte pieces), so that nothing but
copying predicts its second occurrence. The draws are keyed by the document's key and `seed`:
the same tokens on every machine, and the source's held-out split (by key, as for any source) holds
other documents than its training split. Pure numpy.
"""

from __future__ import annotations

import hashlib

import numpy as np

from lsa_ds.config import RepeatConfig


def _rng(key: str, seed: int) -> np.random.Generator:
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def repeat_spans(ids: list[int], key: str, cfg: RepeatConfig, ordinary: np.ndarray) -> tuple[list[int], int, int]:
    """(tokens with one repeated span per segment, spans, copied tokens). The first and last token
    (BOS / EOS framing) are never touched; a tail too short for two spans is left as it is."""
    out = np.asarray(ids, dtype=np.int64).copy()
    rng = _rng(key, cfg.seed)
    spans = copied = 0
    lo, end = 1, len(out) - 1  # inside the framing
    while end - lo >= 2 * cfg.span_min:
        seg = min(cfg.segment_tokens, end - lo)
        n = int(rng.integers(cfg.span_min, min(cfg.span_max, seg // 2) + 1))
        a = int(rng.integers(0, seg - 2 * n + 1))            # the span's first occurrence
        b = int(rng.integers(a + n, seg - n + 1))            # its copy: after it, distance b - a >= n
        if cfg.content == "random":
            out[lo + a: lo + a + n] = ordinary[rng.integers(0, len(ordinary), size=n)]
        out[lo + b: lo + b + n] = out[lo + a: lo + a + n]
        spans, copied = spans + 1, copied + n
        lo += seg
    return out.tolist(), spans, copied
