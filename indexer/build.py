"""Building the index: chunk the corpus, embed chunks and sentences, index morphemes, write aside and swap.

An interrupted build leaves the previous index in place and usable; an index whose manifest
still matches the settings, the model and the corpus is not rebuilt.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import bm25s

from indexer.buildlock import build_lock, clean_leftovers
from indexer.chunking import chunk_document, embedding_text
from indexer.corpus import load_corpus
from indexer.embedding import Embedder
from indexer.korean import KoreanAnalyzer
from indexer.manifest import (
    FORMAT_VERSION,
    IndexLoadError,
    Manifest,
    ModelInfo,
    chunking_info,
    library_versions,
    manifest_differences,
    read_manifest,
)
from indexer.corpus import file_sha256
from indexer.settings import Settings
from indexer.store import (
    IndexContent,
    backup_dir,
    read_index_files,
    staging_dir,
    write_index_files,
)


@dataclass(frozen=True)
class BuildResult:
    """What `build_index` did: `built` or `up-to-date`, and why."""

    status: str
    reason: str
    manifest: Manifest
    path: Path


def build_index(
    settings: Settings,
    embedder: Embedder,
    analyzer: KoreanAnalyzer,
    force: bool = False,
    show_progress: bool = False,
) -> BuildResult:
    """Build the index unless an identical one exists; write aside, then swap it in.

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
    index_dir = settings.index_dir
    if not force and index_dir.exists():
        try:
            existing = read_manifest(index_dir)
            reasons = manifest_differences(existing, settings, documents, embedder, include_libraries=True)
            if not reasons:
                read_index_files(index_dir, existing, documents)  # an up-to-date manifest over broken files is no index
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
    chunk_vectors = embedder.encode_documents(texts, show_progress=show_progress)
    # Sentence vectors sharpen dense ranking (a chunk is as relevant as its best sentence) and
    # let the answerer pick sentences without embedding the book again per question.
    sentence_texts = [chunk.sentence_text(sentence) for chunk in chunks for sentence in chunk.sentences]
    sentence_vectors = embedder.encode_documents(sentence_texts, show_progress=show_progress)
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
        chunking=chunking_info(settings),
        corpus={document.doc_id: document.sha256 for document in documents},
        user_dict_sha256=file_sha256(settings.user_dict_path),
        libraries=library_versions(),
        n_chunks=len(chunks),
        build_seconds=round(time.perf_counter() - started, 3),
    )
    manifest = _write_and_swap(index_dir, IndexContent(manifest, chunks, chunk_vectors, sentence_vectors, bm25))
    return BuildResult("built", reason, manifest, index_dir)


def _write_and_swap(index_dir: Path, content: IndexContent) -> Manifest:
    staging = staging_dir(index_dir)
    if staging.exists():
        shutil.rmtree(staging)  # the leftovers of an earlier interrupted build
    staging.mkdir(parents=True)
    manifest = write_index_files(staging, content)
    backup = backup_dir(index_dir)
    if backup.exists():
        shutil.rmtree(backup)
    if index_dir.exists():
        index_dir.rename(backup)
    staging.rename(index_dir)
    if backup.exists():
        shutil.rmtree(backup)
    return manifest
