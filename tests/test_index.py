"""The built index: exact offsets, manifest checks, incremental and interrupted builds."""

from __future__ import annotations

import json
from pathlib import Path

import bm25s
import pytest

from indexer.embedding import Embedder
from indexer.engine import SearchEngine
from indexer.korean import KoreanAnalyzer
from indexer.settings import Settings
from indexer.build import build_index
from indexer.integrity import file_digests
from indexer.manifest import MANIFEST, IndexCorruptError, IndexMismatchError, IndexMissingError
from indexer.faiss_store import CHUNKS, DENSE
from indexer.store import load_index


def test_every_chunk_is_an_exact_span_of_its_document(engine: SearchEngine) -> None:
    chunks = list(engine.chunks())
    assert len(chunks) > 20
    for chunk in chunks:
        assert engine.document_text(chunk.doc)[chunk.start : chunk.end] == chunk.text
        assert chunk.text == chunk.text.strip()


def test_chunks_fit_the_token_budget_with_prompt_and_heading(engine: SearchEngine, embedder: Embedder) -> None:
    from indexer.chunking import embedding_text

    budget = engine.settings.chunk_tokens
    assert budget < embedder.max_seq_length
    counts = [embedder.count_tokens(embedding_text(chunk)) for chunk in list(engine.chunks())]
    assert max(counts) <= budget
    assert sum(counts) / len(counts) > budget / 3  # packing actually fills chunks


def test_chunks_never_cross_a_heading(engine: SearchEngine) -> None:
    text = engine.document_text("digital-trend-2023.txt")
    headings = ["금융 플랫폼 시대로 전환", "마이페이먼트_종합지급결제업에 주목하라", "클라우드 서비스에도 유형이 있다"]
    for heading in headings:
        at = text.index(heading)
        for chunk in list(engine.chunks()):
            assert not (chunk.start < at < chunk.end), f"{chunk.chunk_id} spans the heading {heading}"


def test_manifest_records_what_the_index_depends_on(engine: SearchEngine) -> None:
    manifest = engine.manifest
    assert manifest.model.name == engine.settings.model
    assert manifest.model.dim == 384
    assert manifest.corpus.keys() == {"digital-trend-2023.txt"}
    assert manifest.chunking.chunk_tokens == engine.settings.chunk_tokens
    assert {"kiwipiepy", "sentence-transformers", "faiss-cpu", "bm25s", "torch"} <= manifest.libraries.keys()
    assert manifest.n_chunks == len(list(engine.chunks())) == engine.n_chunks


def test_unchanged_corpus_is_not_reembedded(
    private_settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_encode = embedder.encode_documents
    monkeypatch.setattr(embedder, "encode_documents", lambda texts, **kw: calls.append(len(texts)) or real_encode(texts, **kw))
    before = (private_settings.index_dir / DENSE).stat().st_mtime_ns

    result = build_index(private_settings, embedder, analyzer)

    assert result.status == "up-to-date"
    assert calls == [1]  # only the one-sentence model probe, no chunk
    assert (private_settings.index_dir / DENSE).stat().st_mtime_ns == before

    forced = build_index(private_settings, embedder, analyzer, force=True)
    assert forced.status == "built" and forced.manifest.n_chunks in calls[1:]


def test_changed_corpus_is_refused_then_rebuilt(
    private_settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer
) -> None:
    (private_settings.corpus_dir / "extra.md").write_text("# 부록\n메타버스 화폐는 도토리다.\n", encoding="utf-8")
    with pytest.raises(IndexMismatchError, match="코퍼스가 바뀌었습니다: extra.md"):
        load_index(private_settings, embedder)

    result = build_index(private_settings, embedder, analyzer)
    assert result.status == "built" and "extra.md" in result.reason
    engine = SearchEngine(private_settings, embedder, analyzer)
    top = engine.search("메타버스 화폐는 무엇인가", top_k=3, mode="bm25")
    assert top[0].doc == "extra.md" and top[0].section == "부록"


def test_other_model_name_is_refused(private_settings: Settings, embedder: Embedder) -> None:
    other = private_settings.model_copy(update={"model": "BAAI/bge-m3"})
    with pytest.raises(IndexMismatchError, match="모델이 다릅니다"):
        load_index(other, embedder)


def test_same_name_but_other_weights_is_refused(private_settings: Settings, embedder: Embedder) -> None:
    path = private_settings.index_dir / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["model"]["probe"] = [-x for x in manifest["model"]["probe"]]
    path.write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError, match="가중치"):
        load_index(private_settings, embedder)


