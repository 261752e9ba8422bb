"""Many documents: incremental builds by content hash, the document filter, the approximate index, `bench scale`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from eval.bench_scale import SentencePool, build_library
from indexer.build import build_index
from indexer.embedding import Embedder
from indexer.engine import QueryError, SearchEngine
from indexer.faiss_store import FaissStore, _top_k
from indexer.korean import KoreanAnalyzer
from indexer.manifest import read_manifest
from indexer.settings import Settings
from service.api import create_api
from service.qa import QAService
from tests.test_cli import BOOKQA, run

BOOK = "digital-trend-2023.txt"
GOLD = Path(__file__).resolve().parents[1] / "eval" / "gold" / "qa.jsonl"
EXTRA = "# 부록\n메타버스 화폐는 도토리다. 도토리는 싸이월드에서 쓰던 화폐였다.\n"


@pytest.fixture()
def counted(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many texts each call to the embedder encoded."""
    calls: list[int] = []
    real = embedder.encode_documents
    monkeypatch.setattr(embedder, "encode_documents", lambda texts, **kw: calls.append(len(texts)) or real(texts, **kw))
    return calls


def test_adding_changing_removing_a_document_embeds_only_that_one(
    private_settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer, counted: list[int]
) -> None:
    corpus = private_settings.corpus_dir
    (corpus / "extra.md").write_text(EXTRA, encoding="utf-8")
    added = build_index(private_settings, embedder, analyzer)
    assert (added.added, added.changed, added.removed, added.reused) == (["extra.md"], [], [], [BOOK])
    extra_chunks = added.manifest.documents["extra.md"].n_chunks
    assert added.embedded_chunks == extra_chunks
    assert max(counted) < 10  # the probe and the new document's chunks and sentences, never the book's 59 chunks

    engine = SearchEngine(private_settings, embedder, analyzer)
    top = engine.search("메타버스 화폐는 무엇인가", top_k=3)
    assert top[0].doc == "extra.md" and "도토리" in top[0].text
    book_chunk = engine.chunk(f"{BOOK}#17")
    assert engine.document_text(BOOK)[book_chunk.start : book_chunk.end] == book_chunk.text

    (corpus / "extra.md").write_text(EXTRA.replace("도토리다", "별사탕이다"), encoding="utf-8")
    changed = build_index(private_settings, embedder, analyzer)
    assert (changed.added, changed.changed, changed.removed, changed.reused) == ([], ["extra.md"], [], [BOOK])

    (corpus / "extra.md").unlink()
    removed = build_index(private_settings, embedder, analyzer)
    assert (removed.added, removed.changed, removed.removed, removed.embedded_chunks) == ([], [], ["extra.md"], 0)
    assert SearchEngine(private_settings, embedder, analyzer).document_ids() == [BOOK]


def test_a_renamed_document_keeps_its_vectors(
    private_settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer, counted: list[int]
) -> None:
    corpus = private_settings.corpus_dir
    (corpus / BOOK).rename(corpus / "renamed.txt")
    result = build_index(private_settings, embedder, analyzer)
    assert result.embedded_chunks == 0 and result.reused == ["renamed.txt"]
    engine = SearchEngine(private_settings, embedder, analyzer)
    top = engine.search("마이데이터란 무엇인가", top_k=1)[0]
    assert top.chunk_id.startswith("renamed.txt#")
    assert engine.document_text("renamed.txt")[top.start : top.end] == top.text


def test_doc_filter_limits_every_mode(private_settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer) -> None:
    (private_settings.corpus_dir / "extra.md").write_text(EXTRA, encoding="utf-8")
    build_index(private_settings, embedder, analyzer)
    engine = SearchEngine(private_settings, embedder, analyzer)
    for mode in ("hybrid", "dense", "bm25"):
        book_only = engine.search("메타버스 화폐", top_k=5, mode=mode, docs=[BOOK])
        assert book_only and {p.doc for p in book_only} == {BOOK}
        extra_only = engine.search("메타버스 화폐", top_k=5, mode=mode, docs=["extra.md"])
        assert {p.doc for p in extra_only} == {"extra.md"}
    with pytest.raises(QueryError, match="색인에 없는 문서입니다: nope.txt"):
        engine.search("클라우드", docs=["nope.txt"])

    from fastapi.testclient import TestClient

    with TestClient(create_api(qa=QAService(engine))) as client:
        response = client.get("/v1/search", params=[("q", "메타버스 화폐"), ("doc", "extra.md")])
        assert response.status_code == 200 and {p["doc"] for p in response.json()["passages"]} == {"extra.md"}
        body = client.post("/v1/ask", json={"question": "메타버스 화폐는 뭐야?", "doc": ["extra.md"]}).json()
        assert body["citations"] and {c["doc"] for c in body["citations"]} == {"extra.md"}
        assert client.post("/v1/ask", json={"question": "메타버스 화폐는 뭐야?", "doc": BOOK}).status_code == 200
        unknown = client.get("/v1/search", params={"q": "클라우드", "doc": "nope.txt"})
        assert unknown.status_code == 404 and "nope.txt" in unknown.json()["error"]
        assert client.post("/v1/ask", json={"question": "클라우드", "doc": []}).status_code == 422

    cli = run(private_settings, "search", "메타버스 화폐", "--doc", "extra.md", "--json")
    assert cli.returncode == 0, cli.stderr
    assert {p["doc"] for p in json.loads(cli.stdout)["passages"]} == {"extra.md"}
    assert run(private_settings, "search", "클라우드", "--doc", "nope.txt").returncode == 2


