"""The FAISS store (the default): an index folder of memory-mapped arrays, a FAISS index and bm25s.

Files of an index folder, all written into `.index.building` and swapped in whole:

| file | what |
|---|---|
| `manifest.json` | what the index was built from, per-document chunk ranges, the dense index chosen (written last) |
| `chunks.jsonl`, `chunk_offsets.npy` | one JSON record per chunk, and where each starts, so a chunk is read without loading the rest |
| `chunk_vectors.npy` | float32 chunk vectors, memory-mapped: the exact cosines of candidates |
| `dense.faiss` | the search structure over them: exact (`IndexFlatIP`) while small, IVF-SQ8 beyond `exact_max_chunks` |
| `sentence_vectors.npy`, `sentence_offsets.npy` | float16 sentence vectors, memory-mapped, and each chunk's first row |
| `bm25/` | bm25s over the chunks' Kiwi morphemes, memory-mapped on load |

A search touches the nearest chunks' rows only: no question scores every sentence of the library.
Up to IN_MEMORY_MAX_CHUNKS chunks (the book) the arrays are simply read into memory.
"""

from __future__ import annotations

import json
import math
import mmap
import shutil
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import faiss
import numpy as np

from indexer.chunking import Chunk
from indexer.corpus import Document
from indexer.buildlock import backup_dir, recover_before_loading, staging_dir
from indexer.integrity import file_digests, verify_digests
from indexer.manifest import (
    MANIFEST,
    IndexCorruptError,
    Manifest,
    StoreInfo,
    read_manifest,
)
from indexer.settings import Settings
from indexer.store import DocumentData, IndexContent, verify_chunks


def _import_bm25s_without_numba():  # noqa: ANN202 (the module)
    """bm25s, imported so that it does not load numba (a server's ~0.25 s of start and ~40 MB of LLVM).

    bm25s imports numba whenever it is installed (ranx brings it along in the test extra), for
    retrieval backends this store never calls: it scores with `get_scores` on numpy arrays. Masking
    numba for the import makes bm25s take its numpy path; numba is importable again right after
    (ranx needs it), so this runs at import time, before any thread of ours could want numba.
    """
    if "bm25s" in sys.modules or "numba" in sys.modules:
        import bm25s

        return bm25s
    sys.modules["numba"] = None  # type: ignore[assignment]  # `import numba` raises ImportError meanwhile
    try:
        import bm25s
    finally:
        del sys.modules["numba"]
    return bm25s


bm25s = _import_bm25s_without_numba()

CHUNKS = "chunks.jsonl"
CHUNK_OFFSETS = "chunk_offsets.npy"
CHUNK_VECTORS = "chunk_vectors.npy"
DENSE = "dense.faiss"
SENTENCE_VECTORS = "sentence_vectors.npy"
SENTENCE_OFFSETS = "sentence_offsets.npy"
BM25_DIR = "bm25"
# Every file and folder of an index (the manifest last): what a checksum or a copy must cover.
INDEX_FILES = (CHUNKS, CHUNK_OFFSETS, CHUNK_VECTORS, DENSE, SENTENCE_VECTORS, SENTENCE_OFFSETS, BM25_DIR, MANIFEST)

# Sentence vectors are 4/5 of an index's vectors; half precision halves them (cosines agree to ~1e-3,
# the gold set's figures are unchanged, see README).
SENTENCE_DTYPE = np.float16
# Up to this many chunks an index's vectors and BM25 arrays are read into memory (the book's take ~1 MB);
# beyond, they are memory-mapped and only the rows a question touches are paged in.
IN_MEMORY_MAX_CHUNKS = 20_000
# Decoded chunks kept per process: a question reads a few hundred (candidates, passages, sentences).
CHUNK_CACHE_SIZE = 8192
# The approximate index, chosen with `bookqa bench scale` (README): inverted lists (4·√n of them) over
# 8-bit scalar-quantised vectors, 256 lists probed; candidates are rescored with the exact vectors.
# At 100k chunks it matched HNSW (M=32) on recall and latency, built ~20× faster and holds ¼ of the memory.
IVF_LISTS_PER_SQRT = 4
IVF_PROBE = 256
IVF_TRAIN_PER_LIST = 40
# The HNSW alternative (`approximate="hnsw"`, also used by the Milvus store beyond the threshold).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256
# With a document filter, up to this many rows are scored exactly instead of walking the graph with a selector.
FILTER_EXACT_ROWS = 200_000
ADD_BATCH = 65_536


