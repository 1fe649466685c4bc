"""Passkey retrieval: a 5-digit key hidden at a chosen depth in filler text, asked for at the end.

The prompt is the standard one from the context-extension literature (Mohtashami & Jaggi 2023, as
used by LongLoRA, YaRN and others): an instruction, the filler "The grass is green. ..." repeated,
the needle "The pass key is K. Remember it. K is the pass key." and the question "What is the
pass key? The pass key is". It is assembled from token ids, not text, so it is token-exact:

    [BOS] instruction | filler[:b] | needle | filler[b:F] | question      (total = length)

F = length - (the fixed parts) filler tokens, b = round(depth × F): depth 0 puts the needle
right after the instruction, depth 1 right before the question. The filler is one long token
stream cut at token granularity. Decoding is greedy; an answer is correct when the key's five
digits appear in the continuation (whitespace removed).

Needle in a haystack (`lsa eval --tasks niah`) is the same prompt and grid with another filler:
held-out text of the evaluation's data (`haystack`, token ids of consecutive held-out windows, in
the model's own tokens) instead of the repeated sentences, so the needle hides in text like the
text the model was trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from lsa_ds.data.tokenizer import Tokenizer
from lsa_ds.errors import UserError
from lsa_ds.eval.generation import greedy_generate

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
               "I will quiz you about the important information there.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


@dataclass(frozen=True)
class PasskeyPrompt:
    """One token-exact prompt."""

    ids: list[int]
    key: str
    needle_start: int
    """Index of the needle's first token in `ids`."""
    needle_len: int
    filler_before: int
    """Filler tokens before the needle (= round(depth × filler_total))."""
    filler_total: int


def _head(tok: Tokenizer) -> list[int]:
    bos = [tok.bos_id] if tok.add_bos and tok.bos_id is not None and tok.bos_id >= 0 else []
    return bos + list(tok.encode_raw([INSTRUCTION])[0])


def filler_tokens(tok: Tokenizer, n: int) -> list[int]:
    """The first n tokens of the filler repeated (tokenized as one text, so merges are natural)."""
    unit = len(tok.encode_raw([FILLER])[0]) or 1
    reps = n // unit + 2
    while True:
        ids = list(tok.encode_raw([FILLER * reps])[0])
        if len(ids) >= n:
            return ids[:n]
        reps *= 2


def fixed_tokens(tok: Tokenizer) -> int:
    """Tokens of a prompt that are not filler (instruction, needle with a 5-digit key, question)."""
    return len(_head(tok)) + len(tok.encode_raw([NEEDLE.format(key="12345")])[0]) + len(tok.encode_raw([QUESTION])[0])


def build_prompt(tok: Tokenizer, length: int, depth: float, key: str, filler: list[int] | None = None) -> PasskeyPrompt:
    """The prompt of exactly `length` tokens with the needle at `depth` (0..1) of the filler."""
    if not 0.0 <= depth <= 1.0:
        raise UserError(f"passkey depth {depth} must be in [0, 1]")
    head = _head(tok)
    needle = list(tok.encode_raw([NEEDLE.format(key=key)])[0])
    question = list(tok.encode_raw([QUESTION])[0])
    total_filler = length - len(head) - len(needle) - len(question)
    if total_filler < 0:
        raise UserError(f"passkey length {length} is shorter than the prompt without filler "
                        f"({length - total_filler} tokens); use longer --passkey-lengths")
    filler = filler if filler is not None and len(filler) >= total_filler else filler_tokens(tok, total_filler)
    before = round(depth * total_filler)
    ids = head + filler[:before] + needle + filler[before:total_filler] + question
    return PasskeyPrompt(ids, key, len(head) + before, len(needle), before, total_filler)


def draw_key(seed: int, length: int, depth: float, sample: int) -> str:
    rng = np.random.default_rng([seed, 0x9A55, length, round(depth * 10_000), sample])
    return str(int(rng.integers(10_000, 100_000)))


def is_correct(answer: str, key: str) -> bool:
    """The key's digits appear in the answer (whitespace between digits ignored)."""
    return key in re.sub(r"\s+", "", answer)


@dataclass
class PasskeyResult:
    lengths: list[int]
    depths: list[float]
    samples: int
    accuracy: list[list[float | None]]
    """[length][depth]; None where the length cannot hold the prompt's fixed part."""
    examples: list[dict]
    """A few prompts' answers, for the report."""

    def by_length(self) -> list[float | None]:
        return [None if all(a is None for a in row) else float(np.mean([a for a in row if a is not None]))
                for row in self.accuracy]

    def overall(self) -> float | None:
        cells = [a for row in self.accuracy for a in row if a is not None]
        return float(np.mean(cells)) if cells else None

    def to_dict(self) -> dict:
        return {"lengths": self.lengths, "depths": self.depths, "samples_per_cell": self.samples,
                "accuracy": self.accuracy, "accuracy_by_length": self.by_length(), "accuracy_overall": self.overall(),
                "examples": self.examples, "rule": "key digits appear in the greedy continuation"}


def run_passkey(model: torch.nn.Module, tok: Tokenizer, lengths: list[int], depths: list[float], samples: int = 4,
                new_tokens: int = 8, seed: int = 0, batch_size: int = 8, progress: bool = False,
                desc: str = "passkey", haystack: list[int] | None = None) -> PasskeyResult:
    """Accuracy over the grid lengths × depths, `samples` keys per cell, greedy decoding. With
    `haystack` (token ids, at least max(lengths) of them) the filler is that text (needle in a
    haystack) instead of the repeated sentences."""
    fixed = fixed_tokens(tok)
    need = max(0, max(lengths) - fixed)
    if haystack is not None and len(haystack) < need:
        raise UserError(f"needle in a haystack: {len(haystack)} held-out tokens, fewer than the {need} the longest "
                        "prompt needs; use shorter --passkey-lengths")
    filler = list(haystack[:need]) if haystack is not None else filler_tokens(tok, need)
    stop = [tok.eos_id] if tok.eos_id is not None and tok.eos_id >= 0 else []
    acc: list[list[float | None]] = []
    examples: list[dict] = []
    bar = None
    if progress:
        bar = tqdm(total=len(lengths) * len(depths), desc=desc, unit="cell", leave=False, dynamic_ncols=True, disable=None)
    try:
        for n in lengths:
            row: list[float | None] = []
            for d in depths:
                try:
                    prompts = [build_prompt(tok, n, d, draw_key(seed, n, d, s), filler) for s in range(samples)]
                except UserError:  # the length cannot hold the instruction, needle and question
                    prompts = []
                if not prompts:
                    row.append(None)
                else:
                    gens = greedy_generate(model, [p.ids for p in prompts], new_tokens, stop, batch_size)
                    answers = [tok.decode(g) for g in gens]
                    row.append(float(np.mean([is_correct(a, p.key) for a, p in zip(answers, prompts)])))
                    if len(examples) < 6:
                        examples.append({"length": n, "depth": d, "key": prompts[0].key, "answer": answers[0]})
                if bar is not None:
                    bar.update(1)
            acc.append(row)
    finally:
        if bar is not None:
            bar.close()
    return PasskeyResult(list(lengths), list(depths), samples, acc, examples)
