"""The on-disk index: chunks, FAISS inner-product indexes of chunk and sentence vectors, BM25, a manifest.

`IndexStore` is what retrieval sees of an index: chunks by position, nearest chunks and sentences
for a vector, cosines of chosen chunks and their sentences, BM25 scores. Nothing outside reads
its arrays, so another store (an approximate index, a server) can stand behind the same methods.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import bm25s
import faiss
import numpy as np

from indexer.buildlock import backup_dir, recover_before_loading, staging_dir  # noqa: F401 (re-exported)
from indexer.chunking import Chunk
from indexer.corpus import Document, load_corpus
from indexer.embedding import Embedder
from indexer.integrity import file_digests, verify_digests
from indexer.manifest import (
    MANIFEST,
    IndexCorruptError,
    IndexMismatchError,
    Manifest,
    manifest_differences,
    read_manifest,
)
from indexer.settings import Settings

CHUNKS = "chunks.jsonl"
DENSE = "dense.faiss"
SENTENCES = "sentences.faiss"
BM25_DIR = "bm25"


@dataclass(frozen=True)
class IndexContent:
    """Everything an index holds, in memory: what a build writes and a load reads back."""

    manifest: Manifest
    chunks: list[Chunk]
    chunk_vectors: np.ndarray
    sentence_vectors: np.ndarray
    bm25: bm25s.BM25


class IndexStore:
    """A loaded index: chunks, their vectors and their sentences' vectors, and BM25 over morphemes."""

    def __init__(self, content: IndexContent, documents: dict[str, str]) -> None:
        self.manifest = content.manifest
        self._chunks = content.chunks
        self._documents = documents
        self._position = {chunk.chunk_id: i for i, chunk in enumerate(content.chunks)}
        self._chunk_vectors = content.chunk_vectors
        self._sentence_vectors = content.sentence_vectors
        self._dense = _flat_index(content.chunk_vectors)
        self._sentences = _flat_index(content.sentence_vectors)
        self._bm25 = content.bm25
        counts = np.array([len(chunk.sentences) for chunk in content.chunks], dtype=np.int64)
        # Row of each chunk's first sentence in the sentence vectors (one more entry: the total).
        self._first_sentence = np.concatenate([[0], np.cumsum(counts)])
        self._sentence_owner = np.repeat(np.arange(len(content.chunks)), counts)

    def __len__(self) -> int:
        return len(self._chunks)

    def chunk(self, position: int) -> Chunk:
        """The chunk at `position` (0 ≤ position < len)."""
        return self._chunks[position]

    def position_of(self, chunk_id: str) -> int | None:
        """The position of a chunk id, or None when the index has no such chunk."""
        return self._position.get(chunk_id)

    def iter_chunks(self) -> Iterator[Chunk]:
        """Every chunk, in index order (document order within each document)."""
        return iter(self._chunks)

    def document_text(self, doc: str) -> str:
        """The exact text of an indexed document (KeyError for an unknown one)."""
        return self._documents[doc]

    def document_ids(self) -> list[str]:
        """The ids of the indexed documents, sorted."""
        return sorted(self._documents)

    def search_chunks(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The `k` chunks whose vectors are nearest to `vector` (positions, cosines), best first."""
        return _search(self._dense, vector, k)

    def search_sentences(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The chunks owning the `k` sentences nearest to `vector` (positions, sentence cosines), best first."""
        return [(int(self._sentence_owner[row]), score) for row, score in _search(self._sentences, vector, k)]

    def chunk_cosines(self, vector: np.ndarray, positions: Sequence[int]) -> np.ndarray:
        """Cosine of `vector` with the vector of each chunk in `positions`."""
        return self._chunk_vectors[np.asarray(positions, dtype=np.int64)] @ vector.reshape(-1)

    def sentence_cosines(self, vector: np.ndarray, positions: Sequence[int]) -> list[np.ndarray]:
        """For each chunk in `positions`, the cosine of `vector` with each of its sentences, in order."""
        flat = vector.reshape(-1)
        return [
            self._sentence_vectors[self._first_sentence[p] : self._first_sentence[p + 1]] @ flat for p in positions
        ]

    def search_lexical(self, terms: Sequence[str], k: int) -> list[tuple[int, float]]:
        """The `k` best chunks by BM25 over their morphemes (positions, scores); chunks sharing none are left out."""
        if not terms or not self._chunks:
            return []
        scores = self._bm25.get_scores(list(terms))
        order = np.argsort(-scores, kind="stable")[:k]
        return [(int(i), float(scores[i])) for i in order if scores[i] > 0]


def _flat_index(vectors: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def _search(index: faiss.Index, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
    k = min(k, index.ntotal)
    if k <= 0:
        return []
    scores, ids = index.search(np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32), k)
    return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]


def write_index_files(folder: Path, content: IndexContent) -> Manifest:
    """Write an index into an empty folder; the manifest goes last, so a folder with one is complete.

    Returns the manifest as written: the given one plus the SHA-256 of every file.
    """
    with (folder / CHUNKS).open("w", encoding="utf-8") as out:
        for chunk in content.chunks:
            out.write(json.dumps(asdict(chunk), ensure_ascii=False) + "\n")
    faiss.write_index(_flat_index(content.chunk_vectors), str(folder / DENSE))
    faiss.write_index(_flat_index(content.sentence_vectors), str(folder / SENTENCES))
    content.bm25.save(str(folder / BM25_DIR), show_progress=False)
    manifest = content.manifest.model_copy(update={"files": file_digests(folder)})
    (folder / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    return manifest


def read_index_files(index_dir: Path, manifest: Manifest, documents: list[Document]) -> IndexStore:
    """Read the index files and check them against the manifest's checksums and the documents' text."""
    verify_digests(index_dir, manifest.files)
    texts = {document.doc_id: document.text for document in documents}
    try:
        with (index_dir / CHUNKS).open(encoding="utf-8") as lines:
            chunks = [Chunk.from_record(json.loads(line)) for line in lines]
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
        or any(not c.start <= s.start < s.end <= c.end for s in c.sentences)
    ]
    if broken:
        problems.append(f"원문과 다른 청크 {len(broken)}개 (예: {broken[0]})")
    if problems:
        raise IndexCorruptError(
            f"색인이 일관되지 않습니다 ({index_dir}): {'; '.join(problems)}. `bookqa index --force`로 다시 만드세요."
        )
    content = IndexContent(manifest, chunks, _vectors_of(dense), _vectors_of(sentences), bm25)
    return IndexStore(content, texts)


def _vectors_of(index: faiss.Index) -> np.ndarray:
    return np.ascontiguousarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32).reshape(index.ntotal, index.d)


def load_index(settings: Settings, embedder: Embedder) -> IndexStore:
    """Load the index for these settings, refusing one built from another model, corpus or chunking."""
    recover_before_loading(settings.index_dir)
    documents = load_corpus(settings.corpus_dir)
    for attempt in range(2):
        manifest = read_manifest(settings.index_dir)
        reasons = manifest_differences(manifest, settings, documents, embedder, include_libraries=False)
        if reasons:
            raise IndexMismatchError(
                "색인이 현재 설정과 맞지 않습니다: " + "; ".join(reasons) + ". `bookqa index`로 다시 만드세요."
            )
        try:
            return read_index_files(settings.index_dir, manifest, documents)
        except IndexCorruptError:
            # A build that swapped a new index in while we read explains a mismatch: read that one.
            if attempt or read_manifest(settings.index_dir) == manifest:
                raise
    raise AssertionError("unreachable")
