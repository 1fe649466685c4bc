"""Benchmarks users bring (LongBench, BABILong): the example type and the generation loop.

Readers (`longbench.py`, `babilong.py`) turn files into `BenchExample`s with the prompt already
filled in; this module tokenizes each prompt with the model's tokenizer, cuts over-long prompts in
the middle (LongBench's rule), decodes greedily and returns the answers as text. Scoring belongs
to each reader's module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from lsa_ds.data.tokenizer import Tokenizer
from lsa_ds.eval.generation import greedy_generate, middle_truncate


@dataclass
class BenchExample:
    """One prompt to answer and what to score the answer against."""

    benchmark: str
    """"longbench" or "babilong"."""
    task: str
    """LongBench dataset (without a LongBench-E `_e` suffix) or BABILong task (qa1, qa2, ...)."""
    key: str
    """Where it came from: file:line."""
    prompt: str
    answers: list[str]
    max_new_tokens: int
    all_classes: list[str] = field(default_factory=list)
    """LongBench classification tasks: the class names."""
    length: int | str | None = None
    """LongBench-E: the context length in words (bucketed 0-4k / 4-8k / 8k+); BABILong: the
    length label of the split (0k, 1k, 4k, ...)."""
    question: str = ""
    """BABILong: labels mentioned in the question never count as answers."""
    long_e: bool = False
    """A LongBench-E example (scores are also reported per length bucket)."""


def prompt_ids(tok: Tokenizer, prompt: str, max_input_tokens: int | None) -> list[int]:
    """[BOS] + the prompt's tokens, cut in the middle to at most max_input_tokens in total."""
    bos = [tok.bos_id] if tok.add_bos and tok.bos_id is not None and tok.bos_id >= 0 else []
    ids = list(tok.encode_raw([prompt])[0])
    if max_input_tokens:
        ids = middle_truncate(ids, max_input_tokens - len(bos))
    return bos + ids


def generate_answers(model: torch.nn.Module, tok: Tokenizer, examples: list[BenchExample],
                     max_input_tokens: int | None, progress: bool = False, desc: str = "benchmark") -> list[str]:
    """The model's greedy answer (text) to every example, in order."""
    stop = [tok.eos_id] if tok.eos_id is not None and tok.eos_id >= 0 else []
    iterator = examples
    if progress:
        iterator = tqdm(examples, desc=desc, unit="example", leave=False, dynamic_ncols=True, disable=None)
    answers = []
    for ex in iterator:
        ids = prompt_ids(tok, ex.prompt, max_input_tokens)
        (gen,) = greedy_generate(model, [ids], ex.max_new_tokens, stop, batch_size=1)
        answers.append(tok.decode(gen))
    return answers
