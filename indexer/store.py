"""The on-disk index: chunks, a FAISS inner-product index, a BM25 index and a manifest.

The manifest records everything the index depends on, so loading can refuse an index that no
longer matches the settings or the corpus instead of returning silently wrong passages.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import bm25s
import faiss
import numpy as np
from pydantic import BaseModel, ValidationError

from indexer.chunking import Chunk, chunk_document, embedding_text
from indexer.corpus import Document, file_sha256, load_corpus
from indexer.embedding import Embedder
from indexer.korean import ANALYZER_VERSION, KoreanAnalyzer
from indexer.settings import Settings

FORMAT_VERSION = 2
# Bumped when heading detection or chunk packing changes, so old indexes are rebuilt.
CHUNKER_VERSION = 3
MANIFEST = "manifest.json"
CHUNKS = "chunks.jsonl"
DENSE = "dense.faiss"
SENTENCES = "sentences.faiss"
BM25_DIR = "bm25"
# Libraries whose version changes what the index contains (tokens, vectors, file formats).
TRACKED_LIBRARIES = ("kiwipiepy", "sentence-transformers", "transformers", "torch", "faiss-cpu", "bm25s")
# The same weights reproduce the probe to ~1e-6; another model or other weights do not.
PROBE_MIN_COSINE = 0.999


class IndexLoadError(RuntimeError):
    """The index cannot be used as it is; the message says why and what to run."""


class IndexMissingError(IndexLoadError):
    """There is no index yet."""


class IndexMismatchError(IndexLoadError):
    """The index was built from other settings, another model or another corpus."""


class IndexCorruptError(IndexLoadError):
    """An index file is missing, unreadable or inconsistent."""


class ModelInfo(BaseModel):
    name: str
    dim: int
    max_seq_length: int
    query_prompt: str
    document_prompt: str
    probe: list[float]


class ChunkingInfo(BaseModel):
    chunk_tokens: int
    overlap_sentences: int
    chunker_version: int
    analyzer_version: int


class Manifest(BaseModel):
    """What an index was built from; compared field by field on load and before rebuilding."""

    format_version: int
    created_at: str
    model: ModelInfo
    chunking: ChunkingInfo
    corpus: dict[str, str]
    user_dict_sha256: str | None
    libraries: dict[str, str]
    n_chunks: int
    build_seconds: float


@dataclass
class LoadedIndex:
    """An index in memory, ready for retrieval."""

    manifest: Manifest
    chunks: list[Chunk]
    dense: faiss.Index
    sentences: faiss.Index
    bm25: bm25s.BM25
    documents: dict[str, str]

    @property
    def sentence_owner(self) -> np.ndarray:
        """For each row of `sentences`, the position of its chunk in `chunks`."""
        return np.repeat(np.arange(len(self.chunks)), [len(chunk.sentences) for chunk in self.chunks])


def sentence_texts_of(chunk: Chunk) -> list[str]:
    """The texts of a chunk's sentences, in order; row order of the sentence index."""
    return [chunk.text[start - chunk.start : end - chunk.start] for start, end in chunk.sentences]


