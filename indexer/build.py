"""Building the index incrementally: only new or changed documents are chunked and embedded.

A document whose text (SHA-256) is already in the live index, built with the same model,
chunking, dictionary and library versions, keeps its chunks and vectors from there: the live
index is the per-document vector cache. Everything else (BM25 statistics, the FAISS structure or
the Milvus collection) is rebuilt from those vectors and written aside, then swapped in, so an
interrupted build leaves the previous index live; an index that still matches is not rebuilt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import numpy as np

from indexer.buildlock import build_lock, clean_leftovers
from indexer.chunking import Chunk, chunk_document, embedding_text
from indexer.corpus import Document, file_sha256, load_corpus
from indexer.embedding import Embedder, QueryEncoder
from indexer.korean import KoreanAnalyzer
from indexer.manifest import (
    FORMAT_VERSION,
    DocumentEntry,
    IndexLoadError,
    IndexMissingError,
    Manifest,
    ModelInfo,
    chunking_info,
    library_versions,
    manifest_differences,
)
from indexer.settings import Settings
from indexer.store import DocumentData, IndexContent, IndexStore, StoreBackend, backend_for


@dataclass(frozen=True)
class BuildResult:
    """What `build_index` did: `built` or `up-to-date`, why, and which documents it embedded or reused."""

    status: str
    reason: str
    manifest: Manifest
    path: str
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    embedded_chunks: int = 0


def up_to_date(settings: Settings, encoder: QueryEncoder) -> tuple[BuildResult | None, str]:
    """An "up-to-date" result when the index matches the settings, the model and the corpus, else (None, why not).

    Needs only the query encoder (for the probe), so a server can check without loading a builder.
    """
    backend = backend_for(settings)
    existing, reason = _live_index(backend, settings, load_corpus(settings.corpus_dir), encoder)
    if existing is None or reason:
        return None, reason
    return BuildResult("up-to-date", "색인이 최신입니다", existing, backend.location()), ""


def _live_index(
    backend: StoreBackend, settings: Settings, documents: list[Document], encoder: QueryEncoder
) -> tuple[Manifest | None, str]:
    """The live index's manifest and why it needs a build ("" when it does not).

    The manifest is None when there is no usable index (missing, unreadable, or files that fail
    their checks: those cannot serve as a vector cache either).
    """
    try:
        existing = backend.read_manifest()
    except IndexMissingError:
        return None, "색인이 없습니다"
    except IndexLoadError as error:
        return None, str(error)
    reasons = manifest_differences(existing, settings, documents, encoder, include_libraries=True)
    wanted = backend.dense_index_for(existing.n_chunks)
    if wanted != existing.store.dense_index:
        # Only the search structure changes (BOOKQA_EXACT_MAX_CHUNKS): every vector is reused.
        reasons.append(f"검색 구조가 바뀝니다: {existing.store.dense_index} → {wanted}")
    if reasons:
        return existing, "; ".join(reasons)
    try:
        backend.open(existing, documents).close()  # an up-to-date manifest over broken files is no index
    except IndexLoadError as error:
        return None, str(error)
    return existing, ""


def build_index(
    settings: Settings,
    embedder: Embedder,
    analyzer: KoreanAnalyzer,
    force: bool = False,
    show_progress: bool = False,
) -> BuildResult:
    """Build the index unless an identical one exists, re-embedding only documents not already indexed.

    Holds the index folder's build lock throughout, so a second builder waits (up to
    `settings.build_lock_timeout` seconds) and then finds the index up to date.
    """
    with build_lock(settings.index_dir, settings.build_lock_timeout):
        clean_leftovers(settings.index_dir)
        return _build_locked(settings, embedder, analyzer, force, show_progress)


def _build_locked(
    settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer, force: bool, show_progress: bool
) -> BuildResult:
    started = time.perf_counter()
    documents = load_corpus(settings.corpus_dir)
    backend = backend_for(settings)
    existing, reason = _live_index(backend, settings, documents, embedder)
    if force:
        reason = "강제 재색인"
    elif existing is not None and not reason:
        return BuildResult("up-to-date", "색인이 최신입니다", existing, backend.location())

    header = _manifest_header(settings, embedder)
    previous = None if force or existing is None else _reusable(backend, existing, header, documents)
    try:
        data, reused, embedded = _document_data(documents, previous, settings, embedder, analyzer, show_progress)
    finally:
        if previous is not None:
            previous.close()
    if not any(d.chunks for d in data):
        raise IndexLoadError(f"코퍼스에서 색인할 문장을 찾지 못했습니다: {settings.corpus_dir}")

    entries, chunk_row, sentence_row = {}, 0, 0
    for d in data:
        entries[d.doc_id] = DocumentEntry(
            sha256=d.sha256,
            first_chunk=chunk_row,
            n_chunks=len(d.chunks),
            first_sentence=sentence_row,
            n_sentences=d.n_sentences,
        )
        chunk_row += len(d.chunks)
        sentence_row += d.n_sentences
    manifest = header.model_copy(
        update={
            "corpus": {document.doc_id: document.sha256 for document in documents},
            "documents": entries,
            "n_chunks": chunk_row,
            "n_sentences": sentence_row,
            "build_seconds": round(time.perf_counter() - started, 3),
        }
    )
    written = backend.write(IndexContent(manifest, data))
    before = existing.corpus if existing is not None else {}
    current = {document.doc_id: document.sha256 for document in documents}
    return BuildResult(
        "built",
        reason,
        written,
        backend.location(),
        added=sorted(set(current) - set(before)),
        changed=sorted(doc for doc in current if doc in before and before[doc] != current[doc]),
        removed=sorted(set(before) - set(current)),
        reused=reused,
        embedded_chunks=embedded,
    )


def _manifest_header(settings: Settings, embedder: Embedder) -> Manifest:
    """The manifest of an index built now, before its documents are known."""
    return Manifest(
        format_version=FORMAT_VERSION,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model=ModelInfo(
            name=settings.model,
            backend=embedder.backend,
            precision=embedder.precision,
            dim=embedder.dim,
            max_seq_length=embedder.max_seq_length,
            query_prompt=embedder.query_prompt,
            document_prompt=embedder.document_prompt,
            probe=embedder.probe(),
        ),
        chunking=chunking_info(settings),
        corpus={},
        user_dict_sha256=file_sha256(settings.user_dict_path),
        libraries=library_versions(),
        n_chunks=0,
        build_seconds=0.0,
    )


def _reusable(
    backend: StoreBackend, existing: Manifest, header: Manifest, documents: list[Document]
) -> IndexStore | None:
    """The live index as a vector cache, when its chunks and vectors were made exactly as a build now would."""
    if not existing.same_content_as(header):
        return None
    try:
        return backend.open(existing, documents, verify=False)
    except IndexLoadError:
        return None


def _document_data(
    documents: list[Document],
    previous: IndexStore | None,
    settings: Settings,
    embedder: Embedder,
    analyzer: KoreanAnalyzer,
    show_progress: bool,
) -> tuple[list[DocumentData], list[str], int]:
    """Every document's chunks and vectors: reused by content hash from `previous`, or made now.

    New documents are embedded together (one batch of chunks, one of sentences), as a full build does.
    """
    cached: dict[str, str] = {}
    if previous is not None:
        for doc, entry in previous.manifest.documents.items():
            cached.setdefault(entry.sha256, doc)
    reused: dict[str, DocumentData] = {}
    fresh: dict[str, list[Chunk]] = {}
    for document in documents:
        source = cached.get(document.sha256)
        if previous is not None and source is not None:
            reused[document.doc_id] = _renamed(previous.document_data(source), document.doc_id)
        else:
            fresh[document.doc_id] = chunk_document(
                document, analyzer, embedder.count_tokens, settings.chunk_tokens, settings.overlap_sentences
            )
    new_chunks = [chunk for chunks in fresh.values() for chunk in chunks]
    chunk_vectors = embedder.encode_documents([embedding_text(c) for c in new_chunks], show_progress=show_progress)
    # Sentence vectors sharpen dense ranking (a chunk is as relevant as its best sentence) and
    # let the answerer pick sentences without embedding the book again per question.
    sentence_texts = [chunk.sentence_text(sentence) for chunk in new_chunks for sentence in chunk.sentences]
    sentence_vectors = embedder.encode_documents(sentence_texts, show_progress=show_progress) if new_chunks else None
    data, chunk_row, sentence_row = [], 0, 0
    by_id = {document.doc_id: document for document in documents}
    for doc_id in sorted(by_id):
        if doc_id in reused:
            data.append(reused[doc_id])
            continue
        chunks = fresh[doc_id]
        n_sentences = sum(len(chunk.sentences) for chunk in chunks)
        data.append(
            DocumentData(
                doc_id,
                by_id[doc_id].sha256,
                chunks,
                chunk_vectors[chunk_row : chunk_row + len(chunks)],
                sentence_vectors[sentence_row : sentence_row + n_sentences]
                if sentence_vectors is not None
                else np.zeros((0, embedder.dim), dtype=np.float32),
            )
        )
        chunk_row += len(chunks)
        sentence_row += n_sentences
    return data, sorted(reused), len(new_chunks)


def _renamed(data: DocumentData, doc_id: str) -> DocumentData:
    """A document's cached data under another file name (same text: the offsets and vectors still hold)."""
    if data.doc_id == doc_id:
        return data
    chunks = [replace(c, doc=doc_id, chunk_id=f"{doc_id}#{n}") for n, c in enumerate(data.chunks)]
    return replace(data, doc_id=doc_id, chunks=chunks)
