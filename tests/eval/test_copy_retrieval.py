"""Copy retrieval (lsa_ds/eval/copy_retrieval.py): an oracle that copies from whatever source it can
see scores 1 on exactly the copies whose source fits the context, a constant model scores 0, the
batched teacher-forced steps give the outcomes of real greedy generation with a sliding window,
and a tiny LLaMA and the held-out documents of a recipe run through it."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from lsa_ds.data.repeats import repeat_layout
from lsa_ds.eval.copy_retrieval import PROMPT_TOKENS, copy_tasks, distance_edges, measure_copy_retrieval
from lsa_ds.eval.repeat_docs import LabelledDoc, labelled_documents, labelled_windows
from lsa_ds.eval.stats import Z95, wilson
from lsa_ds.recipe.schema import RepeatConfig

V = 512
CFG = RepeatConfig(segment_tokens=128, per_segment=4, span_min=8, span_max=12, content="random", alphabet=16)


def synthetic_docs(count: int = 8, length: int = 400, cfg: RepeatConfig = CFG) -> list[LabelledDoc]:
    """Documents of random ids in [4, V) (BOS 1 ... EOS 2) with repeated spans."""
    docs = []
    for k in range(count):
        ids = [1, *np.random.default_rng(k).integers(4, V, size=length - 2).tolist(), 2]
        tokens, spans, source_of = repeat_layout(ids, f"doc{k}", cfg, np.arange(4, V))
        docs.append(LabelledDoc(f"doc{k}", np.asarray(tokens), spans, source_of))
    return docs


def oracle(docs: list[LabelledDoc], context: int, wrong_at=lambda doc, end: False):
    """A LogitsFn that knows the documents: for a row doc.tokens[start:end] it predicts, at the last
    position, the token at the source of token `end` when that source is inside the row (a perfect
    copier), else token 0 (never in a document); `wrong_at(doc, end)` makes chosen steps wrong. Rows
    it does not know (a greedy loop fed its own wrong guess) get token 0 too."""
    table = {}
    for i, d in enumerate(docs):
        for end in range(1, len(d.tokens)):
            start = max(0, end - context)
            src = int(d.source_of[end])
            guess = int(d.tokens[src]) if src >= start and not wrong_at(i, end) else 0
            table[d.tokens[start:end].tobytes()] = guess
    seen = []

    def logits_fn(ids: torch.Tensor, keep) -> torch.Tensor:
        keep = keep if isinstance(keep, torch.Tensor) else torch.arange(ids.shape[1] - keep, ids.shape[1])
        out = torch.zeros(ids.shape[0], len(keep), V)
        for r in range(ids.shape[0]):
            for j, p in enumerate(keep.tolist()):
                out[r, j, table.get(ids[r, :p + 1].numpy().tobytes(), 0)] = 1.0
        seen.append(ids.shape)
        return out

    logits_fn.seen = seen
    return logits_fn


def test_a_perfect_copier_scores_one_on_exactly_the_copies_whose_source_fits_the_context():
    docs, C, k = synthetic_docs(), 48, PROMPT_TOKENS
    all_spans = [(i, a, b, n) for i, d in enumerate(docs) for a, b, n in d.spans.tolist()]
    fits = [b - a for _, a, b, n in all_spans if b - a <= C - k]
    assert 0 < len(fits) < len(all_spans)  # both kinds are present
    fn = oracle(docs, C)
    res = measure_copy_retrieval(fn, docs, C, batch_tokens=16 * C)
    assert sorted(res.distances) == sorted(fits) and res.excluded == len(all_spans) - len(fits) and res.capped == 0
    assert res.overall.value == 1.0 and res.overall.n == len(fits)
    assert max(s[1] for s in fn.seen) <= C and max(s[0] for s in fn.seen) <= 16  # never more than C tokens
    buckets = res.by_distance()
    assert [(b.lo, b.hi) for b in buckets] == list(zip(distance_edges(C)[:-1], distance_edges(C)[1:]))
    assert sum(b.accuracy.n for b in buckets) == len(fits)
    assert all(b.accuracy.value == 1.0 for b in buckets if b.accuracy.n)
    inside = res.within(1, 32)
    assert inside.n == sum(d < 32 for d in fits) and inside.lo > 0.8
    # twice the context admits the far copies too, and a copier that sees twice as far gets them all
    wide = measure_copy_retrieval(oracle(docs, 2 * C), docs, 2 * C)
    assert wide.overall.n > res.overall.n and wide.overall.value == 1.0


def test_a_constant_model_scores_zero():
    docs = synthetic_docs(4)

    def constant(ids, keep):
        n = keep if isinstance(keep, int) else len(keep)
        out = torch.zeros(ids.shape[0], n, V)
        out[..., 0] = 1.0
        return out

    res = measure_copy_retrieval(constant, docs, 64)
    assert res.overall.n > 10 and res.overall.value == 0.0 and res.overall.hi < 0.4
    assert res.to_dict()["overall"]["hits"] == 0 and "n=" in res.text()


def _greedy(fn, doc: LabelledDoc, copy: int, n: int, context: int, k: int) -> bool:
    """Real greedy generation: feed the model's own guesses, the window sliding at `context` tokens."""
    seq = list(doc.tokens[:copy + k])
    for _ in range(n - k):
        row = torch.tensor([seq[-context:]])
        seq.append(int(fn(row, 1)[0, -1].argmax()))
    return seq[copy + k:copy + n] == doc.tokens[copy + k:copy + n].tolist()


