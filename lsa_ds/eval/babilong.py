"""BABILong: bAbI facts hidden in long filler text; read the files users bring, prompt, score.

Assumed format (the columns of the RMT-team/babilong release, one split per task and length,
exported to JSON Lines, e.g. `ds.to_json("4k/qa1.jsonl")`): one JSON object per line with
`input` (the long context with the facts hidden in it), `question` and `target` (the answer:
one word, or two comma-separated for qa8/qa19). A `.json` file holding a list of such objects
works too. The task is the record's `task` field, else the first `qa<N>` in the file's path; the
length label is the record's `length` field, else the first `<N>k` in the path (e.g. 0k, 4k, 32k).
PATH may be one file or a folder of them.

Prompt: our instruction (one word, the facts only), then the context in <context> tags and the
question, as BABILong's default template orders them. Scoring follows BABILong's rule: lowercase
the answer, keep its first sentence, collect the task's labels that appear in it (minus those the
question mentions); correct when that set is exactly the target (or all parts of a comma target).
Tasks without a known label set: correct when the target appears in the first sentence.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from lsa_ds.errors import UserError
from lsa_ds.eval.benchmarks import BenchExample

_ROOMS = ["bathroom", "bedroom", "garden", "hallway", "kitchen", "office"]
_YES_NO = ["no", "yes"]
TASK_LABELS: dict[str, list[str]] = {
    "qa1": _ROOMS, "qa2": _ROOMS, "qa3": _ROOMS, "qa4": _ROOMS,
    "qa5": ["bill", "fred", "jeff", "mary", "apple", "football", "milk"],
    "qa6": _YES_NO, "qa7": ["none", "one", "two", "three"], "qa8": ["apple", "football", "milk", "nothing"],
    "qa9": _YES_NO, "qa10": ["maybe", "no", "yes"],
    "qa11": _ROOMS, "qa12": _ROOMS, "qa13": _ROOMS,
    "qa14": ["bedroom", "cinema", "kitchen", "office", "park", "school"],
    "qa15": ["cat", "mouse", "sheep", "wolf"], "qa16": ["gray", "green", "white", "yellow"],
    "qa17": _YES_NO, "qa18": _YES_NO,
    "qa19": ["e,e", "e,n", "e,s", "n,e", "n,n", "n,w", "s,e", "s,s", "s,w", "w,n", "w,s", "w,w"],
    "qa20": ["bedroom", "bored", "garden", "hungry", "kitchen", "thirsty", "tired"],
}
"""The answer vocabulary of each bAbI task (lowercase)."""

TEMPLATE = ("Facts are hidden in the text below among irrelevant sentences. Answer the question using "
            "only those facts; for a location or object answer with a single word.\n\n"
            "<context>\n{context}\n</context>\n\nQuestion: {question}\nAnswer:")
MAX_NEW_TOKENS = 16


def _files(path: str) -> list[Path]:
    p = Path(path)
    files = sorted([*p.rglob("*.jsonl"), *p.rglob("*.json")]) if p.is_dir() else [p]
    if not files or not all(f.is_file() for f in files):
        raise UserError(f"--babilong {path}: no such file, or a folder without .jsonl/.json files")
    return files


def _records(f: Path):
    text = f.read_text(encoding="utf-8")
    if f.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{f}: malformed JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise UserError(f"{f}: a .json BABILong file must hold a list of records")
        yield from ((f"{f}:{i}", rec) for i, rec in enumerate(data))
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"{f}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{f}:{lineno}: malformed JSON ({e.msg})") from None


def read_babilong(path: str, max_examples: int | None = None) -> list[BenchExample]:
    """Examples of every BABILong file under `path` (at most max_examples per file)."""
    out: list[BenchExample] = []
    for f in _files(path):
        task_m = re.search(r"(qa\d+)", f.as_posix())
        len_m = re.search(r"(?<![0-9a-z])(\d+k)(?![a-z])", f.as_posix())
        for taken, (where, rec) in enumerate(_records(f)):
            if max_examples is not None and taken >= max_examples:
                break
            missing = [k for k in ("input", "question", "target") if not isinstance(rec, dict) or k not in rec]
            if missing:
                raise UserError(f"{where}: not a BABILong record (missing {', '.join(missing)})")
            task = str(rec.get("task") or (task_m.group(1) if task_m else "babilong"))
            length = rec.get("length") or (len_m.group(1) if len_m else None)
            prompt = TEMPLATE.format(context=rec["input"], question=rec["question"])
            out.append(BenchExample("babilong", task, where, prompt, [str(rec["target"])], MAX_NEW_TOKENS,
                                    length=length, question=str(rec["question"])))
    return out


def first_sentence(output: str) -> str:
    """The answer as scored: lowercase, first sentence, nothing after an echoed tag or question.
    (BABILong's own code cuts at "Question" *after* lowercasing, which never matches; we cut at
    "question", which is what it means.)"""
    out = output.lower().split(".")[0]
    for marker in ("<context>", "<example>", "question"):
        out = out.split(marker)[0]
    return out


def is_correct(task: str, target: str, output: str, question: str) -> bool:
    """BABILong's rule (see the module docstring)."""
    out, target = first_sentence(output), target.lower().strip()
    labels = TASK_LABELS.get(task)
    if labels is None:
        return bool(target) and target in out
    in_question = {lab for lab in labels if lab in question.lower()}
    in_output = {lab for lab in labels if lab in out} - in_question
    if "," in target and len(target) > 3:  # two objects (qa8) or two directions (qa19)
        parts = target.split(",")
        return all(p in in_output for p in parts) and len(in_output) == len(parts)
    return target in in_output and len(in_output) == 1


def summarise(examples: list[BenchExample], predictions: list[str]) -> dict:
    """Accuracy × 100 per task and length label, per task, and overall."""
    cells: dict[tuple[str, str], list[bool]] = {}
    for ex, pred in zip(examples, predictions):
        hit = is_correct(ex.task, ex.answers[0], pred, ex.question)
        cells.setdefault((ex.task, str(ex.length or "-")), []).append(hit)
    tasks: dict[str, dict] = {}
    for (task, length), hits in sorted(cells.items()):
        t = tasks.setdefault(task, {"metric": "accuracy", "by_length": {}, "n": 0, "_hits": []})
        t["by_length"][length] = round(100 * float(np.mean(hits)), 2)
        t["n"] += len(hits)
        t["_hits"] += hits
    for t in tasks.values():
        t["score"] = round(100 * float(np.mean(t.pop("_hits"))), 2)
    average = round(float(np.mean([t["score"] for t in tasks.values()])), 2) if tasks else None
    return {"tasks": tasks, "average": average}
