"""Copy retrieval: does a model complete a repeated span from its earlier occurrence, and up to
which distance? The direct check of the repeated-span task the demo trains on (docs/design.md,
"Synthetic tasks" and the demo; `data/repeats.py` makes the spans).

For each copy (source_start a, copy_start b, length n) of a held-out document (`repeat_docs`), the
model is given the copy's first `prompt_tokens` tokens (k) and completes the other n - k greedily;
exact match = every completed token equals the copy's. The context the model reads is at most
`context` tokens at every step: a window of the document ending at the token being predicted
(while generating, the window slides over the model's own completion), so no position past
`context - 1` is ever used — "inside L0" stays inside the trained positions. Only copies whose
whole source lies in the first step's window count: distance d = b - a <= context - k (then every
source token still to be copied stays in view while the window slides); the others are counted as
`excluded`.

Greedy generation that matches the copy is fed exactly the copy's own tokens, so exact match is
"the argmax at every step of the true continuation is the true token": each step is one row of a
batched forward over real document tokens, steps are batched across copies, and a copy leaves the
batch at its first wrong token (nothing after it can change the outcome) unless `per_token` asks for
the teacher-forced token accuracy too: the share of a copy's completion tokens whose argmax is right
given the true tokens before them, a graded measure for a model that copies, but not 20 tokens
in a row (exact match is then 0 at every distance and says nothing about distance).

Reported: exact-match accuracy with a 95% Wilson interval (`stats.wilson`) and the number of
copies, pooled over distance buckets [lo, hi) (default: powers of two, `distance_edges`).
`CopyRetrieval.within(lo, hi)` pools any range, e.g. distances below L0 versus at least L0. With
`per_token`, each bucket also has the token accuracy: mean over copies (the units: a copy's tokens
are not independent trials) with a 95% normal interval clipped to [0, 1].
Single process (CPU, tiny models); `max_per_bucket` bounds the work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from lsa_ds.eval.forward import LogitsFn, hf_logits_fn
from lsa_ds.eval.heldout import spread
from lsa_ds.eval.misalignment import last_position_logits
from lsa_ds.eval.repeat_docs import LabelledDoc
from lsa_ds.eval.stats import MeanCI, Proportion, mean_ci, wilson

PROMPT_TOKENS = 4
"""Tokens of the copy shown before completing it: with the demo's alphabet of 16 random tokens,
4 tokens (16 bits) match the source's start by chance with probability ~1e-5 per position, so the
prompt locates the source and does not give the answer away."""


_ANY = 1 << 62  # an upper distance bound no document reaches


def _dict(m: MeanCI | None) -> dict | None:
    return None if m is None else m.to_dict()


def distance_edges(context: int) -> tuple[int, ...]:
    """Bucket edges 1, 2, 4, ... up to the first power of two >= `context`: bucket i holds the
    distances in [edges[i], edges[i + 1])."""
    edges = [1]
    while edges[-1] < context:
        edges.append(edges[-1] * 2)
    return tuple(edges) if len(edges) > 1 else (1, 2)


@dataclass(frozen=True)
class CopyTask:
    """One copy to complete: document index, source start, copy start, length (document coordinates)."""

    doc: int
    source: int
    copy: int
    length: int

    @property
    def distance(self) -> int:
        return self.copy - self.source


@dataclass(frozen=True)
class DistanceBucket:
    """Exact-match accuracy of the copies at distances in [lo, hi)."""

    lo: int
    hi: int
    accuracy: Proportion
    token_accuracy: MeanCI | None = None
    """Teacher-forced share of completion tokens right, mean over the copies (`per_token`; None
    without it or with no copies), 95% normal interval over copies clipped to [0, 1]."""

    def to_dict(self) -> dict:
        # the distances under their own names: the accuracy's interval has "lo" and "hi" too
        return {"from": self.lo, "to": self.hi, **self.accuracy.to_dict(), "token_accuracy": _dict(self.token_accuracy)}


@dataclass(frozen=True)
class CopyRetrieval:
    """The metric for one model and context length; per-copy outcomes kept for any bucketing."""

    context: int
    prompt_tokens: int
    distances: tuple[int, ...]
    correct: tuple[bool, ...]
    excluded: int
    """Copies that cannot be scored at this context: the source does not fit (distance >
    context - prompt_tokens) or the copy has no token past the prompt."""
    edges: tuple[int, ...]
    token_share: tuple[float, ...] | None = None
    capped: int = 0
    """Copies that could be scored but `max_per_bucket` left out."""
    """Per copy, the teacher-forced share of its completion tokens predicted right (`per_token`)."""

    def _in(self, lo: int, hi: int) -> np.ndarray:
        d = np.asarray(self.distances, dtype=np.int64)
        return (d >= lo) & (d < hi)

    def within(self, lo: int, hi: int) -> Proportion:
        """Exact-match accuracy of the copies at distances in [lo, hi)."""
        sel = self._in(lo, hi)
        return wilson(int(np.asarray(self.correct, dtype=bool)[sel].sum()), int(sel.sum()))

    def tokens_within(self, lo: int, hi: int) -> MeanCI | None:
        """Teacher-forced token accuracy of the copies at distances in [lo, hi): mean over copies,
        95% normal interval clipped to [0, 1]; None without `per_token` or copies."""
        sel = self._in(lo, hi)
        if self.token_share is None or not sel.any():
            return None
        m = mean_ci(np.asarray(self.token_share)[sel])
        return MeanCI(m.mean, max(0.0, m.lo), min(1.0, m.hi), m.std, m.n)

    @property
    def overall(self) -> Proportion:
        return wilson(int(sum(self.correct)), len(self.correct))

    def by_distance(self, edges: tuple[int, ...] | None = None) -> list[DistanceBucket]:
        e = self.edges if edges is None else tuple(edges)
        return [DistanceBucket(lo, hi, self.within(lo, hi), self.tokens_within(lo, hi))
                for lo, hi in zip(e[:-1], e[1:])]

    def to_dict(self) -> dict:
        return {"context": self.context, "prompt_tokens": self.prompt_tokens, "excluded": self.excluded,
                "capped": self.capped,
                "interval": "exact match: 95% Wilson over copies; tokens: 95% normal over copies, clipped",
                "overall": self.overall.to_dict(), "token_accuracy": _dict(self.tokens_within(0, _ANY)),
                "by_distance": [b.to_dict() for b in self.by_distance()],
                "per_copy": {"distance": list(self.distances), "correct": list(self.correct),
                             "token_share": None if self.token_share is None else list(self.token_share)}}

    def text(self) -> str:
        """One line per non-empty bucket: `[lo, hi)  exact [lo, hi]  tokens [lo, hi]  n`."""
        def row(name: str, exact: Proportion, tokens: MeanCI | None) -> str:
            shown = f"  tokens {tokens.text()}" if tokens else ""
            return f"{name:<11} exact {exact.text()}{shown}  n={exact.n}"

        rows = [row(f"[{b.lo}, {b.hi})", b.accuracy, b.token_accuracy) for b in self.by_distance() if b.accuracy.n]
        everything = row("all", self.overall, self.tokens_within(0, _ANY))
        return "\n".join([*rows, f"{everything}  (excluded {self.excluded}, capped {self.capped})"])


def copy_tasks(docs: list[LabelledDoc], context: int, prompt_tokens: int = PROMPT_TOKENS, *,
               edges: tuple[int, ...] | None = None,
               max_per_bucket: int | None = None) -> tuple[list[CopyTask], int, int]:
    """(the copies scored at this context, how many cannot be, how many the cap left out). A copy counts when it has a
    token past the prompt, its labels are intact (`LabelledDoc.source_of` says its tokens copy its
    source: true of every copy `repeat_layout` makes) and distance <= context - prompt_tokens.
    `max_per_bucket` keeps at most that many per distance bucket, spread evenly over the documents
    (the same copies for every model scored on the same documents)."""
    if prompt_tokens < 1 or context <= prompt_tokens:
        raise ValueError(f"need 1 <= prompt_tokens < context, got prompt_tokens={prompt_tokens}, context={context}")
    tasks, total = [], 0
    capped = 0
    for i, doc in enumerate(docs):
        for a, b, n in doc.spans.tolist():
            total += 1
            intact = bool((doc.source_of[b:b + n] == np.arange(a, a + n)).all())
            if n > prompt_tokens and intact and b - a <= context - prompt_tokens:
                tasks.append(CopyTask(i, a, b, n))
    if max_per_bucket is not None:
        e = np.asarray(edges or distance_edges(context))
        bucket = np.searchsorted(e, [t.distance for t in tasks], side="right")
        keep = []
        for k in np.unique(bucket):
            members = np.flatnonzero(bucket == k)
            keep += members[spread(len(members), max_per_bucket)].tolist()
        capped = len(tasks) - len(keep)
        tasks = [tasks[i] for i in sorted(keep)]
    return tasks, total - len(tasks) - capped, capped


def measure_copy_retrieval(model: LogitsFn | torch.nn.Module, docs: list[LabelledDoc], context: int,
                           prompt_tokens: int = PROMPT_TOKENS, *, edges: tuple[int, ...] | None = None,
                           max_per_bucket: int | None = None, per_token: bool = False, batch_tokens: int = 16384,
                           progress: bool = False) -> CopyRetrieval:
    """Exact-match copy completion by distance (module doc). model: a `LogitsFn` or an HF causal LM.
    docs: `repeat_docs.labelled_documents(...)`. context: the most tokens the model reads at a step.
    edges: distance buckets (default `distance_edges(context)`; pass e.g. (1, 128, 512) to pool
    inside and beyond L0 = 128). per_token: also the teacher-forced token accuracy (runs every step
    of every copy; without it a copy stops at its first wrong token). batch_tokens bounds the
    tokens per forward."""
    logits_fn = hf_logits_fn(model) if isinstance(model, torch.nn.Module) else model
    edges = tuple(edges) if edges is not None else distance_edges(context)
    tasks, excluded, capped = copy_tasks(docs, context, prompt_tokens, edges=edges, max_per_bucket=max_per_bucket)
    alive = np.ones(len(tasks), dtype=bool)
    right = np.zeros(len(tasks), dtype=np.int64)  # completion tokens right under teacher forcing
    per_batch = max(1, batch_tokens // context)
    steps = max((t.length - prompt_tokens for t in tasks), default=0)
    bar = tqdm(total=steps, desc=f"copy retrieval @{context}", unit="step", leave=False, disable=not progress or None)
    try:
        for s in range(steps):  # step s predicts token copy + prompt_tokens + s of every copy still exact
            todo = [i for i in range(len(tasks)) if (per_token or alive[i]) and tasks[i].length - prompt_tokens > s]
            for start in range(0, len(todo), per_batch):
                chunk = todo[start:start + per_batch]
                rows, targets = [], []
                for i in chunk:
                    t = tasks[i]
                    end = t.copy + prompt_tokens + s
                    rows.append(docs[t.doc].tokens[max(0, end - context):end])
                    targets.append(int(docs[t.doc].tokens[end]))
                guess = last_position_logits(logits_fn, rows).argmax(-1).cpu().numpy()
                ok = guess == np.asarray(targets)
                alive[chunk] &= ok
                right[chunk] += ok
            bar.update(1)
    finally:
        bar.close()
    share = tuple(float(r) / (t.length - prompt_tokens) for r, t in zip(right, tasks)) if per_token else None
    return CopyRetrieval(context, prompt_tokens, tuple(t.distance for t in tasks), tuple(bool(a) for a in alive),
                         excluded, edges, share, capped)
