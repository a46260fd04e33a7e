"""The three answer scores of an evaluation, written plainly: exact match, token F1 and ROUGE-L (F-measure of the
longest common subsequence of tokens), each in [0, 1].

Why not ``evaluate`` / ``rouge-score``: the three fit in this page, need no download at run time (``evaluate``
fetches each metric's script from the Hub, which a Space's job or an offline machine may not reach) and no extra
dependencies (``rouge-score`` brings nltk and absl). Answers are normalised as SQuAD does: lower case, punctuation
and the articles a/an/the removed, whitespace collapsed. ROUGE-L here is on those normalised words, without
stemming (rouge-score's default is also without).
"""

from __future__ import annotations

import re
import string
from collections import Counter

SCORES = ("exact_match", "token_f1", "rouge_l")
_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise(text: str) -> str:
    """``text`` as SQuAD compares answers: lower case, no punctuation or articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return float(normalise(prediction) == normalise(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the words the normalised prediction and reference share (1.0 when both are empty)."""
    pred, ref = normalise(prediction).split(), normalise(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure: the longest common subsequence of the normalised words (1.0 when both are empty)."""
    pred, ref = normalise(prediction).split(), normalise(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs(pred, ref)
    if not lcs:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def scores(prediction: str, reference: str) -> dict[str, float]:
    """exact_match, token_f1 and rouge_l of one answer."""
    return {"exact_match": exact_match(prediction, reference), "token_f1": token_f1(prediction, reference),
            "rouge_l": rouge_l(prediction, reference)}