def choose_dense_index(n_chunks: int, exact_max_chunks: int, approximate: str = "ivf") -> StoreInfo:
    """Exact search while it is fast enough (a flat scan of `exact_max_chunks` rows), IVF-SQ8 beyond.

    `approximate="hnsw"` picks the HNSW alternative instead (measured against it, see README).
    """
    if n_chunks <= exact_max_chunks:
        return StoreInfo(kind="faiss", dense_index="flat")
    if approximate == "ivf":
        nlist = max(16, int(IVF_LISTS_PER_SQRT * math.sqrt(n_chunks)))
        return StoreInfo(kind="faiss", dense_index="ivf", params={"nlist": nlist, "nprobe": min(IVF_PROBE, nlist)})
    return StoreInfo(
        kind="faiss",
        dense_index="hnsw",
        params={"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH},
    )


def build_dense_index(vectors: np.ndarray, info: StoreInfo) -> faiss.Index:
    """The FAISS structure `info` names over `vectors` (inner product = cosine on normalised vectors)."""
    dim = vectors.shape[1]
    if info.dense_index == "flat":
        index: faiss.Index = faiss.IndexFlatIP(dim)
    elif info.dense_index == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(info.params["M"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(info.params["ef_construction"])
    elif info.dense_index == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        nlist = int(info.params["nlist"])
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10  # k-means iterations: the lists only need to be good enough to probe
        sample = np.random.default_rng(0).choice(len(vectors), size=min(len(vectors), nlist * IVF_TRAIN_PER_LIST), replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))
    else:
        raise ValueError(f"unknown dense index: {info.dense_index}")
    for start in range(0, len(vectors), ADD_BATCH):
        index.add(np.ascontiguousarray(vectors[start : start + ADD_BATCH], dtype=np.float32))
    return index


def chunk_record(chunk: Chunk) -> dict:
    """A chunk as its JSON record (what `Chunk.from_record` reads back)."""
    return {
        "chunk_id": chunk.chunk_id,
        "doc": chunk.doc,
        "section": chunk.section,
        "heading_path": list(chunk.heading_path),
        "start": chunk.start,
        "end": chunk.end,
        "text": chunk.text,
        "sentences": [
            {
                "start": s.start,
                "end": s.end,
                "kind": s.kind,
                "terms": list(s.terms),
                "page": s.page,
                "facts": [{"kind": f.kind, "start": f.start, "end": f.end} for f in s.facts],
            }
            for s in chunk.sentences
        ],
        "terms": list(chunk.terms),
        "page": chunk.page,
    }


class FaissStore:
    """A loaded FAISS index folder; see the module docstring for its files."""

    def __init__(self, folder: Path, manifest: Manifest, documents: Mapping[str, str]) -> None:
        self.manifest = manifest
        self.folder = folder
        self._documents = documents
        self._info = manifest.store
        try:
            self._chunk_offsets = np.load(folder / CHUNK_OFFSETS)
            # A small index is read into memory; a large one is memory-mapped, as plain array views of the
            # maps (np.memmap's own indexing cost ~10 % of a busy server's time; the view keeps the map open).
            mapped = manifest.n_chunks > IN_MEMORY_MAX_CHUNKS
            mode = "r" if mapped else None
            self._chunk_vectors = np.load(folder / CHUNK_VECTORS, mmap_mode=mode).view(np.ndarray)
            self._sentence_offsets = np.load(folder / SENTENCE_OFFSETS)
            self._sentence_vectors = np.load(folder / SENTENCE_VECTORS, mmap_mode=mode).view(np.ndarray)
            self._dense = faiss.read_index(str(folder / DENSE))
            self._bm25 = bm25s.BM25.load(str(folder / BM25_DIR), mmap=mapped, show_progress=False)
            with (folder / CHUNKS).open("rb") as file:
                size = file.seek(0, 2)
                self._chunk_file = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except (OSError, ValueError, TypeError, KeyError, RuntimeError, EOFError) as error:
            raise IndexCorruptError(
                f"색인 파일을 읽을 수 없습니다 ({folder}): {error}. `bookqa index --force`로 다시 만드세요."
            ) from error
        # The downcast view does not own the index: keep the object read_index returned alive beside it.
        self._dense_owner, self._dense = self._dense, faiss.downcast_index(self._dense)
        if self._info.dense_index == "hnsw":
            self._dense.hnsw.efSearch = int(self._info.params.get("ef_search", HNSW_EF_SEARCH))
        elif self._info.dense_index == "ivf":
            self._dense.nprobe = int(self._info.params.get("nprobe", IVF_PROBE))
        self._first_chunk = {doc: entry.first_chunk for doc, entry in manifest.documents.items()}
        self.chunk = lru_cache(maxsize=CHUNK_CACHE_SIZE)(self._read_chunk)
        self._check_shapes()

    def _check_shapes(self) -> None:
        n, dim = self.manifest.n_chunks, self.manifest.model.dim
        problems = []
        if len(self._chunk_offsets) != n + 1 or (n and self._chunk_offsets[-1] != len(self._chunk_file)):
            problems.append(f"청크 위치 {len(self._chunk_offsets) - 1}개, 매니페스트 {n}개")
        if self._chunk_vectors.shape != (n, dim):
            problems.append(f"청크 벡터 {self._chunk_vectors.shape}")
        if self._dense.ntotal != n or self._dense.d != dim:
            problems.append(f"FAISS 벡터 {self._dense.ntotal}개×{self._dense.d}차원")
        n_sentences = self.manifest.n_sentences
        if self._sentence_vectors.shape != (n_sentences, dim) or len(self._sentence_offsets) != n + 1:
            problems.append(f"문장 벡터 {self._sentence_vectors.shape}, 문장 {n_sentences}개")
        elif n and self._sentence_offsets[-1] != n_sentences:
            problems.append("문장 위치가 문장 수와 다릅니다")
        bm25_docs = getattr(self._bm25, "scores", {}).get("num_docs")
        if bm25_docs is not None and bm25_docs != n:
            problems.append(f"BM25 문서 {bm25_docs}개")
        if problems:
            raise IndexCorruptError(
                f"색인이 일관되지 않습니다 ({self.folder}): {'; '.join(problems)}. `bookqa index --force`로 다시 만드세요."
            )

    def verify(self) -> None:
        """Check every chunk against its document's text and the manifest's ranges (IndexCorruptError if not)."""
        offsets = self._sentence_offsets
        verify_chunks(self, self._documents, str(self.folder), lambda p: int(offsets[p + 1] - offsets[p]))

    def __len__(self) -> int:
        return self.manifest.n_chunks

    def _read_chunk(self, position: int) -> Chunk:
        if not 0 <= position < self.manifest.n_chunks:
            raise IndexError(position)
        start, end = self._chunk_offsets[position], self._chunk_offsets[position + 1]
        return Chunk.from_record(json.loads(self._chunk_file[start:end]))

    def position_of(self, chunk_id: str) -> int | None:
        doc, _, number = chunk_id.rpartition("#")
        entry = self.manifest.documents.get(doc)
        if entry is None or not number.isdigit() or int(number) >= entry.n_chunks:
            return None
        return entry.first_chunk + int(number)

    def iter_chunks(self) -> Iterator[Chunk]:
        for position in range(self.manifest.n_chunks):
            start, end = self._chunk_offsets[position], self._chunk_offsets[position + 1]
            yield Chunk.from_record(json.loads(self._chunk_file[start:end]))

    def document_text(self, doc: str) -> str:
        return self._documents[doc]

    def document_ids(self) -> list[str]:
        return sorted(self.manifest.documents)

    def _rows(self, docs: Collection[str]) -> np.ndarray:
        entries = [self.manifest.documents[doc] for doc in sorted(set(docs)) if doc in self.manifest.documents]
        if not entries:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(e.first_chunk, e.first_chunk + e.n_chunks, dtype=np.int64) for e in entries])

    def search_chunks(
        self, vector: np.ndarray, k: int, docs: Collection[str] | None = None
    ) -> list[tuple[int, float]]:
        query = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        if docs is not None:
            rows = self._rows(docs)
            if len(rows) <= FILTER_EXACT_ROWS or self._info.dense_index == "flat":
                return _top_k(rows, np.asarray(self._chunk_vectors[rows]) @ query[0], k)
            selector = faiss.IDSelectorBatch(rows)
            if self._info.dense_index == "hnsw":
                params = faiss.SearchParametersHNSW(sel=selector, efSearch=self._dense.hnsw.efSearch)
            else:
                params = faiss.SearchParametersIVF(sel=selector, nprobe=self._dense.nprobe)
            _, ids = self._dense.search(query, min(k, len(rows)), params=params)
        else:
            _, ids = self._dense.search(query, min(k, self.manifest.n_chunks))
        found = np.sort(ids[0][ids[0] >= 0])
        # The exact cosine from the stored vectors: the same score whichever structure found the chunk.
        return _top_k(found, np.asarray(self._chunk_vectors[found]) @ query[0], k)

    def sentence_cosines(self, vector: np.ndarray, positions: Sequence[int]) -> list[np.ndarray]:
        positions = np.asarray(positions, dtype=np.int64)
        if not len(positions):
            return []
        rows, counts = sentence_rows(self._sentence_offsets, positions)
        flat = np.ascontiguousarray(vector.reshape(-1), dtype=np.float32)
        scores = np.asarray(self._sentence_vectors[rows], dtype=np.float32) @ flat
        return np.split(scores, np.cumsum(counts)[:-1])

    def search_lexical(
        self, terms: Sequence[str], k: int, docs: Collection[str] | None = None
    ) -> list[tuple[int, float]]:
        n = self.manifest.n_chunks
        if not terms or not n:
            return []
        mask = None
        if docs is not None:
            mask = np.zeros(n, dtype=np.float32)
            mask[self._rows(docs)] = 1.0
        scores = self._bm25.get_scores(list(terms), weight_mask=mask)
        # Rank only chunks that can be among the k best: the k-th best score among the chunks of the query's
        # rarest term is a floor the true k-th best reaches, so nothing below it is looked at (exact, and at
        # a million chunks ~10x cheaper than ranking every chunk that shares a term).
        floor = self._score_floor(terms, scores, k)
        matched = np.flatnonzero(scores >= floor) if floor > 0 else np.flatnonzero(scores)
        return _top_k(matched, scores[matched], k)

    def _score_floor(self, terms: Sequence[str], scores: np.ndarray, k: int) -> float:
        """A score at least k chunks reach: the k-th best among the chunks of the rarest query term held by k."""
        postings = self._bm25.scores
        indptr, indices = postings["indptr"], postings["indices"]
        counts = {column: int(indptr[column + 1] - indptr[column]) for column in self._term_columns(terms)}
        held_by_k = [column for column in counts if counts[column] >= k]
        if not held_by_k:
            return 0.0
        column = min(held_by_k, key=lambda c: (counts[c], c))
        if counts[column] > len(scores) // 8:
            return 0.0  # the floor would leave most chunks to rank anyway
        seed_scores = scores[np.asarray(indices[indptr[column] : indptr[column + 1]])]
        return float(np.partition(seed_scores, len(seed_scores) - k)[len(seed_scores) - k])

    def _term_columns(self, terms: Sequence[str]) -> set[int]:
        vocabulary = self._bm25.vocab_dict
        return {vocabulary[term] for term in terms if term in vocabulary}

    def document_data(self, doc: str) -> DocumentData:
        entry = self.manifest.documents[doc]
        chunks = [self.chunk(p) for p in range(entry.first_chunk, entry.first_chunk + entry.n_chunks)]
        rows = slice(entry.first_sentence, entry.first_sentence + entry.n_sentences)
        return DocumentData(
            doc,
            entry.sha256,
            chunks,
            np.array(self._chunk_vectors[entry.first_chunk : entry.first_chunk + entry.n_chunks]),
            np.array(self._sentence_vectors[rows]),
        )

    def close(self) -> None:
        self.chunk.cache_clear()
        if isinstance(self._chunk_file, mmap.mmap):
            self._chunk_file.close()


