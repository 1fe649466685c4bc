"""Answer-scoring functions of the LongBench family, re-implemented without extra dependencies.

Each takes (prediction, ground_truth, all_classes) and returns a score in [0, 1]; a LongBench
example scores the best over its reference answers. Faithful to LongBench's definitions except:

- Rouge-L is the plain LCS F1 over lowercased alphanumeric word tokens (Google rouge-score's
  tokenisation), not the `rouge` package's summary-level union LCS over '.'-split sentences; the
  two agree on single-sentence texts without repeated words.
- Chinese tasks tokenise by character (LongBench uses jieba words, which is not installed here).
- code similarity is difflib's ratio, which is what fuzzywuzzy's `fuzz.ratio` computes without
  python-Levenshtein installed.
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter

_ZH_PUNCT = ("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】"
             "〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def normalize_zh_answer(s: str) -> str:
    """Lowercase, drop ASCII and Chinese punctuation and all whitespace."""
    drop = set(string.punctuation + _ZH_PUNCT)
    return "".join(ch for ch in s.lower() if ch not in drop and not ch.isspace())


def token_f1(prediction: list[str], ground_truth: list[str]) -> float:
    """F1 of the multiset overlap of two token lists."""
    same = sum((Counter(prediction) & Counter(ground_truth)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(ground_truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, ground_truth: str, all_classes=None) -> float:
    return token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def qa_f1_zh(prediction: str, ground_truth: str, all_classes=None) -> float:
    return token_f1(list(normalize_zh_answer(prediction)), list(normalize_zh_answer(ground_truth)))


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _rouge_l_tokens(pred: list[str], ref: list[str]) -> float:
    if not pred or not ref:
        return 0.0
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(pred), lcs / len(ref)
    return 2 * p * r / (p + r)


def rouge_l(prediction: str, ground_truth: str, all_classes=None) -> float:
    """Rouge-L F1 over lowercased alphanumeric word tokens."""
    tok = lambda s: re.sub(r"[^a-z0-9]+", " ", s.lower()).split()  # noqa: E731
    return _rouge_l_tokens(tok(prediction), tok(ground_truth))


def rouge_l_zh(prediction: str, ground_truth: str, all_classes=None) -> float:
    """Rouge-L F1 over characters (punctuation and whitespace dropped)."""
    return _rouge_l_tokens(list(normalize_zh_answer(prediction)), list(normalize_zh_answer(ground_truth)))


def classification(prediction: str, ground_truth: str, all_classes=None) -> float:
    """1/k when the true class is among the k class names found in the prediction (names that are
    part of the true class's own name do not count against it), else 0."""
    found = [c for c in (all_classes or []) if c in prediction]
    found = [c for c in found if not (c in ground_truth and c != ground_truth)]
    return 1.0 / len(found) if ground_truth in found else 0.0


def _fraction_matching(prediction: str, target: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    return sum(n == target for n in numbers) / len(numbers) if numbers else 0.0


def count(prediction: str, ground_truth: str, all_classes=None) -> float:
    """Share of the numbers in the prediction that equal the true count."""
    return _fraction_matching(prediction, str(ground_truth))


def retrieval(prediction: str, ground_truth: str, all_classes=None) -> float:
    """Share of the numbers in the prediction that equal the true paragraph id ("Paragraph N")."""
    m = re.findall(r"Paragraph (\d+)", ground_truth)
    return _fraction_matching(prediction, m[0]) if m else 0.0


def retrieval_zh(prediction: str, ground_truth: str, all_classes=None) -> float:
    m = re.findall(r"段落(\d+)", ground_truth)
    return _fraction_matching(prediction, m[0]) if m else 0.0


def code_sim(prediction: str, ground_truth: str, all_classes=None) -> float:
    """Similarity of the first prediction line that is not a comment or fence to the reference line."""
    line = next((ln for ln in prediction.lstrip("\n").split("\n")
                 if "`" not in ln and "#" not in ln and "//" not in ln), "")
    return round(100 * difflib.SequenceMatcher(None, line, ground_truth).ratio()) / 100


def exact_match(prediction: str, ground_truth: str, all_classes=None) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


METRICS = {"qa_f1": qa_f1, "qa_f1_zh": qa_f1_zh, "rouge_l": rouge_l, "rouge_l_zh": rouge_l_zh,
           "classification": classification, "count": count, "retrieval": retrieval,
           "retrieval_zh": retrieval_zh, "code_sim": code_sim, "exact_match": exact_match}
"""Metric name -> function, as the reports name them."""