@dataclass(frozen=True)
class BuildResult:
    """What `build_index` did: `built` or `up-to-date`, and why."""

    status: str
    reason: str
    manifest: Manifest
    path: Path


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries in TRACKED_LIBRARIES."""
    versions = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "missing"
    return versions


def _chunking_info(settings: Settings) -> ChunkingInfo:
    return ChunkingInfo(
        chunk_tokens=settings.chunk_tokens,
        overlap_sentences=settings.overlap_sentences,
        chunker_version=CHUNKER_VERSION,
        analyzer_version=ANALYZER_VERSION,
    )


def _cosine(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denominator = float(np.linalg.norm(va) * np.linalg.norm(vb))
    return float(va @ vb) / denominator if denominator else 0.0


def manifest_differences(
    manifest: Manifest,
    settings: Settings,
    documents: list[Document],
    embedder: Embedder | None,
    include_libraries: bool,
) -> list[str]:
    """Readable reasons why `manifest` does not describe an index for these inputs ([] if it does)."""
    reasons = []
    if manifest.format_version != FORMAT_VERSION:
        reasons.append(f"색인 형식 버전이 다릅니다 ({manifest.format_version} → {FORMAT_VERSION})")
    if manifest.model.name != settings.model:
        reasons.append(f"모델이 다릅니다: 색인은 '{manifest.model.name}', 설정은 '{settings.model}'")
    elif embedder is not None:
        if manifest.model.dim != embedder.dim:
            reasons.append(f"임베딩 차원이 다릅니다: 색인 {manifest.model.dim}, 모델 {embedder.dim}")
        elif (manifest.model.query_prompt, manifest.model.document_prompt) != (
            embedder.query_prompt,
            embedder.document_prompt,
        ):
            reasons.append("모델의 질의/문서 프롬프트가 색인을 만들 때와 다릅니다")
        elif _cosine(manifest.model.probe, embedder.probe()) < PROBE_MIN_COSINE:
            reasons.append(f"'{settings.model}' 모델의 가중치가 색인을 만들 때와 다릅니다")
    if manifest.chunking != _chunking_info(settings):
        reasons.append(f"청크 설정이 다릅니다: 색인 {manifest.chunking.model_dump()}, 설정 {_chunking_info(settings).model_dump()}")
    current = {document.doc_id: document.sha256 for document in documents}
    if manifest.corpus != current:
        changed = sorted(set(manifest.corpus) ^ set(current) | {d for d in current if manifest.corpus.get(d) != current[d]})
        reasons.append(f"코퍼스가 바뀌었습니다: {', '.join(changed)}")
    if manifest.user_dict_sha256 != file_sha256(settings.user_dict_path):
        reasons.append("사용자 사전(user_dict.tsv)이 바뀌었습니다")
    if manifest.libraries.get("kiwipiepy") != library_versions()["kiwipiepy"]:
        # BM25 tokens come from Kiwi: another version may split words differently.
        reasons.append(f"kiwipiepy 버전이 다릅니다 ({manifest.libraries.get('kiwipiepy')} → {library_versions()['kiwipiepy']})")
    if include_libraries:
        current_libraries = library_versions()
        for name, built_with in manifest.libraries.items():
            if name != "kiwipiepy" and current_libraries.get(name) != built_with:
                reasons.append(f"{name} 버전이 다릅니다 ({built_with} → {current_libraries.get(name)})")
    return reasons


def read_manifest(index_dir: Path) -> Manifest:
    """The manifest of an index folder, or a clear IndexLoadError."""
    path = index_dir / MANIFEST
    if not index_dir.exists():
        raise IndexMissingError(f"색인이 없습니다: {index_dir}. 먼저 `bookqa index`를 실행하세요.")
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError as error:
        raise IndexCorruptError(f"색인 매니페스트가 없습니다: {path}. `bookqa index --force`로 다시 만드세요.") from error
    except (ValidationError, ValueError) as error:
        raise IndexCorruptError(f"색인 매니페스트가 손상되었습니다: {path}. `bookqa index --force`로 다시 만드세요.") from error


def build_index(
    settings: Settings,
    embedder: Embedder,
    analyzer: KoreanAnalyzer,
    force: bool = False,
    show_progress: bool = False,
) -> BuildResult:
    """Build the index unless an identical one exists; write aside, then swap it in.

    An interrupted build leaves the previous index in place and usable.
    """
    started = time.perf_counter()
    documents = load_corpus(settings.corpus_dir)
    index_dir = settings.index_dir
    _recover_interrupted_swap(index_dir)
    if not force and index_dir.exists():
        try:
            existing = read_manifest(index_dir)
            reasons = manifest_differences(existing, settings, documents, embedder, include_libraries=True)
            if not reasons:
                _load_files(index_dir, existing, documents)  # an up-to-date manifest over broken files is no index
                return BuildResult("up-to-date", "색인이 최신입니다", existing, index_dir)
            reason = "; ".join(reasons)
        except IndexLoadError as error:
            reason = str(error)
    else:
        reason = "강제 재색인" if force else "색인이 없습니다"

    chunks = [
        chunk
        for document in documents
        for chunk in chunk_document(
            document, analyzer, embedder.count_tokens, settings.chunk_tokens, settings.overlap_sentences
        )
    ]
    if not chunks:
        raise IndexLoadError(f"코퍼스에서 색인할 문장을 찾지 못했습니다: {settings.corpus_dir}")
    texts = [embedding_text(chunk) for chunk in chunks]
    vectors = embedder.encode_documents(texts, show_progress=show_progress)
    dense = faiss.IndexFlatIP(embedder.dim)
    dense.add(vectors)
    # Sentence vectors sharpen dense ranking (a chunk is as relevant as its best sentence) and
    # let the answerer pick sentences without embedding the book again per question.
    sentence_texts = [chunk_sentence for chunk in chunks for chunk_sentence in sentence_texts_of(chunk)]
    sentences = faiss.IndexFlatIP(embedder.dim)
    sentences.add(embedder.encode_documents(sentence_texts, show_progress=show_progress))
    bm25 = bm25s.BM25()
    bm25.index([analyzer.content_morphemes(text) for text in texts], show_progress=False)

    manifest = Manifest(
        format_version=FORMAT_VERSION,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model=ModelInfo(
            name=settings.model,
            dim=embedder.dim,
            max_seq_length=embedder.max_seq_length,
            query_prompt=embedder.query_prompt,
            document_prompt=embedder.document_prompt,
            probe=embedder.probe(),
        ),
        chunking=_chunking_info(settings),
        corpus={document.doc_id: document.sha256 for document in documents},
        user_dict_sha256=file_sha256(settings.user_dict_path),
        libraries=library_versions(),
        n_chunks=len(chunks),
        build_seconds=round(time.perf_counter() - started, 3),
    )
    _write_and_swap(index_dir, manifest, chunks, dense, sentences, bm25)
    return BuildResult("built", reason, manifest, index_dir)


def _staging_dir(index_dir: Path) -> Path:
    return index_dir.with_name(f".{index_dir.name}.building")


def _backup_dir(index_dir: Path) -> Path:
    return index_dir.with_name(f".{index_dir.name}.previous")


def _recover_interrupted_swap(index_dir: Path) -> None:
    """If a crash fell between the two renames of a swap, put the previous index back."""
    backup = _backup_dir(index_dir)
    if backup.exists() and not index_dir.exists():
        backup.rename(index_dir)


def _write_and_swap(
    index_dir: Path,
    manifest: Manifest,
    chunks: list[Chunk],
    dense: faiss.Index,
    sentences: faiss.Index,
    bm25: bm25s.BM25,
) -> None:
    staging = _staging_dir(index_dir)
    if staging.exists():
        shutil.rmtree(staging)  # the leftovers of an earlier interrupted build
    staging.mkdir(parents=True)
    with (staging / CHUNKS).open("w", encoding="utf-8") as out:
        for chunk in chunks:
            out.write(json.dumps(asdict(chunk), ensure_ascii=False) + "\n")
    faiss.write_index(dense, str(staging / DENSE))
    faiss.write_index(sentences, str(staging / SENTENCES))
    bm25.save(str(staging / BM25_DIR), show_progress=False)
    # The manifest goes last: a folder with a manifest is a complete index.
    (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")

    backup = _backup_dir(index_dir)
    if backup.exists():
        shutil.rmtree(backup)
    if index_dir.exists():
        index_dir.rename(backup)
    staging.rename(index_dir)
    if backup.exists():
        shutil.rmtree(backup)


def _load_files(index_dir: Path, manifest: Manifest, documents: list[Document]) -> LoadedIndex:
    """Read the index files and check them against the manifest and the documents' text."""
    texts = {document.doc_id: document.text for document in documents}
    try:
        chunks = []
        with (index_dir / CHUNKS).open(encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                record["heading_path"] = tuple(record["heading_path"])
                record["sentences"] = tuple(tuple(span) for span in record["sentences"])
                chunks.append(Chunk(**record))
        dense = faiss.read_index(str(index_dir / DENSE))
        sentences = faiss.read_index(str(index_dir / SENTENCES))
        bm25 = bm25s.BM25.load(str(index_dir / BM25_DIR), show_progress=False)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
        raise IndexCorruptError(
            f"색인 파일을 읽을 수 없습니다 ({index_dir}): {error}. `bookqa index --force`로 다시 만드세요."
        ) from error
    problems = []
    if len(chunks) != manifest.n_chunks:
        problems.append(f"청크 {len(chunks)}개, 매니페스트 {manifest.n_chunks}개")
    if dense.ntotal != len(chunks) or dense.d != manifest.model.dim:
        problems.append(f"FAISS 벡터 {dense.ntotal}개×{dense.d}차원")
    n_sentences = sum(len(chunk.sentences) for chunk in chunks)
    if sentences.ntotal != n_sentences or sentences.d != manifest.model.dim:
        problems.append(f"문장 벡터 {sentences.ntotal}개×{sentences.d}차원, 문장 {n_sentences}개")
    bm25_docs = getattr(bm25, "scores", {}).get("num_docs")
    if bm25_docs is not None and bm25_docs != len(chunks):
        problems.append(f"BM25 문서 {bm25_docs}개")
    broken = [
        c.chunk_id
        for c in chunks
        if texts.get(c.doc, "")[c.start : c.end] != c.text
        or any(not c.start <= start < end <= c.end for start, end in c.sentences)
    ]
    if broken:
        problems.append(f"원문과 다른 청크 {len(broken)}개 (예: {broken[0]})")
    if problems:
        raise IndexCorruptError(
            f"색인이 일관되지 않습니다 ({index_dir}): {'; '.join(problems)}. `bookqa index --force`로 다시 만드세요."
        )
    return LoadedIndex(
        manifest=manifest, chunks=chunks, dense=dense, sentences=sentences, bm25=bm25, documents=texts
    )


def load_index(settings: Settings, embedder: Embedder) -> LoadedIndex:
    """Load the index for these settings, refusing one built from another model, corpus or chunking."""
    _recover_interrupted_swap(settings.index_dir)
    manifest = read_manifest(settings.index_dir)
    documents = load_corpus(settings.corpus_dir)
    reasons = manifest_differences(manifest, settings, documents, embedder, include_libraries=False)
    if reasons:
        raise IndexMismatchError(
            "색인이 현재 설정과 맞지 않습니다: " + "; ".join(reasons) + ". `bookqa index`로 다시 만드세요."
        )
    return _load_files(settings.index_dir, manifest, documents)
