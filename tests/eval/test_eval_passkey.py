"""Passkey prompts are token-exact (length and needle depth); answers are scored end to end."""

from __future__ import annotations

import json

import pytest
import torch

from lsa_ds import cli
from lsa_ds.errors import UserError
from lsa_ds.eval import passkey
from lsa_ds.eval.passkey import build_prompt, draw_key, fixed_tokens, is_correct, run_passkey


@pytest.mark.parametrize("length", [300, 301, 517])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.77, 1.0])
def test_prompt_has_the_exact_length_and_the_needle_at_the_requested_depth(tiny, length, depth):
    _, tok = tiny
    key = draw_key(0, length, depth, 0)
    p = build_prompt(tok, length, depth, key)
    assert len(p.ids) == length
    head = [tok.bos_id] + tok.encode_raw([passkey.INSTRUCTION])[0]
    needle = tok.encode_raw([passkey.NEEDLE.format(key=key)])[0]
    question = tok.encode_raw([passkey.QUESTION])[0]
    filler_total = length - len(head) - len(needle) - len(question)
    assert p.filler_total == filler_total and p.filler_before == round(depth * filler_total)
    assert p.ids[:len(head)] == head and p.ids[-len(question):] == question
    assert p.needle_start == len(head) + round(depth * filler_total)
    assert p.ids[p.needle_start:p.needle_start + len(needle)] == needle
    filler = passkey.filler_tokens(tok, filler_total)
    assert p.ids[len(head):p.needle_start] + p.ids[p.needle_start + len(needle):-len(question)] == filler
    assert key in tok.decode(p.ids) and len(key) == 5 and key.isdigit()


def test_too_short_lengths_are_refused_and_marked_in_the_grid(tiny):
    model, tok = tiny
    with pytest.raises(UserError, match="shorter than the prompt"):
        build_prompt(tok, fixed_tokens(tok) - 1, 0.5, "12345")
    res = run_passkey(model, tok, [fixed_tokens(tok) - 1], [0.5], samples=1, new_tokens=2)
    assert res.accuracy == [[None]] and res.overall() is None


def test_answers_are_scored_by_the_key_digits():
    assert is_correct(" 12345. Remember", "12345")
    assert is_correct("1 2 3 4 5", "12345")
    assert not is_correct(" 12346", "12345") and not is_correct("", "12345")


class _Reader(torch.nn.Module):
    """A 'model' that answers with the key it finds in the prompt (or a wrong one), through the
    same greedy_generate path: the whole passkey pipeline must then score 1.0 (or 0.0)."""

    def __init__(self, tok, wrong: bool = False):
        super().__init__()
        self.tok, self.wrong, self.w = tok, wrong, torch.nn.Parameter(torch.zeros(1))

    def generate(self, input_ids, attention_mask, generation_config):
        rows = []
        for ids in input_ids.tolist():
            text = self.tok.decode(ids)
            key = text.split("The pass key is ")[1][:5]
            if self.wrong:
                key = f"{(int(key) + 1) % 100000:05d}"
            answer = self.tok.encode_raw([" " + key + "."])[0][:generation_config.max_new_tokens]
            rows.append(ids + answer + [self.tok.eos_id] * (generation_config.max_new_tokens - len(answer)))
        return torch.tensor(rows)


def test_a_model_that_finds_the_key_scores_one_and_a_wrong_one_zero(tiny):
    _, tok = tiny
    lengths, depths = [300, 400], [0.0, 0.5, 1.0]
    right = run_passkey(_Reader(tok), tok, lengths, depths, samples=3, new_tokens=8)
    assert right.accuracy == [[1.0] * 3] * 2 and right.overall() == 1.0
    wrong = run_passkey(_Reader(tok, wrong=True), tok, lengths, depths, samples=3, new_tokens=8)
    assert wrong.overall() == 0.0


def test_a_real_model_is_scored_on_its_own_greedy_answers(tiny):
    """The tiny HF model through the batched pipeline: each cell's accuracy is the key rule applied
    to what transformers' own generate answers for each prompt alone (known answers, computed
    independently of greedy_generate's batching and stop handling)."""
    model, tok = tiny
    depths = [0.0, 1.0]
    res = run_passkey(model, tok, [300], depths, samples=2, new_tokens=6)
    first = None
    for j, d in enumerate(depths):
        prompts = [build_prompt(tok, 300, d, draw_key(0, 300, d, s)) for s in range(2)]
        answers = []
        for p in prompts:
            ids = torch.tensor([p.ids])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                                 max_new_tokens=6, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)[0, 300:].tolist()
            answers.append(tok.decode(out[:out.index(tok.eos_id)] if tok.eos_id in out else out))
        assert res.accuracy[0][j] == sum(is_correct(a, p.key) for a, p in zip(answers, prompts)) / 2
        first = first or {"length": 300, "depth": d, "key": prompts[0].key, "answer": answers[0]}
    assert res.examples[0] == first


def test_needle_in_a_haystack_hides_the_needle_in_held_out_text(model_dir, tmp_path):
    out = tmp_path / "niah"
    assert cli.main(["eval", str(model_dir), "--out", str(out), "--tasks", "niah", "--passkey-lengths", "120,300",
                     "--passkey-depths", "0,0.5,1", "--passkey-samples", "1", "--passkey-new-tokens", "6",
                     "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    (m,) = report["models"]
    assert "passkey" not in m and m["niah"]["lengths"] == [120, 300] and len(m["niah"]["accuracy"][0]) == 3
    assert report["plots"] == ["niah.png"] and (out / "niah.png").read_bytes().startswith(b"\x89PNG")
    assert "## Needle in a haystack" in (out / "report.md").read_text()


def test_the_haystack_replaces_the_repeated_filler(tiny):
    model, tok = tiny
    haystack = list(range(10, 10 + 400))
    p = build_prompt(tok, fixed_tokens(tok) + 200, 0.5, "12345", haystack)
    assert p.filler_before == 100
    assert p.ids[p.needle_start - p.filler_before:p.needle_start] == haystack[:p.filler_before]
    with pytest.raises(UserError, match="held-out tokens, fewer than"):
        run_passkey(model, tok, [fixed_tokens(tok) + 500], [0.5], 1, haystack=haystack)
