"""Evaluation: perplexity versus length, long-short misalignment, passkey retrieval, LongBench /
BABILong files, and reports (JSON, Markdown, PNG). `lsa eval` is `lsa_ds.eval.cli`.

The metric functions take a `LogitsFn` (see `forward`), not a model, so the trainer can call them
on its own (ZeRO-3) forward: `perplexity_at`, `measure_misalignment`, and `training.cheap_eval`.
"""

from lsa_ds.eval.forward import LogitsFn, hf_logits_fn
from lsa_ds.eval.misalignment import Misalignment, measure_misalignment
from lsa_ds.eval.perplexity import LengthPerplexity, perplexity_at

__all__ = ["LengthPerplexity", "LogitsFn", "Misalignment", "hf_logits_fn", "measure_misalignment", "perplexity_at"]
