"""The Milvus store through Milvus Lite: gold-set retrieval like FAISS, exact citations, incremental builds, filter.

The Milvus index is seeded with the FAISS index's own vectors (through the store interface), so the
comparison is of the stores alone and the tests pay for no second embedding of the book.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from eval.gold import load_gold
from eval.metrics import hit_at_k, reciprocal_rank
from eval.scoring import relevant_chunk_ids
from indexer.build import build_index
from indexer.corpus import load_corpus
from indexer.embedding import Embedder
from indexer.engine import SearchEngine
from indexer.faiss_store import FaissBackend
from indexer.korean import KoreanAnalyzer
from indexer.manifest import IndexMismatchError, IndexMissingError
from indexer.milvus_store import MilvusBackend, milvus_client
from indexer.settings import Settings
from indexer.retrieval import Retriever
from indexer.store import IndexContent, IndexStore, load_index
from service.qa import QAService

GOLD = Path(__file__).resolve().parents[1] / "eval" / "gold" / "qa.jsonl"
BOOK = "digital-trend-2023.txt"


def milvus_settings(settings: Settings, path: Path, **changes: object) -> Settings:
    return settings.model_copy(update={"store": "milvus", "milvus_uri": str(path), **changes})


def seed_from_faiss(faiss_settings: Settings, settings: Settings) -> None:
    """Write the FAISS index's documents (chunks and vectors, as stored) into a new Milvus index."""
    documents = load_corpus(faiss_settings.corpus_dir)
    backend = FaissBackend(faiss_settings)
    store = backend.open(backend.read_manifest(), documents, verify=False)
    content = IndexContent(store.manifest, [store.document_data(doc) for doc in store.document_ids()])
    MilvusBackend(settings).write(content)
    store.close()


@pytest.fixture(scope="module")
def milvus_engine(
    tmp_path_factory: pytest.TempPathFactory, book_settings: Settings, engine: SearchEngine,
    embedder: Embedder, analyzer: KoreanAnalyzer,
) -> Iterator[SearchEngine]:
    settings = milvus_settings(book_settings, tmp_path_factory.mktemp("milvus") / "bookqa.db")
    seed_from_faiss(book_settings, settings)
    yield SearchEngine(settings, embedder, analyzer)


def gold_figures(engine: SearchEngine, store: IndexStore, vectors: dict[str, np.ndarray]) -> tuple[float, float]:
    """Hybrid Recall@1 and MRR@10 over the answerable gold questions through `store`, as `bookqa eval` counts them.

    The retrieval code is the engine's; only the store differs (`vectors`: the questions embedded once).
    """
    settings = engine.settings
    retriever = Retriever(store, vectors.__getitem__, engine.query_terms, settings.fusion, settings.dense_weight)
    chunks = list(store.iter_chunks())
    hits, ranks = [], []
    for question in (q for q in load_gold(GOLD) if q.answerable):
        relevant = relevant_chunk_ids(chunks, question)
        relevance = [p.chunk_id in relevant for p in retriever.search(question.question, 10, "hybrid")]
        hits.append(hit_at_k(relevance, 1))
        ranks.append(reciprocal_rank(relevance, 10))
    return sum(hits) / len(hits), sum(ranks) / len(ranks)


def test_gold_retrieval_through_milvus_matches_faiss(engine: SearchEngine, milvus_engine: SearchEngine) -> None:
    assert milvus_engine.manifest.store.kind == "milvus"
    documents = load_corpus(engine.settings.corpus_dir)
    faiss, milvus = FaissBackend(engine.settings), MilvusBackend(milvus_engine.settings)
    questions = [q.question for q in load_gold(GOLD) if q.answerable]
    vectors = dict(zip(questions, engine.embedder.encode_queries(questions)[:, None, :]))
    faiss_recall, faiss_mrr = gold_figures(engine, faiss.open(faiss.read_manifest(), documents), vectors)
    milvus_recall, milvus_mrr = gold_figures(engine, milvus.open(milvus.read_manifest(), documents), vectors)
    assert faiss_recall > 0.75  # hybrid Recall@1 over the grown gold set is ~0.79 (README)
    assert abs(milvus_recall - faiss_recall) <= 0.02
    assert abs(milvus_mrr - faiss_mrr) <= 0.02


