"""LongBench and LongBench-E: read the JSONL files users bring, prompt, score.

Assumed format (LongBench's release, one file per dataset, `<dataset>.jsonl` or, for LongBench-E,
`<dataset>_e.jsonl`): one JSON object per line with
`input` (the question or query; may be empty), `context` (the long text), `answers` (list of
reference strings), `length` (context length in words), `dataset`, `language`, `all_classes`
(class names for classification tasks, else null) and `_id`. PATH may be one file or a folder of
them. The task is the record's `dataset` (else the file name), with a trailing `_e` removed.

Prompts: built-in templates per task family (our wording, same structure as LongBench's: the
context, then the question, then an answer cue). For numbers comparable with published ones pass
LongBench's own `config/dataset2prompt.json` as --longbench-prompts (templates with {context} and
{input}) and `config/dataset2maxlen.json` as --longbench-maxlen. Scores follow LongBench: the best
over reference answers, × 100, averaged per task; tasks whose answers are one line (trec,
triviaqa, samsum, lsht) score only the first line of the answer; LongBench-E adds the buckets
0-4k, 4-8k and 8k+ words.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lsa_ds.errors import UserError
from lsa_ds.eval.bench_metrics import METRICS
from lsa_ds.eval.benchmarks import BenchExample

_QA_EN = ("Read the text below, then answer the question. Give only the answer, as briefly as possible.\n\n"
          "{context}\n\nQuestion: {input}\nAnswer:")
_QA_ZH = "阅读下面的文字，然后简短回答问题，只给出答案。\n\n{context}\n\n问题：{input}\n回答："
_SUMMARY = "Summarize the text below in a few paragraphs.\n\n{context}\n\nSummary:"
_FEW_SHOT = "{context}\n{input}"
_CODE = "Complete the code below.\n{context}Next line of code:\n"

TASKS: dict[str, tuple[str, int, str]] = {
    # dataset: (metric, max new tokens, prompt template)
    "narrativeqa": ("qa_f1", 128, _QA_EN), "qasper": ("qa_f1", 128, _QA_EN),
    "multifieldqa_en": ("qa_f1", 64, _QA_EN), "multifieldqa_zh": ("qa_f1_zh", 64, _QA_ZH),
    "hotpotqa": ("qa_f1", 32, _QA_EN), "2wikimqa": ("qa_f1", 32, _QA_EN), "musique": ("qa_f1", 32, _QA_EN),
    "dureader": ("rouge_l_zh", 128, _QA_ZH),
    "gov_report": ("rouge_l", 512, _SUMMARY), "multi_news": ("rouge_l", 512, _SUMMARY),
    "qmsum": ("rouge_l", 512, "Answer the query about the meeting transcript below in a few sentences.\n\n"
                              "{context}\n\nQuery: {input}\nAnswer:"),
    "vcsum": ("rouge_l_zh", 512, "用几句话总结下面的会议记录。\n\n{context}\n\n总结："),
    "trec": ("classification", 64, "Classify the type of the last question, like the examples.\n\n" + _FEW_SHOT),
    "triviaqa": ("qa_f1", 32, "Answer the last question from its passage, like the examples.\n\n" + _FEW_SHOT),
    "samsum": ("rouge_l", 128, "Summarize the last dialogue in a few sentences, like the examples.\n\n" + _FEW_SHOT),
    "lsht": ("classification", 64, "按照示例判断最后一则新闻的类别。\n\n" + _FEW_SHOT),
    "passage_count": ("count", 32, "Some of the paragraphs below are repeated. How many different paragraphs "
                                   "are there? Answer with a number only.\n\n{context}\n\n"
                                   "Number of different paragraphs:"),
    "passage_retrieval_en": ("retrieval", 32, "Which of the paragraphs below is the abstract taken from? Answer "
                                              "like \"Paragraph 7\".\n\n{context}\n\nAbstract: {input}\n\nAnswer:"),
    "passage_retrieval_zh": ("retrieval_zh", 32, "下面的摘要出自哪一个段落？请按“段落7”的格式回答。\n\n"
                                                 "{context}\n\n摘要：{input}\n\n答案："),
    "lcc": ("code_sim", 64, _CODE),
    "repobench-p": ("code_sim", 64, "Complete the code below.\n{context}{input}Next line of code:\n"),
}
"""Known datasets; any other name uses the English QA template, qa_f1 and 64 new tokens."""
FIRST_LINE_TASKS = {"trec", "triviaqa", "samsum", "lsht"}
E_BUCKETS = (("0-4k", 0, 4000), ("4-8k", 4000, 8000), ("8k+", 8000, float("inf")))


def _load_json_map(path: str | None, what: str) -> dict:
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read {what} ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: {what} must be a JSON object (dataset -> value)")
    return data


def _files(path: str) -> list[Path]:
    p = Path(path)
    files = sorted(p.rglob("*.jsonl")) if p.is_dir() else [p]
    if not files or not all(f.is_file() for f in files):
        raise UserError(f"--longbench {path}: no such file, or a folder without .jsonl files")
    return files


def read_longbench(path: str, prompts_file: str | None = None, maxlen_file: str | None = None,
                   max_examples: int | None = None) -> list[BenchExample]:
    """Examples of every LongBench(-E) file under `path`, prompts filled in."""
    prompts, maxlen = _load_json_map(prompts_file, "prompts"), _load_json_map(maxlen_file, "max lengths")
    out: list[BenchExample] = []
    for f in _files(path):
        taken = 0
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            if max_examples is not None and taken >= max_examples:
                break
            where = f"{f}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: malformed JSON ({e.msg})") from None
            missing = [k for k in ("context", "answers") if k not in rec]
            if not isinstance(rec, dict) or missing:
                raise UserError(f"{where}: not a LongBench record (missing {', '.join(missing) or 'fields'})")
            raw = str(rec.get("dataset") or f.stem)
            long_e = raw.endswith("_e") or f.stem.endswith("_e")
            task = raw.removesuffix("_e")
            metric, new_tokens, template = TASKS.get(task, ("qa_f1", 64, _QA_EN))
            template = prompts.get(task, template)
            answers = rec["answers"] if isinstance(rec["answers"], list) else [rec["answers"]]
            try:
                prompt = template.format(context=rec["context"], input=rec.get("input") or "")
            except (KeyError, IndexError) as e:
                raise UserError(f"prompt template for '{task}' has an unknown field {e}; "
                                "use {context} and {input}") from None
            out.append(BenchExample("longbench", task, where, prompt, [str(a) for a in answers],
                                    int(maxlen.get(task, new_tokens)), list(rec.get("all_classes") or []),
                                    rec.get("length"), str(rec.get("input") or ""), long_e))
            taken += 1
    return out


def score_example(ex: BenchExample, prediction: str) -> float:
    """LongBench's per-example score in [0, 1]: the best over the reference answers."""
    metric = METRICS[TASKS.get(ex.task, ("qa_f1",))[0]]
    if ex.task in FIRST_LINE_TASKS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    return max((metric(prediction, gt, ex.all_classes) for gt in ex.answers), default=0.0)


def summarise(examples: list[BenchExample], predictions: list[str]) -> dict:
    """Per task: score × 100, metric, n (and LongBench-E buckets); plus the mean over tasks."""
    per_task: dict[str, list[tuple[BenchExample, float]]] = {}
    for ex, pred in zip(examples, predictions):
        per_task.setdefault(ex.task, []).append((ex, score_example(ex, pred)))
    tasks = {}
    for task, rows in per_task.items():
        entry = {"metric": TASKS.get(task, ("qa_f1",))[0], "n": len(rows),
                 "score": round(100 * float(np.mean([s for _, s in rows])), 2)}
        if any(ex.long_e for ex, _ in rows):
            entry["buckets"] = {}
            for name, lo, hi in E_BUCKETS:
                inside = [s for ex, s in rows if isinstance(ex.length, (int, float)) and lo <= ex.length < hi]
                entry["buckets"][name] = round(100 * float(np.mean(inside)), 2) if inside else None
        tasks[task] = entry
    average = round(float(np.mean([t["score"] for t in tasks.values()])), 2) if tasks else None
    return {"tasks": tasks, "average": average}