def test_index_reports_what_it_added_and_reused(private_settings: Settings) -> None:
    (private_settings.corpus_dir / "extra.md").write_text(EXTRA, encoding="utf-8")
    result = run(private_settings, "index")
    assert result.returncode == 0, result.stderr
    assert "추가 1, 변경 0, 삭제 0, 재사용 1" in result.stdout
    assert "extra.md" in result.stdout


def test_approximate_index_beyond_the_threshold_ranks_like_exact(
    tmp_path: Path, book_settings: Settings, engine: SearchEngine, embedder: Embedder, analyzer: KoreanAnalyzer
) -> None:
    settings = book_settings.model_copy(update={"index_dir": tmp_path / "index", "exact_max_chunks": 10})
    shutil.copytree(book_settings.index_dir, settings.index_dir)
    result = build_index(settings, embedder, analyzer)
    assert "검색 구조가 바뀝니다: flat → ivf" in result.reason and result.embedded_chunks == 0
    assert result.manifest.store.dense_index == "ivf" and result.manifest.store.params["nprobe"] > 0
    approximate = SearchEngine(settings, embedder, analyzer)
    for question in ("마이데이터란 무엇인가", "클라우드 서비스의 유형", "NFT가 대체 불가능하다는 건 무슨 뜻이야?"):
        for mode in ("hybrid", "dense"):
            assert [p.chunk_id for p in approximate.search(question, 5, mode)] == [
                p.chunk_id for p in engine.search(question, 5, mode)
            ]


def test_bench_scale_prints_one_json_line_per_size(book_settings: Settings, engine: SearchEngine, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "BOOKQA_CORPUS_DIR": str(book_settings.corpus_dir),
        "BOOKQA_INDEX_DIR": str(book_settings.index_dir),
        "BOOKQA_EXACT_MAX_CHUNKS": "150",
        "HF_HUB_OFFLINE": "1",
    }
    gold = tmp_path / "gold.jsonl"
    lines = (Path(__file__).resolve().parents[1] / "eval" / "gold" / "qa.jsonl").read_text(encoding="utf-8").splitlines()
    gold.write_text("\n".join(lines[::20]) + "\n", encoding="utf-8")
    result = subprocess.run(
        [BOOKQA, "bench", "scale", "--chunks", "40,300", "--embed-max", "40", "--gold", str(gold),
         "--work-dir", str(tmp_path / "bench")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["chunks"] for line in lines] == [40, 300]
    small, large = lines
    assert small["vectors"] == "embedder" and small["dense_index"] == "flat" and small["recall_at_10"] == 1.0
    assert large["vectors"] == "perturbed" and large["dense_index"] == "ivf"
    for line in lines:
        assert {"build_s", "index_mb", "rss_mb", "p50_ms", "p95_ms", "recall_at_10"} <= set(line)
        assert line["p50_ms"] <= line["p95_ms"] and line["index_mb"] > 0
    assert large["recall_at_10"] >= 0.9
    assert 0.5 < large["perturbed_vs_embedder_cosine"] <= 1.0
    assert not (tmp_path / "bench" / "library-300").exists()  # removed unless --keep


def test_bm25_top_k_at_scale_is_the_full_ranking(engine: SearchEngine, tmp_path: Path) -> None:
    """The lexical floor (rank only chunks that can reach the k best) returns exactly the full ranking's top k."""
    pool = SentencePool(engine)
    build_library(engine, pool, 3000, tmp_path / "library", embed_max=0, approximate="ivf", exact_max_chunks=100)
    store = FaissStore(tmp_path / "library", read_manifest(tmp_path / "library"), {})
    questions = [json.loads(line)["question"] for line in GOLD.read_text(encoding="utf-8").splitlines()[::3]]
    floored = 0
    for question in questions:
        terms = list(engine.query_terms(question))
        if not terms:
            continue
        scores = store._bm25.get_scores(terms)  # noqa: SLF001 - the reference ranks every chunk bm25s scored
        matched = np.flatnonzero(scores)
        for k in (10, 100):
            assert store.search_lexical(terms, k) == _top_k(matched, scores[matched], k), (question, k)
            floored += store._score_floor(terms, scores, k) > 0  # noqa: SLF001
    assert floored >= len(questions) // 4  # the floor was at work, not only the fallback