def test_dimension_mismatch_is_refused(private_settings: Settings, embedder: Embedder) -> None:
    path = private_settings.index_dir / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["model"]["dim"] = 1024
    path.write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError, match="차원"):
        load_index(private_settings, embedder)


def test_changed_chunk_budget_is_refused(private_settings: Settings, embedder: Embedder) -> None:
    other = private_settings.model_copy(update={"chunk_tokens": private_settings.chunk_tokens + 64})
    with pytest.raises(IndexMismatchError, match="청크 설정"):
        load_index(other, embedder)


@pytest.mark.parametrize(
    ("victim", "damage"),
    [
        (DENSE, b"not a faiss index"),
        (MANIFEST, b"{broken"),
        (CHUNKS, b'{"chunk_id": 1}\n'),
    ],
)
def test_broken_index_files_are_reported(
    private_settings: Settings, embedder: Embedder, victim: str, damage: bytes
) -> None:
    (private_settings.index_dir / victim).write_bytes(damage)
    with pytest.raises(IndexCorruptError, match="bookqa index --force"):
        load_index(private_settings, embedder)


def test_chunk_text_edited_on_disk_is_reported(private_settings: Settings, embedder: Embedder) -> None:
    path = private_settings.index_dir / CHUNKS
    lines = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[3])
    record["text"] = record["text"].replace("다", "라", 1)
    lines[3] = json.dumps(record, ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(IndexCorruptError, match="chunks.jsonl"):
        load_index(private_settings, embedder)  # its checksum no longer matches
    # With checksums recorded anew (an edit that also forged the manifest), the text check still refuses it.
    manifest_path = private_settings.index_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = file_digests(private_settings.index_dir)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="원문과 다른 청크"):
        load_index(private_settings, embedder)


def test_missing_index_says_what_to_run(tmp_path: Path, book_settings: Settings, embedder: Embedder) -> None:
    settings = book_settings.model_copy(update={"index_dir": tmp_path / "none"})
    with pytest.raises(IndexMissingError, match="bookqa index"):
        load_index(settings, embedder)


@pytest.mark.parametrize("stage", ["embedding", "writing"])
def test_interrupted_build_keeps_the_previous_index(
    private_settings: Settings,
    embedder: Embedder,
    analyzer: KoreanAnalyzer,
    monkeypatch: pytest.MonkeyPatch,
    stage: str,
) -> None:
    before = (private_settings.index_dir / MANIFEST).read_bytes()

    def interrupted(*args: object, **kwargs: object) -> None:
        if stage == "writing":
            Path(str(args[-1])).write_bytes(b"half a BM25 index")
        raise KeyboardInterrupt  # what Ctrl-C raises

    if stage == "embedding":
        monkeypatch.setattr(embedder, "encode_documents", interrupted)
    else:
        monkeypatch.setattr(bm25s.BM25, "save", lambda self, path, **kw: interrupted(path))
    with pytest.raises(KeyboardInterrupt):
        build_index(private_settings, embedder, analyzer, force=True)
    monkeypatch.undo()

    assert (private_settings.index_dir / MANIFEST).read_bytes() == before
    engine = SearchEngine(private_settings, embedder, analyzer)
    assert engine.search("마이데이터", top_k=1)
    assert build_index(private_settings, embedder, analyzer).status == "up-to-date"


def test_crash_between_the_swap_renames_is_recovered(
    private_settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer
) -> None:
    index_dir = private_settings.index_dir
    index_dir.rename(index_dir.with_name(f".{index_dir.name}.previous"))
    staging = index_dir.with_name(f".{index_dir.name}.building")
    staging.mkdir()
    (staging / "dense.faiss").write_bytes(b"half written")

    engine = SearchEngine(private_settings, embedder, analyzer)
    assert engine.search("클라우드", top_k=1)
    result = build_index(private_settings, embedder, analyzer)
    assert result.status == "up-to-date"
    build_index(private_settings, embedder, analyzer, force=True)
    assert not staging.exists()