def test_batched_teacher_forced_steps_give_the_outcomes_of_greedy_generation():
    docs, C = synthetic_docs(4), 40
    fn = oracle(docs, C, wrong_at=lambda doc, end: (doc + end) % 23 == 0)  # some copies fail mid-way
    res = measure_copy_retrieval(fn, docs, C, max_per_bucket=12, batch_tokens=5 * C)
    tasks, excluded, capped = copy_tasks(docs, C, max_per_bucket=12)
    assert (res.excluded, res.capped) == (excluded, capped) and capped > 0
    assert excluded + capped + len(tasks) == sum(len(d.spans) for d in docs)
    expected = [_greedy(fn, docs[t.doc], t.copy, t.length, C, PROMPT_TOKENS) for t in tasks]
    assert list(res.correct) == expected and 0 < sum(expected) < len(expected)
    assert [t.distance for t in tasks] == list(res.distances)
    per_bucket = np.bincount(np.searchsorted(distance_edges(C), res.distances, side="right"))
    assert per_bucket.max() <= 12
    # every step of every copy: the same outcomes, and the share of steps the oracle gets right
    full = measure_copy_retrieval(fn, docs, C, max_per_bucket=12, per_token=True, batch_tokens=5 * C)
    assert full.correct == res.correct and res.token_share is None
    for t, share in zip(tasks, full.token_share):
        steps = range(t.copy + PROMPT_TOKENS, t.copy + t.length)
        assert share == pytest.approx(1 - sum((t.doc + end) % 23 == 0 for end in steps) / len(steps))
    tok = full.tokens_within(1, C)
    assert tok.mean == pytest.approx(np.mean(full.token_share)) and 0.0 <= tok.lo <= tok.mean <= tok.hi <= 1.0
    assert "tokens" in full.text() and full.by_distance()[-1].to_dict()["token_accuracy"] is not None


def test_wilson_bounds_solve_the_score_equation_and_stay_in_range():
    for hits, n in [(0, 5), (5, 5), (3, 10), (81, 263), (1, 1000)]:
        p = wilson(hits, n)
        assert 0.0 <= p.lo <= p.value <= p.hi <= 1.0
        for bound in (p.lo, p.hi):  # a Wilson bound x satisfies n (p_hat - x)^2 = z^2 x (1 - x)
            assert n * (hits / n - bound) ** 2 == pytest.approx(Z95 ** 2 * bound * (1 - bound), abs=1e-9)
    assert math.isnan(wilson(0, 0).value)
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_a_tiny_llama_and_a_recipes_held_out_documents_run_through(prepared):
    from transformers import LlamaConfig, LlamaForCausalLM

    recipe, cache = prepared
    data = recipe.data.model_copy(deep=True)
    data.sources[0] = data.sources[0].model_copy(update={"name": "copies", "repeat": CFG})
    docs = labelled_documents(data, cache.tokenizer, max_tokens=20_000)
    assert docs and all(len(d.tokens) >= data.min_doc_tokens for d in docs)
    assert sum(len(d.spans) for d in docs) > 20
    # the documents are the held-out text `lsa eval` reads for this source: the same windows
    from lsa_ds.eval.heldout import text_windows

    everything = labelled_documents(data, cache.tokenizer)
    np.testing.assert_array_equal(labelled_windows(everything, 64, 8)[0], text_windows(data, cache.tokenizer, 64, 8))

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=cache.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                         max_position_embeddings=64)).eval()
    res = measure_copy_retrieval(model, docs, 64, max_per_bucket=4)
    assert 0 < res.overall.n <= 4 * (len(distance_edges(64)) - 1) and res.excluded > 0
    assert 0.0 <= res.overall.value <= 1.0 and res.to_dict()["by_distance"]


