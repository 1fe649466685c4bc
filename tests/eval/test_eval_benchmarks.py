"""LongBench / BABILong readers and scorers on fixture files written in the real formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsa_ds.errors import UserError
from lsa_ds.eval import babilong, bench_metrics, longbench

FIXTURES = Path(__file__).parent / "fixtures"

# example _id -> the prediction a model "made" and the per-example score worked out by hand
LONGBENCH_PREDICTIONS = {
    "hq-1": ("paris.", 1.0),                                     # normalised exact match
    "hq-2": ("It is the Eiffel tower in France", 0.5),           # 2 common tokens of 6 predicted / 2 true
    "trec-1": ("City\nLocation", 1.0),                           # first line only
    "trec-2": ("Location or Country", 0.5),                      # two classes named: 1/2
    "trec-3": ("Human being", 0.0),
    "pc-1": ("There are 7 paragraphs, not 8", 0.5),              # one of two numbers right
    "pc-2": ("3", 1.0),
    "pr-1": ("Paragraph 12", 1.0),
    "pr-2": ("Paragraph 3 or 12", 0.5),
    "gr-1": ("The agency reduced costs by ten percent.", 6 / 7),  # Rouge-L: LCS 6 of 7 and 7 tokens
    "gr-2": ("Nothing relevant", 0.0),
    "lcc-1": ("# increment\nreturn x + 1\n", 1.0),               # comment lines skipped
}


def _id_of(ex) -> str:
    path, line = ex.key.rsplit(":", 1)
    return json.loads(Path(path).read_text().splitlines()[int(line) - 1])["_id"]


def test_longbench_reader_fills_prompts_and_fields():
    examples = longbench.read_longbench(str(FIXTURES / "longbench"))
    assert len(examples) == len(LONGBENCH_PREDICTIONS)
    by_id = {_id_of(ex): ex for ex in examples}
    hq = by_id["hq-1"]
    assert hq.task == "hotpotqa" and hq.answers == ["Paris"] and hq.max_new_tokens == 32
    assert "Paris is the capital" in hq.prompt and hq.prompt.rstrip().endswith("Answer:")
    assert hq.prompt.index("Paris is the capital") < hq.prompt.index("Which city is the capital")
    gr = by_id["gr-1"]
    assert gr.task == "gov_report" and gr.long_e and gr.length == 3000
    assert by_id["trec-1"].all_classes[:2] == ["Location", "City"] and by_id["pc-1"].answers == ["7"]


def test_longbench_scores_match_hand_computed_values():
    examples = longbench.read_longbench(str(FIXTURES / "longbench"))
    preds = [LONGBENCH_PREDICTIONS[_id_of(ex)][0] for ex in examples]
    for ex, pred in zip(examples, preds):
        assert longbench.score_example(ex, pred) == pytest.approx(LONGBENCH_PREDICTIONS[_id_of(ex)][1]), _id_of(ex)
    summary = longbench.summarise(examples, preds)
    scores = {t: v["score"] for t, v in summary["tasks"].items()}
    assert scores == {"hotpotqa": 75.0, "trec": 50.0, "passage_count": 75.0, "passage_retrieval_en": 75.0,
                      "gov_report": 42.86, "lcc": 100.0}
    assert summary["tasks"]["gov_report"]["metric"] == "rouge_l"
    assert summary["tasks"]["gov_report"]["buckets"] == {"0-4k": 85.71, "4-8k": 0.0, "8k+": None}
    assert "buckets" not in summary["tasks"]["hotpotqa"]
    assert summary["average"] == pytest.approx((75 + 50 + 75 + 75 + 42.86 + 100) / 6, abs=0.01)


def test_longbench_prompt_and_maxlen_files_override_the_builtins(tmp_path):
    maxlen = tmp_path / "maxlen.json"
    maxlen.write_text(json.dumps({"hotpotqa": 5}))
    examples = longbench.read_longbench(str(FIXTURES / "longbench" / "hotpotqa.jsonl"),
                                        str(FIXTURES / "longbench_prompts.json"), str(maxlen), max_examples=1)
    assert len(examples) == 1 and examples[0].max_new_tokens == 5
    assert examples[0].prompt.startswith("Context: Passage 1:") and examples[0].prompt.endswith("\nA:")


def test_babilong_reader_and_scores():
    examples = babilong.read_babilong(str(FIXTURES / "babilong"))
    assert sorted({(ex.task, ex.length) for ex in examples}) == [("qa1", "1k"), ("qa5", "1k"), ("qa8", "4k")]
    qa1 = next(ex for ex in examples if ex.task == "qa1")
    assert "<context>\nThe weather was mild." in qa1.prompt and qa1.prompt.endswith("Question: Where is Mary?\nAnswer:")
    predictions = {
        ("qa1", "Where is Mary?"): "Mary is in the bathroom.",      # the target is the only label: right
        ("qa1", "Where is John?"): "The kitchen or the garden.",    # two labels: wrong
        ("qa1", "Where is Sandra?"): "hallway. Then she went to the office",  # only the first sentence counts
        ("qa5", "Who did Mary give the apple to?"): "Mary gave the apple to Fred",  # labels in the question ignored
        ("qa8", "What is Daniel carrying?"): None,
        ("qa8", "What is Sandra carrying?"): "Nothing.",
    }
    preds = []
    for ex in examples:
        p = predictions[(ex.task, ex.question)]
        if p is None:  # two qa8 questions are identical; answer by target
            p = "apple, milk" if ex.answers[0] == "apple,milk" else "milk"
        preds.append(p)
    summary = babilong.summarise(examples, preds)
    assert {t: v["score"] for t, v in summary["tasks"].items()} == {"qa1": 66.67, "qa5": 100.0, "qa8": 66.67}
    assert summary["tasks"]["qa8"]["by_length"] == {"4k": 66.67}
    assert summary["average"] == pytest.approx(77.78, abs=0.01)


def test_metric_functions_on_edge_cases():
    assert bench_metrics.qa_f1("", "answer") == 0.0
    assert bench_metrics.rouge_l("", "x") == 0.0 and bench_metrics.rouge_l("a b c", "a b c") == pytest.approx(1.0)
    assert bench_metrics.count("no numbers", "3") == 0.0
    assert bench_metrics.retrieval("3", "no paragraph id") == 0.0
    assert bench_metrics.qa_f1_zh("巴黎。", "巴黎") == 1.0
    assert bench_metrics.code_sim("```\nx = 1", "x = 1") == 1.0


@pytest.mark.parametrize("content, message", [
    ("{not json\n", "malformed JSON"),
    ('{"input": "q", "answers": ["a"]}\n', "missing context"),
])
def test_malformed_benchmark_files_are_user_errors(tmp_path, content, message):
    f = tmp_path / "hotpotqa.jsonl"
    f.write_text(content)
    with pytest.raises(UserError, match=message):
        longbench.read_longbench(str(f))
    with pytest.raises(UserError, match="no such file"):
        babilong.read_babilong(str(tmp_path / "missing"))
