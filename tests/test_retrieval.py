"""Retrieval quality on a handful of questions, fusion, and query validation."""

from __future__ import annotations

import pytest

from indexer.engine import MAX_QUERY_CHARS, QueryError, SearchEngine
from indexer.retrieval import rrf_fuse

# (question, a distinctive substring of the passage that answers it)
QUESTIONS = [
    ("마이데이터란 무엇인가", "흩어진 개인신용정보를 한눈에 보여주고"),
    ("NFT가 대체 불가능하다는 건 무슨 뜻이야?", "NFT는 다른 토큰으로 맞교환이 불가능하기"),
    ("IaaS는 어떤 자원을 제공하나요", "IaaS는 CPU, 메모리 등의 하드웨어 자원을"),
    ("종합지급결제업이 뭐지", "종합지급결제업은 은행에만 허용된 계좌 발급이"),
    ("스마트 팩토리가 지향하는 목표", "스마트 팩토리는 기계끼리 대화를 함으로써"),
    ("중소기업은 왜 인공지능 도입이 어려운가", "중소기업의 자금력 부족, 전문인력 구인난"),
    ("저자는 언제부터 기자로 일했나", "2013년 시작한 기자 생활"),
    ("프라이빗 클라우드의 특징", "프라이빗은 서비스를 사용하는 대상을 제한하는"),
]


@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
@pytest.mark.parametrize(("question", "evidence"), QUESTIONS)
def test_answering_passage_is_near_the_top(engine: SearchEngine, mode: str, question: str, evidence: str) -> None:
    # BM25 alone cannot bridge paraphrases (약자 vs "Non-Fungible Token"), so it gets a deeper cut.
    passages = engine.search(question, top_k=5 if mode == "bm25" else 3, mode=mode)
    assert any(evidence in passage.text for passage in passages), [p.text[:40] for p in passages]


def test_mydata_definition_comes_first(engine: SearchEngine) -> None:
    top = engine.search("마이데이터란 무엇인가", top_k=5)[0]
    assert "마이데이터는 은행, 카드, 보험사 등에 흩어진 개인신용정보를" in top.text
    assert top.section.endswith("TREND 2 마이데이터로 금융 유목민을 사로잡아라 > 금융 플랫폼 시대로 전환")


def test_results_are_ordered_and_sized(engine: SearchEngine) -> None:
    for mode in ("hybrid", "dense", "bm25"):
        passages = engine.search("클라우드 서비스의 유형", top_k=7, mode=mode)
        assert len(passages) == 7
        scores = [p.score for p in passages]
        assert scores == sorted(scores, reverse=True)
        assert len({p.chunk_id for p in passages}) == 7


def test_bm25_matches_inflected_forms(engine: SearchEngine) -> None:
    # "메타버스에서는" in the book, "메타버스" in the question: Kiwi strips the particles.
    passages = engine.search("메타버스", top_k=3, mode="bm25")
    assert passages and all("메타버스" in p.text or "메타버스" in p.section for p in passages)


def test_bm25_returns_nothing_for_words_not_in_the_book(engine: SearchEngine) -> None:
    assert engine.search("김치찌개 레시피", top_k=5, mode="bm25") == []


def test_rrf_fuse_rewards_agreement() -> None:
    fused = rrf_fuse([[1, 2, 3], [3, 1, 4]], k=60)
    assert [item for item, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query": ""}, "비어"),
        ({"query": "   \n\t"}, "비어"),
        ({"query": "가" * (MAX_QUERY_CHARS + 1)}, "너무 깁니다"),
        ({"query": "클라우드", "top_k": 0}, "top_k"),
        ({"query": "클라우드", "top_k": 51}, "top_k"),
        ({"query": "클라우드", "mode": "fuzzy"}, "검색 방식"),
    ],
)
def test_bad_queries_are_refused_clearly(engine: SearchEngine, kwargs: dict, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        engine.search(**kwargs)


def test_convex_fuse_keeps_score_gaps() -> None:
    from indexer.retrieval import convex_fuse

    dense = [(1, 0.90), (2, 0.89), (3, 0.50)]
    lexical = [(3, 12.0), (2, 11.0), (1, 1.0)]
    fused = dict(convex_fuse([dense, lexical], [0.5, 0.5]))
    # 2 is near the top of both lists; 1 and 3 each win one list by a margin.
    assert max(fused, key=fused.get) == 2
    assert convex_fuse([[], [(7, 2.0)]], [0.5, 0.5]) == [(7, 0.5)]


@pytest.mark.parametrize(
    ("question", "term"),
    [
        ("마이데이터란 무엇인가", "마이데이터"),
        ("nft가뭐임", "nft"),
        ("스마트 팩토리가 뭐야?", "스마트 팩토리"),
        ("What is MyData?", "MyData"),
        ("클라우드쓰면 뭐가좋아", None),
        ("저자는 언제부터 기자로 일했나", None),
    ],
)
def test_definition_questions_are_recognised(question: str, term: str | None) -> None:
    from indexer.query import definition_term

    assert definition_term(question) == term


def test_defining_sentence_is_recognised() -> None:
    from indexer.query import defines

    assert defines("본인신용정보관리업, 마이데이터는 은행, 카드, 보험사 등에 흩어진", "마이데이터")
    assert defines("NFT(Non-Fungible Token)는 블록체인 기술을 활용해", "nft")
    assert not defines("마이데이터의 주요 경쟁력은 고객 데이터를 통해", "마이데이터")
