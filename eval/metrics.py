"""Pure metric functions: ranking metrics over binary relevance, answer overlap, abstention, latency.

No I/O and no model here, so every number in metrics.json can be checked by hand (tests/test_eval.py does).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

# The `[n]` citation markers of an answer are not part of its wording.
_MARKER = re.compile(r"\[\d+\]")


def is_relevant(text: str, evidence: Sequence[str]) -> bool:
    """Binary relevance: a passage is relevant iff its text contains any evidence string verbatim.

    Evidence strings are exact substrings of the book, so no fuzzy matching is needed.
    """
    return any(item in text for item in evidence)


def hit_at_k(relevance: Sequence[bool], k: int) -> float:
    """1.0 if any of the first `k` ranked passages is relevant, else 0.0 (hit-style Recall@k).

    With several relevant chunks per question this is not the share of relevant chunks found (ranx `recall`).
    """
    return 1.0 if any(relevance[:k]) else 0.0


def reciprocal_rank(relevance: Sequence[bool], k: int) -> float:
    """1/rank of the first relevant passage within the first `k`, else 0.0 (its mean is MRR@k).

    Rewards putting the right passage first, which is what the extractive answer leans on.
    """
    for rank, relevant in enumerate(relevance[:k], start=1):
        if relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(relevance: Sequence[bool], n_relevant: int, k: int) -> float:
    """Binary nDCG@k: sum of 1/log2(rank+1) over relevant ranks, divided by the ideal for `n_relevant` relevant items.

    `n_relevant` counts the relevant chunks in the whole index, not only the retrieved ones; 0 gives 0.0.
    """
    gains = sum(1.0 / math.log2(rank + 1) for rank, relevant in enumerate(relevance[:k], start=1) if relevant)
    n_ideal = min(max(n_relevant, sum(bool(r) for r in relevance[:k])), k)
    if n_ideal == 0:
        return 0.0
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, n_ideal + 1))
    return gains / ideal


def strip_markers(answer: str) -> str:
    """The answer without its `[n]` citation markers.

    Markers would otherwise count as number tokens in F1.
    """
    return " ".join(_MARKER.sub(" ", answer).split())


def contains_answer(answer: str, gold_answers: Sequence[str]) -> bool:
    """True if the answer contains any gold answer, ignoring case.

    The gold answers are short spans, so containment says whether the key fact made it into the answer.
    """
    lowered = strip_markers(answer).lower()
    return any(gold.lower() in lowered for gold in gold_answers)


def span_matches(span: str, gold_answers: Sequence[str]) -> bool:
    """True if a marked answer span holds a gold answer or lies inside one (spaces and case ignored):
    "56%" for "56%", "Big Blur" for "빅블러(Big Blur)"."""
    marked = "".join(span.split()).lower()
    golds = ["".join(gold.split()).lower() for gold in gold_answers]
    return bool(marked) and any(gold in marked or marked in gold for gold in golds if gold)


def token_f1(predicted: Sequence[str], gold: Sequence[str]) -> float:
    """SQuAD-style F1 of two token multisets: harmonic mean of token precision and recall.

    Both empty gives 1.0; exactly one empty gives 0.0.
    """
    if not predicted and not gold:
        return 1.0
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision = common / len(predicted)
    recall = common / len(gold)
    return 2 * precision * recall / (precision + recall)


def best_token_f1(predicted: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    """The best token F1 of a prediction against any of several gold token lists (0.0 for none).

    Any one gold answer is a correct answer, so the prediction is credited with the closest.
    """
    return max((token_f1(predicted, gold) for gold in golds), default=0.0)


def abstention_precision_recall(
    abstained: Sequence[bool], answerable: Sequence[bool]
) -> tuple[float | None, float | None]:
    """(precision, recall) of abstaining as a detector of unanswerable questions.

    Precision: of the abstentions, the share on unanswerable questions (None without abstentions).
    Recall: of the unanswerable questions, the share abstained on (None without unanswerable questions).
    """
    if len(abstained) != len(answerable):
        raise ValueError("abstained and answerable differ in length")
    n_abstained = sum(bool(a) for a in abstained)
    n_unanswerable = sum(not a for a in answerable)
    correct = sum(bool(a) and not ok for a, ok in zip(abstained, answerable))
    precision = correct / n_abstained if n_abstained else None
    recall = correct / n_unanswerable if n_unanswerable else None
    return precision, recall


def mean(values: Sequence[float]) -> float | None:
    """The arithmetic mean, or None for no values (a metric over an empty set is undefined, not 0)."""
    return float(sum(values) / len(values)) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation (numpy's default), or None for no values.

    Used for latency p50/p95.
    """
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None