def test_lsa_eval_copy_and_split_compare_two_models_on_one_repeated_span_source(model_dir, tmp_path, capsys):
    import json

    from lsa_ds import cli

    recipe = tmp_path / "copies.yaml"
    recipe.write_text("data:\n  sources:\n    - {name: stdlib, type: stdlib, max_documents: 160, holdout: 0.1}\n"
                      "    - {name: copies, type: stdlib, max_documents: 160, holdout: 0.1, "
                      "repeat: {segment_tokens: 64, per_segment: 2, span_min: 8, span_max: 12}}\n")
    short = tmp_path / "short"  # the same weights as a model trained at L = 32
    shutil.copytree(model_dir, short)
    out = tmp_path / "out"
    assert cli.main(["eval", "--compare", str(short), str(model_dir), "--length", "32", "--out", str(out),
                     "--data", str(recipe), "--tasks", "copy,split", "--copy-context", "64",
                     "--copy-max-per-bucket", "3", "--misalign-samples", "4", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["span"] == {"context": 64, "l0": 32, "prompt_tokens": 4, "max_per_bucket": 3,
                                          "split_windows": 4}
    for m in report["models"]:
        c = m["copy"]
        assert c["context"] == 64 and c["l0"] == 32 and c["inside_l0"]["exact"]["n"] > 0
        assert 0 <= c["inside_l0"]["tokens"]["mean"] <= 1 and c["beyond_l0"]["exact"]["n"] > 0
        assert 0 < c["at_l0"]["exact"]["n"] <= c["inside_l0"]["exact"]["n"]  # at L0 a source must fit in L0 tokens
        bounds = [(b["from"], b["to"]) for b in c["by_distance"]]  # the buckets keep their distances
        assert bounds[0][0] == 1 and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:])) and (32, 64) in bounds
        split = m["split"]
        assert [k["name"] for k in split["classes"]] == ["cut", "shared", "unseen", "plain"]
        assert sum(k["share"] for k in split["classes"]) == pytest.approx(1.0)
    md = (out / "report.md").read_text()
    assert "## Copy retrieval by distance" in md and "## Where misalignment comes from" in md
    assert "copy_by_distance.png" in report["plots"]
    # one model at a time (a sweep's evaluation): --copy-l0 sets L0 and the second context
    single = tmp_path / "single"
    assert cli.main(["eval", str(model_dir), "--length", "64", "--out", str(single), "--data", str(recipe),
                     "--tasks", "copy", "--copy-l0", "32", "--copy-max-per-bucket", "2", "--no-progress"]) == 0
    (m,) = json.loads((single / "report.json").read_text())["models"]
    assert m["copy"]["context"] == 64 and m["copy"]["l0"] == 32 and m["copy"]["beyond_l0"]["exact"]["n"] > 0
    capsys.readouterr()
    assert cli.main(["eval", str(model_dir), "--out", str(single), "--data", str(recipe), "--tasks", "copy",
                     "--copy-l0", "128"]) == 2
    assert "--copy-l0 128, --copy-context 64" in capsys.readouterr().err
    # a data set without repeated spans is refused before any model loads, in one line
    plain = tmp_path / "plain.yaml"
    plain.write_text("data:\n  sources: [{name: stdlib, type: stdlib, max_documents: 40, holdout: 0.1}]\n")
    capsys.readouterr()
    assert cli.main(["eval", str(model_dir), "--out", str(out), "--data", str(plain), "--tasks", "copy"]) == 2
    assert "copy metrics need exactly one source with `repeat` set" in capsys.readouterr().err
