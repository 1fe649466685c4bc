"""`lsa eval --tasks copy,split`: the repeated-span world's own measurements, for models scored on
data with a repeated-span source (docs/eval.md, "Copy retrieval and where misalignment comes from").

- copy: `copy_retrieval` at one context for every compared model (default: the longest training
  length among them), by distance bucket, and pooled over distances inside the shortest training
  length L0 and beyond it: base and extended models side by side, inside and beyond L0; and once
  more at a context of L0 tokens, where every model reads only positions it was trained on (at the
  long context a base model reads past its length even for a short distance);
- split: `misalign_split` at each model's own L (the overlap variant of the misalignment metric,
  split by the predicted token's class), so the split adds up to what misalignment measures.

The labelled documents come from the evaluation's chosen data (`data_choice`), tokenized with each
model's tokenizer and cached per tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from lsa_ds.data.tokenizer import Tokenizer
from lsa_ds.eval.copy_retrieval import PROMPT_TOKENS, distance_edges, measure_copy_retrieval
from lsa_ds.eval.forward import LogitsFn
from lsa_ds.eval.misalign_split import measure_misalign_split
from lsa_ds.eval.repeat_docs import LabelledDoc, labelled_documents, labelled_windows, repeat_source
from lsa_ds.eval.stats import Proportion
from lsa_ds.recipe.schema import DataConfig

SPAN_TASKS = ("copy", "split")


@dataclass
class SpanSettings:
    """What the span tasks measure, shared by every compared model."""

    context: int
    """Tokens a model reads when completing a copy (the longest training length by default)."""
    l0: int
    """Distances below it are "inside L0", the rest "beyond" (the shortest training length)."""
    prompt_tokens: int = PROMPT_TOKENS
    max_per_bucket: int = 100
    samples: int = 64
    """Windows of the misalignment split."""
    seed: int = 0

    def to_dict(self) -> dict:
        return {"context": self.context, "l0": self.l0, "prompt_tokens": self.prompt_tokens,
                "max_per_bucket": self.max_per_bucket, "split_windows": self.samples}


class SpanDocs:
    """Labelled held-out documents of the chosen data's repeated-span source, per tokenizer."""

    def __init__(self, data: DataConfig, source: str | None = None):
        self.data, self.source = data, source
        self._docs: dict[str, list[LabelledDoc]] = {}

    def check(self) -> None:
        """Fail before any model loads when the data has no (single, or named) repeated-span source."""
        repeat_source(self.data, self.source)

    def docs(self, tok: Tokenizer) -> list[LabelledDoc]:
        if tok.fingerprint not in self._docs:
            self._docs[tok.fingerprint] = labelled_documents(self.data, tok, self.source)
        return self._docs[tok.fingerprint]


def _pooled(exact: Proportion, tokens) -> dict:
    return {"exact": exact.to_dict(), "tokens": None if tokens is None else tokens.to_dict()}


def copy_entry(logits_fn: LogitsFn, docs: list[LabelledDoc], s: SpanSettings, progress: bool = False) -> dict:
    """The `copy` entry of one model: copy retrieval by distance, and inside / beyond L0."""
    edges = tuple(sorted({*distance_edges(s.context), s.l0}))
    res = measure_copy_retrieval(logits_fn, docs, s.context, s.prompt_tokens, edges=edges,
                                 max_per_bucket=s.max_per_bucket, per_token=True, progress=progress)
    at_l0 = measure_copy_retrieval(logits_fn, docs, s.l0, s.prompt_tokens, max_per_bucket=s.max_per_bucket,
                                   per_token=True, progress=progress) if s.l0 < s.context else res
    return {**res.to_dict(), "l0": s.l0,
            "inside_l0": _pooled(res.within(1, s.l0), res.tokens_within(1, s.l0)),
            "beyond_l0": _pooled(res.within(s.l0, s.context + 1), res.tokens_within(s.l0, s.context + 1)),
            "at_l0": _pooled(at_l0.within(1, s.l0), at_l0.tokens_within(1, s.l0))}


def split_entry(logits_fn: LogitsFn, docs: list[LabelledDoc], seq_len: int, s: SpanSettings,
                progress: bool = False) -> dict:
    """The `split` entry of one model: its overlap misalignment at its own L, split by class."""
    windows, distance = labelled_windows(docs, seq_len + 1, s.samples)
    return measure_misalign_split(logits_fn, windows, distance, seq_len, s.seed, progress=progress).to_dict()
