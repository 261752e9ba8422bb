"""The store interface: what retrieval sees of an index, and what a build hands a store to write.

Two implementations stand behind it: `indexer.faiss_store` (files in the index folder, the default)
and `indexer.milvus_store` (a Milvus collection: Milvus Lite in a file, or a server/cluster), chosen
by `BOOKQA_STORE`. Retrieval, the engine and everything above use only the methods below.

Positions are integers from 0 to len-1 in index order (documents sorted by id, each in document
order), the same in every store, so rankings and their ties come out identical.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from indexer.chunking import Chunk
from indexer.corpus import Document, load_corpus
from indexer.embedding import QueryEncoder
from indexer.manifest import IndexCorruptError, IndexMismatchError, Manifest, manifest_differences
from indexer.settings import Settings


@dataclass(frozen=True)
class DocumentData:
    """One document's share of an index: its chunks and their vectors, reusable while its text is unchanged.

    `sentence_vectors` has one row per sentence of the chunks, chunk by chunk in sentence order.
    """

    doc_id: str
    sha256: str
    chunks: list[Chunk]
    chunk_vectors: np.ndarray
    sentence_vectors: np.ndarray

    @property
    def n_sentences(self) -> int:
        return sum(len(chunk.sentences) for chunk in self.chunks)


@dataclass(frozen=True)
class IndexContent:
    """Everything a build writes: the manifest and every document's data, in document id order."""

    manifest: Manifest
    documents: list[DocumentData]

    def iter_chunks(self) -> Iterator[Chunk]:
        return (chunk for document in self.documents for chunk in document.chunks)


class IndexStore(Protocol):
    """A loaded index, as retrieval uses it. Scores are cosines (dense) or BM25 scores (lexical)."""

    manifest: Manifest

    def __len__(self) -> int: ...

    def chunk(self, position: int) -> Chunk:
        """The chunk at `position` (0 ≤ position < len)."""
        ...

    def position_of(self, chunk_id: str) -> int | None:
        """The position of a chunk id, or None when the index has no such chunk."""
        ...

    def iter_chunks(self) -> Iterator[Chunk]:
        """Every chunk, in index order."""
        ...

    def document_text(self, doc: str) -> str:
        """The exact text of an indexed document (KeyError for an unknown one)."""
        ...

    def document_ids(self) -> list[str]:
        """The ids of the indexed documents, sorted."""
        ...

    def search_chunks(
        self, vector: np.ndarray, k: int, docs: Collection[str] | None = None
    ) -> list[tuple[int, float]]:
        """The `k` chunks nearest to `vector` (positions, exact cosines), best first, optionally within `docs`."""
        ...

    def sentence_cosines(self, vector: np.ndarray, positions: Sequence[int]) -> list[np.ndarray]:
        """For each chunk in `positions`, the cosine of `vector` with each of its sentences, in order.

        Only these chunks' sentences are scored: never every sentence of the library.
        """
        ...

    def search_lexical(
        self, terms: Sequence[str], k: int, docs: Collection[str] | None = None
    ) -> list[tuple[int, float]]:
        """The `k` best chunks by BM25 over their morphemes (positions, scores), optionally within `docs`.

        Chunks sharing no term are left out.
        """
        ...

    def document_data(self, doc: str) -> DocumentData:
        """A document's chunks and vectors as stored, for a build that reuses them (KeyError if unknown)."""
        ...

    def close(self) -> None:
        """Release what the store holds open (files, connections)."""
        ...


class StoreBackend(Protocol):
    """Where indexes of one kind live: reads the live manifest, opens it, and writes a new one atomically."""

    kind: str

    def location(self) -> str:
        """Where the live index is, for messages (a folder, or a Milvus URI and alias)."""
        ...

    def dense_index_for(self, n_chunks: int) -> str:
        """The dense index this backend builds for `n_chunks` chunks under the current settings."""
        ...

    def read_manifest(self) -> Manifest:
        """The live index's manifest; IndexMissingError when there is none, IndexCorruptError when unreadable."""
        ...

    def open(self, manifest: Manifest, documents: list[Document], verify: bool = True) -> IndexStore:
        """The live index, checked against its manifest (and, with `verify`, every chunk against `documents`)."""
        ...

    def write(self, content: IndexContent) -> Manifest:
        """Write a complete new index and only then make it the live one; returns the manifest as written.

        An interruption at any point leaves the previous index live and usable.
        """
        ...


def backend_for(settings: Settings) -> StoreBackend:
    """The store the settings choose (`BOOKQA_STORE`)."""
    if settings.store == "milvus":
        from indexer.milvus_store import MilvusBackend

        return MilvusBackend(settings)
    from indexer.faiss_store import FaissBackend

    return FaissBackend(settings)


def load_index(settings: Settings, embedder: QueryEncoder) -> IndexStore:
    """Open the index for these settings, refusing one built from another model, corpus or chunking."""
    backend = backend_for(settings)
    documents = load_corpus(settings.corpus_dir)
    for attempt in range(2):
        manifest = backend.read_manifest()
        reasons = manifest_differences(manifest, settings, documents, embedder, include_libraries=False)
        if reasons:
            raise IndexMismatchError(
                "색인이 현재 설정과 맞지 않습니다: " + "; ".join(reasons) + ". `bookqa index`로 다시 만드세요."
            )
        try:
            return backend.open(manifest, documents)
        except IndexCorruptError:
            # A build that swapped a new index in while we read explains a mismatch: read that one.
            if attempt or backend.read_manifest() == manifest:
                raise
    raise AssertionError("unreachable")



def verify_chunks(
    store: IndexStore,
    documents: Mapping[str, str],
    where: str,
    stored_sentences: Callable[[int], int] | None = None,
) -> None:
    """Check every chunk of `store` against its document's text and the manifest's ranges.

    `stored_sentences(position)` is how many sentence vectors the store keeps for a chunk, when it can say.
    Raises IndexCorruptError naming the first broken chunk.
    """
    broken, count = [], 0
    try:
        for position, chunk in enumerate(store.iter_chunks()):
            count += 1
            text = documents.get(chunk.doc, "")
            if (
                text[chunk.start : chunk.end] != chunk.text
                or any(not chunk.start <= s.start < s.end <= chunk.end for s in chunk.sentences)
                or store.position_of(chunk.chunk_id) != position
                or (stored_sentences is not None and stored_sentences(position) != len(chunk.sentences))
            ):
                broken.append(chunk.chunk_id)
    except (ValueError, TypeError, KeyError) as error:
        raise IndexCorruptError(
            f"색인 청크를 읽을 수 없습니다 ({where}): {error}. `bookqa index --force`로 다시 만드세요."
        ) from error
    problems = []
    if count != store.manifest.n_chunks:
        problems.append(f"청크 {count}개, 매니페스트 {store.manifest.n_chunks}개")
    if broken:
        problems.append(f"원문과 다른 청크 {len(broken)}개 (예: {broken[0]})")
    if problems:
        raise IndexCorruptError(
            f"색인이 일관되지 않습니다 ({where}): {'; '.join(problems)}. `bookqa index --force`로 다시 만드세요."
        )
