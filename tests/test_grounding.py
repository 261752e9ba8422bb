"""The citation-support check of generated answers: claims, scores, and its calibration on the gold set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.gold import load_gold
from eval.support import GOLD, Pair, collect_pairs, fit, split_of
from indexer.engine import SearchEngine
from service.grounding import SUPPORT_LEXICAL_WEIGHT, SUPPORT_THRESHOLD, Claim, check_generated_answer, split_claims

RESULTS = Path(__file__).resolve().parents[1] / "eval" / "results" / "support.json"


def test_answers_are_cut_into_claims_with_their_markers() -> None:
    assert split_claims("A입니다 [1]. B입니다 [2][3]. 끝") == [
        Claim("A입니다", (1,)),
        Claim("B입니다", (2, 3)),
        Claim("끝", ()),
    ]
    assert split_claims("A입니다 [1].") == [Claim("A입니다", (1,))]
    assert split_claims("A입니다. [1] [2]") == [Claim("A입니다.", (1, 2))]
    assert split_claims("근거가 없습니다.") == [Claim("근거가 없습니다.", ())]
    assert split_claims("A [1] [1].") == [Claim("A", (1,))]


def test_every_claim_needs_a_supporting_citation(engine: SearchEngine) -> None:
    passages = engine.search("NFT가 뭐야?", top_k=5)
    good = check_generated_answer(engine, "NFT는 블록체인 기술로 디지털 자산에 고유한 값을 부여한 인증서입니다 [1].", passages)
    assert good.supported and [c.id for c in good.citations] == [1]
    assert "블록체인" in good.citations[0].quote
    assert engine.document_text(good.citations[0].doc)[good.citations[0].start : good.citations[0].end] == good.citations[0].quote
    half = check_generated_answer(
        engine, "NFT는 블록체인 기술로 디지털 자산에 고유한 값을 부여한 인증서입니다 [1]. 마이데이터는 2030년에 폐지되었습니다 [1].", passages
    )
    assert not half.supported and len(half.failures) == 1 and "2030" in half.failures[0]
    assert not check_generated_answer(engine, "", passages).supported


def test_fit_keeps_the_middle_of_the_widest_gap() -> None:
    def pair(kind: str, cosine: float, overlap: float = 0.0) -> Pair:
        return Pair("q", "dev", kind, ((cosine, overlap),))

    pairs = [pair("supported", 0.9), pair("supported", 0.95), pair("unrelated", 0.7), pair("unrelated", 0.8)]
    weight, threshold = fit(pairs)
    assert threshold == pytest.approx(0.85, abs=1e-3)  # between 0.8 (rejected) and 0.9 (kept)


def test_split_is_fixed_by_question_id() -> None:
    gold = load_gold(GOLD)
    splits = [split_of(question) for question in gold]
    assert splits == [split_of(question) for question in load_gold(GOLD)]
    assert 0.4 < splits.count("dev") / len(splits) < 0.6


def test_the_shipped_constants_are_the_calibrated_ones() -> None:
    """eval/results/support.json is what `python -m eval.support` fitted; the service uses exactly that."""
    results = json.loads(RESULTS.read_text(encoding="utf-8"))
    assert results["lexical_weight"] == SUPPORT_LEXICAL_WEIGHT
    assert results["threshold"] == SUPPORT_THRESHOLD
    held_out = results["accepted"]["test"]
    assert held_out["supported"] >= 0.9 and held_out["unrelated"] <= 0.02


def test_the_check_separates_on_held_out_questions(engine: SearchEngine) -> None:
    """On a quarter of the held-out gold questions, run now: supported claims kept, unrelated citations refused."""
    held_out = [q for q in load_gold(GOLD) if q.answerable and split_of(q) == "test"][::4]
    pairs = collect_pairs(engine, held_out, near_misses=False)
    accepted = {
        kind: sum(p.score(SUPPORT_LEXICAL_WEIGHT) >= SUPPORT_THRESHOLD for p in pairs if p.kind == kind)
        / sum(p.kind == kind for p in pairs)
        for kind in ("supported", "unrelated")
    }
    assert accepted["supported"] >= 0.85 and accepted["unrelated"] <= 0.05, accepted