def sentence_rows(offsets: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sentence rows of the chunks at `positions` (in order, concatenated) and how many each has."""
    starts = offsets[positions]
    counts = offsets[positions + 1] - starts
    shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return np.arange(int(counts.sum()), dtype=np.int64) + shift, counts


def _top_k(positions: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The `k` best (position, score) pairs, best first, ties by position."""
    if len(positions) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        # Chunks tied with the k-th score compete by position, so the cut does not depend on the candidates' order.
        ties = np.flatnonzero(scores == kth)
        above = np.flatnonzero(scores > kth)
        keep = np.concatenate([above, ties[np.argsort(positions[ties], kind="stable")[: k - len(above)]]])
        positions, scores = positions[keep], scores[keep]
    order = np.lexsort((positions, -scores))
    return [(int(positions[i]), float(scores[i])) for i in order]


def write_index_files(
    folder: Path, content: IndexContent, exact_max_chunks: int, approximate: str = "ivf"
) -> Manifest:
    """Write a whole index into an empty folder, streaming documents; the manifest goes last."""
    manifest = content.manifest
    n, n_sentences, dim = manifest.n_chunks, manifest.n_sentences, manifest.model.dim
    info = choose_dense_index(n, exact_max_chunks, approximate)
    chunk_vectors = np.lib.format.open_memmap(folder / CHUNK_VECTORS, mode="w+", dtype=np.float32, shape=(n, dim))
    sentence_vectors = np.lib.format.open_memmap(
        folder / SENTENCE_VECTORS, mode="w+", dtype=SENTENCE_DTYPE, shape=(n_sentences, dim)
    )
    chunk_offsets = np.zeros(n + 1, dtype=np.int64)
    sentence_offsets = np.zeros(n + 1, dtype=np.int64)
    vocabulary: dict[str, int] = {}
    token_ids: list[list[int]] = []
    row = sentence_row = 0
    with (folder / CHUNKS).open("wb") as out:
        for document in content.documents:
            entry = manifest.documents[document.doc_id]
            if (entry.first_chunk, entry.n_chunks, entry.n_sentences) != (row, len(document.chunks), document.n_sentences):
                raise ValueError(f"document {document.doc_id} does not match the manifest's ranges")
            chunk_vectors[row : row + len(document.chunks)] = document.chunk_vectors
            sentence_vectors[sentence_row : sentence_row + document.n_sentences] = document.sentence_vectors
            for chunk in document.chunks:
                chunk_offsets[row + 1] = chunk_offsets[row] + out.write(
                    json.dumps(chunk_record(chunk), ensure_ascii=False).encode("utf-8") + b"\n"
                )
                sentence_offsets[row + 1] = sentence_offsets[row] + len(chunk.sentences)
                token_ids.append([vocabulary.setdefault(term, len(vocabulary)) for term in chunk.terms])
                row += 1
            sentence_row += document.n_sentences
    if (row, sentence_row) != (n, n_sentences):
        raise ValueError(f"wrote {row} chunks and {sentence_row} sentences, the manifest says {n} and {n_sentences}")
    np.save(folder / CHUNK_OFFSETS, chunk_offsets)
    np.save(folder / SENTENCE_OFFSETS, sentence_offsets)
    chunk_vectors.flush()
    sentence_vectors.flush()
    faiss.write_index(build_dense_index(chunk_vectors, info), str(folder / DENSE))
    del chunk_vectors, sentence_vectors
    bm25 = bm25s.BM25()
    bm25.index((token_ids, vocabulary), show_progress=False)
    del token_ids
    bm25.save(str(folder / BM25_DIR), show_progress=False)
    manifest = manifest.model_copy(update={"store": info, "files": file_digests(folder)})
    (folder / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    return manifest


class FaissBackend:
    """Indexes as folders: the live one at `index_dir`, a new one built beside it and swapped in."""

    kind = "faiss"

    def __init__(self, settings: Settings) -> None:
        self.index_dir = settings.index_dir
        self.exact_max_chunks = settings.exact_max_chunks

    def location(self) -> str:
        return str(self.index_dir)

    def dense_index_for(self, n_chunks: int) -> str:
        return choose_dense_index(n_chunks, self.exact_max_chunks).dense_index

    def read_manifest(self) -> Manifest:
        recover_before_loading(self.index_dir)
        return read_manifest(self.index_dir)

    def open(self, manifest: Manifest, documents: list[Document], verify: bool = True) -> FaissStore:
        verify_digests(self.index_dir, manifest.files)
        store = FaissStore(self.index_dir, manifest, {document.doc_id: document.text for document in documents})
        if verify:
            store.verify()
        return store

    def write(self, content: IndexContent) -> Manifest:
        staging = staging_dir(self.index_dir)
        if staging.exists():
            shutil.rmtree(staging)  # the leftovers of an earlier interrupted build
        staging.mkdir(parents=True)
        manifest = write_index_files(staging, content, self.exact_max_chunks)
        backup = backup_dir(self.index_dir)
        if backup.exists():
            shutil.rmtree(backup)
        if self.index_dir.exists():
            self.index_dir.rename(backup)
        staging.rename(self.index_dir)
        if backup.exists():
            shutil.rmtree(backup)
        return manifest