def test_citations_round_trip_exactly(engine: SearchEngine, milvus_engine: SearchEngine) -> None:
    faiss_qa, milvus_qa = QAService(engine), QAService(milvus_engine)
    questions = [q.question for q in load_gold(GOLD)][::6]
    for question in questions:
        expected, got = faiss_qa.ask(question), milvus_qa.ask(question)
        assert got.citations == expected.citations, question
        assert [p.chunk_id for p in got.passages] == [p.chunk_id for p in expected.passages], question
        for citation in got.citations:
            assert milvus_engine.document_text(citation.doc)[citation.start : citation.end] == citation.quote


def test_incremental_builds_and_doc_filter_in_milvus(
    private_settings: Settings, tmp_path: Path, embedder: Embedder, analyzer: KoreanAnalyzer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = milvus_settings(private_settings, tmp_path / "lib.db")
    faiss_settings = private_settings
    seed_from_faiss(faiss_settings, settings)
    assert build_index(settings, embedder, analyzer).status == "up-to-date"

    calls: list[int] = []
    real = embedder.encode_documents
    monkeypatch.setattr(embedder, "encode_documents", lambda texts, **kw: calls.append(len(texts)) or real(texts, **kw))
    (settings.corpus_dir / "extra.md").write_text("# 부록\n메타버스 화폐는 도토리다.\n", encoding="utf-8")
    added = build_index(settings, embedder, analyzer)
    assert (added.added, added.reused) == (["extra.md"], [BOOK]) and max(calls) < 10
    engine = SearchEngine(settings, embedder, analyzer)
    assert engine.search("메타버스 화폐는 무엇인가", top_k=1)[0].doc == "extra.md"
    for mode in ("hybrid", "dense", "bm25"):
        assert {p.doc for p in engine.search("메타버스 화폐", top_k=5, mode=mode, docs=[BOOK])} == {BOOK}
        assert {p.doc for p in engine.search("메타버스 화폐", top_k=5, mode=mode, docs=["extra.md"])} == {"extra.md"}

    (settings.corpus_dir / "extra.md").unlink()
    removed = build_index(settings, embedder, analyzer)
    assert (removed.removed, removed.embedded_chunks) == (["extra.md"], 0)
    engine = SearchEngine(settings, embedder, analyzer)
    assert engine.document_ids() == [BOOK]
    # The live generation and the one before it (a server may still be reading it); older ones are dropped.
    assert len(milvus_client(settings.milvus_uri).list_collections()) == 4


def test_interrupted_milvus_build_keeps_the_live_index(
    private_settings: Settings, tmp_path: Path, embedder: Embedder, analyzer: KoreanAnalyzer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = milvus_settings(private_settings, tmp_path / "live.db")
    seed_from_faiss(private_settings, settings)
    live = SearchEngine(settings, embedder, analyzer)
    before = [p.chunk_id for p in live.search("마이데이터란 무엇인가")]
    client = milvus_client(settings.milvus_uri)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(client, "alter_alias", interrupted)  # everything written, the switch never happens
    (settings.corpus_dir / "extra.md").write_text("# 부록\n메타버스 화폐는 도토리다.\n", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        build_index(settings, embedder, analyzer)
    monkeypatch.undo()
    live.clear_caches()
    assert [p.chunk_id for p in live.search("마이데이터란 무엇인가")] == before
    assert live.document_ids() == [BOOK]
    assert len(client.list_collections()) == 4  # the half-built pair waits, unserved
    result = build_index(settings, embedder, analyzer)
    assert result.status == "built" and result.reused == [BOOK]
    assert len(client.list_collections()) == 4  # the new live pair and the previous one; the half-built pair is gone
    assert [p.chunk_id for p in live.search("마이데이터란 무엇인가")] == before  # the old server still answers
    assert SearchEngine(settings, embedder, analyzer).document_ids() == [BOOK, "extra.md"]


def test_milvus_manifest_rules(private_settings: Settings, tmp_path: Path, embedder: Embedder) -> None:
    settings = milvus_settings(private_settings, tmp_path / "rules.db")
    with pytest.raises(IndexMissingError, match="bookqa index"):
        load_index(settings, embedder)
    seed_from_faiss(private_settings, settings)
    with pytest.raises(IndexMismatchError, match="모델이 다릅니다"):
        load_index(settings.model_copy(update={"model": "BAAI/bge-m3"}), embedder)
    (settings.corpus_dir / "extra.md").write_text("# 부록\n새 문서.\n", encoding="utf-8")
    with pytest.raises(IndexMismatchError, match="코퍼스가 바뀌었습니다: extra.md"):
        load_index(settings, embedder)
