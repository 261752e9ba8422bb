"""Calibrate the citation-support check of generated answers on the gold set: fit on dev, report on test.

No language model runs here, so claims are built from the gold set: "question + expected answer",
the statement a faithful generated sentence makes. Each claim is scored against
- the passage holding its evidence (supported: the check should keep it),
- the evidence passage of a question from another part of the book (an unrelated citation, what a
  model obeying an injected instruction produced: the check must refuse it),
- the best-ranked retrieved passage without the evidence (a near miss; reported, not fitted on:
  such a passage may support the claim in other words).
The lexical weight and the threshold maximise balanced accuracy (supported vs unrelated) on the
dev part; the figures that matter are those of the test part, which the fit never saw.

Run: `python -m eval.support [--gold eval/gold/qa.jsonl] [--out eval/results/support.json]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from eval.gold import GoldQuestion, load_gold
from indexer.engine import SearchEngine
from indexer.retrieval import Passage
from indexer.settings import Settings
from service.grounding import support_features

LEXICAL_WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
GOLD = Path(__file__).resolve().parent / "gold" / "qa.jsonl"


@dataclass(frozen=True)
class Pair:
    """A claim and a passage: (cosine, morpheme overlap) of each of its sentences, and what the pair should be."""

    id: str
    split: str
    kind: str  # "supported", "unrelated" or "near_miss"
    features: tuple[tuple[float, float], ...]

    def score(self, lexical_weight: float) -> float:
        """The support score the check computes with this weight: its best sentence's."""
        return max(cosine + lexical_weight * overlap for cosine, overlap in self.features)


def split_of(question: GoldQuestion) -> str:
    """The gold set's own dev/test split when it has one, else a fixed half by a hash of the id."""
    declared = getattr(question, "split", None)
    if declared in ("dev", "test"):
        return declared
    return "dev" if int(hashlib.sha256(question.id.encode()).hexdigest(), 16) % 2 == 0 else "test"


def claim_of(question: GoldQuestion) -> str:
    return f"{question.question.rstrip('?？ ')}: {question.answers[0]}"


def _evidence_passage(engine: SearchEngine, question: GoldQuestion) -> Passage | None:
    for chunk in engine.chunks():
        if any(evidence in chunk.text for evidence in question.evidence):
            return Passage(chunk.chunk_id, chunk.doc, chunk.section, chunk.start, chunk.end, chunk.text, 0.0)
    return None


def _pair(engine: SearchEngine, question: GoldQuestion, passage: Passage, kind: str) -> Pair | None:
    features = tuple((s.cosine, overlap) for s, overlap in support_features(engine, claim_of(question), passage))
    return Pair(question.id, split_of(question), kind, features) if features else None


def collect_pairs(engine: SearchEngine, gold: list[GoldQuestion], seed: int = 13, near_misses: bool = True) -> list[Pair]:
    """The scored claim-passage pairs of every answerable gold question whose evidence is in one chunk."""
    usable = [(q, p) for q in gold if q.answerable for p in [_evidence_passage(engine, q)] if p is not None]
    rng = random.Random(seed)
    pairs = []
    for question, passage in usable:
        others = [p for q, p in usable if q.part != question.part and p.chunk_id != passage.chunk_id]
        candidates = [
            (passage, "supported"),
            (rng.choice(others), "unrelated"),
        ]
        if near_misses:
            retrieved = engine.search(question.question, top_k=5)
            near = next((p for p in retrieved if not any(e in p.text for e in question.evidence)), None)
            if near is not None:
                candidates.append((near, "near_miss"))
        pairs += [pair for p, kind in candidates if (pair := _pair(engine, question, p, kind)) is not None]
    return pairs


def _rates(pairs: list[Pair], weight: float, threshold: float) -> dict[str, float]:
    rates = {}
    for kind in ("supported", "unrelated", "near_miss"):
        chosen = [p for p in pairs if p.kind == kind]
        rates[kind] = sum(p.score(weight) >= threshold for p in chosen) / len(chosen) if chosen else float("nan")
    return rates


def fit(pairs: list[Pair]) -> tuple[float, float]:
    """The (lexical weight, threshold) with the best balanced accuracy of supported vs unrelated pairs.

    Many thresholds tie when the two kinds separate well; the one in the middle of the widest
    tied range is kept, so new claims have room on both sides.
    """
    best: tuple[float, float, float, float] | None = None  # balanced accuracy, width, weight, threshold
    for weight in LEXICAL_WEIGHTS:
        scores = sorted({round(p.score(weight), 4) for p in pairs})
        accuracy = []
        for threshold in scores:
            rates = _rates(pairs, weight, threshold)
            accuracy.append((rates["supported"] + 1 - rates["unrelated"]) / 2)
        top = max(accuracy)
        # The longest run of consecutive scores at the top accuracy: any threshold in
        # (score before the run, last score of the run] takes the same decisions.
        first, last, start = 0, -1, None
        for i, value in enumerate([*accuracy, -1.0]):
            if value == top and start is None:
                start = i
            elif value != top and start is not None:
                if i - 1 - start > last - first:
                    first, last = start, i - 1
                start = None
        low = scores[first - 1] if first > 0 else scores[0] - 0.01
        high = scores[last]
        candidate = (top, high - low, weight, round((low + high) / 2, 4))
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    assert best is not None
    return best[2], best[3]


def calibrate(engine: SearchEngine, gold: list[GoldQuestion]) -> dict:
    """Fit on dev, report dev and test: share of each kind of pair the check would accept."""
    pairs = collect_pairs(engine, gold)
    dev = [p for p in pairs if p.split == "dev"]
    test = [p for p in pairs if p.split == "test"]
    weight, threshold = fit([p for p in dev if p.kind != "near_miss"])
    count = {split: {kind: sum(p.kind == kind for p in part) for kind in ("supported", "unrelated", "near_miss")}
             for split, part in (("dev", dev), ("test", test))}  # fmt: skip
    return {
        "lexical_weight": weight,
        "threshold": threshold,
        "accepted": {"dev": _rates(dev, weight, threshold), "test": _rates(test, weight, threshold)},
        "pairs": count,
        "split": "the gold set's own when present, else sha256(id) even = dev",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gold", type=Path, default=GOLD)
    parser.add_argument("--out", type=Path, default=Path("eval/results/support.json"))
    args = parser.parse_args()
    result = calibrate(SearchEngine.load(Settings()), load_gold(args.gold))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
