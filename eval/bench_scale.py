"""`bookqa bench scale`: retrieval over a synthetic library of N chunks, built and searched like a real one.

The library is made from the book itself, so BM25 and the vectors see realistic Korean:

- **text**: each synthetic chunk strings together sentences drawn at random from the book (as many
  as the book's own chunks hold), with their Kiwi morphemes; 100 chunks make a document.
- **sentence vectors**: the real embedder's vectors of those sentences (float16, as stored).
- **chunk vectors**: from the real embedder for up to `--embed-max` chunks (10,000 by default);
  beyond that, *perturbed real vectors*: the mean of the chunk's real sentence vectors plus Gaussian
  noise (σ = 0.01 per dimension), normalised. The bench reports how close that construction comes to
  the embedder on a sample it did embed.

Each size is written with the FAISS store's own writer (exact up to `exact_max_chunks`, IVF-SQ8 beyond)
and then searched in a fresh process (so `rss_mb` is the store's, not the generator's) with the gold
questions' real query vectors and morphemes: hybrid retrieval, top 10, query embedding excluded.
`recall_at_10` compares those top 10 with the same retrieval over an exact (flat) scan.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.chunking import Chunk, Sentence, embedding_text
from indexer.faiss_store import (
    CHUNK_VECTORS,
    DENSE,
    FaissStore,
    build_dense_index,
    write_index_files,
)
from indexer.manifest import DocumentEntry, StoreInfo, read_manifest
from indexer.retrieval import Retriever
from indexer.store import DocumentData, IndexContent

if TYPE_CHECKING:
    from indexer.engine import SearchEngine

CHUNKS_PER_DOCUMENT = 100
NOISE_SIGMA = 0.01
QUERY_FILE = "queries.json"
TOP_K = 10


class SentencePool:
    """The book's sentences (text, kind, morphemes, vector), the pool synthetic chunks are drawn from."""

    def __init__(self, engine: SearchEngine) -> None:
        seen: set[tuple[str, int]] = set()
        self.texts: list[str] = []
        self.kinds: list[str] = []
        self.terms: list[tuple[str, ...]] = []
        self.sizes: list[int] = []
        self.headings: list[tuple[str, ...]] = []
        for chunk in engine.chunks():
            self.sizes.append(len(chunk.sentences))
            if chunk.heading_path:
                self.headings.append(chunk.heading_path)
            for sentence in chunk.sentences:
                if (chunk.doc, sentence.start) not in seen:
                    seen.add((chunk.doc, sentence.start))
                    self.texts.append(chunk.sentence_text(sentence))
                    self.kinds.append(sentence.kind)
                    self.terms.append(sentence.terms)
        # Half precision, as the store keeps sentence vectors.
        self.vectors = engine.embedder.encode_documents(self.texts).astype(np.float16).astype(np.float32)
        self.headings = self.headings or [()]


def synthetic_documents(
    pool: SentencePool, n_chunks: int, seed: int, chunk_vectors: np.ndarray | None
) -> Iterator[DocumentData]:
    """The library, document by document (deterministic for a seed); `chunk_vectors` replaces the perturbed ones."""
    rng = np.random.default_rng(seed)
    made = 0
    doc_number = 0
    while made < n_chunks:
        doc_id = f"lib-{doc_number:06d}.txt"
        count = min(CHUNKS_PER_DOCUMENT, n_chunks - made)
        chunks, chunk_rows, sentence_rows = [], [], []
        offset = 0
        for number in range(count):
            picks = rng.integers(0, len(pool.texts), size=int(rng.choice(pool.sizes)) or 1)
            sentences, start = [], offset
            for pick in picks:
                text = pool.texts[pick]
                sentences.append(Sentence(offset, offset + len(text), pool.kinds[pick], pool.terms[pick]))  # type: ignore[arg-type]
                offset += len(text) + 1
            heading = pool.headings[int(rng.integers(len(pool.headings)))]
            chunk = Chunk(
                chunk_id=f"{doc_id}#{number}",
                doc=doc_id,
                section=" > ".join(heading),
                heading_path=heading,
                start=start,
                end=offset - 1,
                text="\n".join(pool.texts[p] for p in picks),
                sentences=tuple(sentences),
            )
            heading_terms = () if not heading else tuple(t for t in heading[-1].split() if t)
            chunks.append(replace(chunk, terms=heading_terms + tuple(t for p in picks for t in pool.terms[p])))
            vectors = pool.vectors[picks]
            sentence_rows.append(vectors)
            if chunk_vectors is None:
                mean = vectors.mean(axis=0) + rng.normal(0.0, NOISE_SIGMA, size=vectors.shape[1])
                chunk_rows.append(mean / np.linalg.norm(mean))
        if chunk_vectors is not None:
            chunk_rows = list(chunk_vectors[made : made + count])
        yield DocumentData(
            doc_id,
            f"synthetic-{seed}-{doc_number}",
            chunks,
            np.asarray(chunk_rows, dtype=np.float32),
            np.concatenate(sentence_rows).astype(np.float16),
        )
        made += count
        doc_number += 1


def folder_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20, 1)


def build_library(
    engine: SearchEngine,
    pool: SentencePool,
    n_chunks: int,
    folder: Path,
    embed_max: int,
    approximate: str,
    exact_max_chunks: int,
) -> dict[str, object]:
    """Generate and write one library; returns its build figures."""
    started = time.perf_counter()
    chunk_vectors = None
    embed_s = 0.0
    if n_chunks <= embed_max:
        texts = [embedding_text(c) for d in synthetic_documents(pool, n_chunks, n_chunks, None) for c in d.chunks]
        embed_started = time.perf_counter()
        chunk_vectors = engine.embedder.encode_documents(texts)
        embed_s = time.perf_counter() - embed_started
    # One pass to count (the manifest carries every document's ranges), one to write.
    entries, chunk_row, sentence_row = {}, 0, 0
    for data in synthetic_documents(pool, n_chunks, n_chunks, chunk_vectors):
        entries[data.doc_id] = DocumentEntry(
            sha256=data.sha256, first_chunk=chunk_row, n_chunks=len(data.chunks),
            first_sentence=sentence_row, n_sentences=data.n_sentences,
        )
        chunk_row += len(data.chunks)
        sentence_row += data.n_sentences
    manifest = engine.manifest.model_copy(
        update={
            "corpus": {doc: entry.sha256 for doc, entry in entries.items()},
            "documents": entries,
            "n_chunks": chunk_row,
            "n_sentences": sentence_row,
            "store": StoreInfo(),
        }
    )
    generated = time.perf_counter()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    content = IndexContent(manifest, synthetic_documents(pool, n_chunks, n_chunks, chunk_vectors))  # type: ignore[arg-type]
    written = write_index_files(folder, content, exact_max_chunks, approximate)
    finished = time.perf_counter()
    return {
        "chunks": n_chunks,
        "sentences": sentence_row,
        "vectors": "embedder" if chunk_vectors is not None else "perturbed",
        "dense_index": written.store.dense_index,
        "build_s": round(finished - generated, 1),
        "embed_s": round(embed_s, 1),
        "generate_s": round(generated - started - embed_s, 1),
        "index_mb": folder_mb(folder),
    }


def save_queries(engine: SearchEngine, questions: list[str], folder: Path) -> Path:
    """The gold questions' vectors and morphemes, so the search process needs no model."""
    path = folder / QUERY_FILE
    vectors = engine.embedder.encode_queries(questions)
    path.write_text(
        json.dumps(
            {"questions": questions, "terms": [list(engine.query_terms(q)) for q in questions], "vectors": vectors.tolist()},
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    return path


def search_library(folder: Path, queries_path: Path, dense_weight: float) -> dict[str, object]:
    """Open the library, run every query (hybrid, top 10) twice, then an exact-scan reference; figures as a dict."""
    queries = json.loads(queries_path.read_text(encoding="utf-8"))
    questions, vectors = queries["questions"], np.asarray(queries["vectors"], dtype=np.float32)
    terms = {q: tuple(t) for q, t in zip(questions, queries["terms"])}
    vector_of = {q: vectors[i : i + 1] for i, q in enumerate(questions)}
    started = time.perf_counter()
    store = FaissStore(folder, read_manifest(folder), {})
    load_s = time.perf_counter() - started
    retriever = Retriever(store, vector_of.__getitem__, terms.__getitem__, dense_weight=dense_weight)
    for question in questions[:10]:
        retriever.search(question, TOP_K, "hybrid")  # page in, first-call costs
    latencies, results, dense = [], [], []
    for question in questions:
        begun = time.perf_counter()
        passages = retriever.search(question, TOP_K, "hybrid")
        latencies.append((time.perf_counter() - begun) * 1000)
        results.append([p.chunk_id for p in passages])
        dense.append([p for p, _ in store.search_chunks(vector_of[question][0], TOP_K)])
    rss_mb = peak_rss_mb()
    figures: dict[str, object] = {
        "load_s": round(load_s, 2),
        "rss_mb": round(rss_mb),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p95_ms": round(float(np.percentile(latencies, 95)), 2),
    }
    if store.manifest.store.dense_index == "flat":
        figures.update({"recall_at_10": 1.0, "dense_recall_at_10": 1.0, "exact_p50_ms": figures["p50_ms"]})
        return figures
    # The reference: the same store searched by an exact scan of the same vectors.
    exact = faiss_flat(folder)
    store._dense = exact  # noqa: SLF001 - the bench swaps the structure it measures, nothing else
    exact_latencies, recall, dense_recall = [], [], []
    for question, found, found_dense in zip(questions, results, dense):
        begun = time.perf_counter()
        passages = retriever.search(question, TOP_K, "hybrid")
        exact_latencies.append((time.perf_counter() - begun) * 1000)
        truth = {p.chunk_id for p in passages}
        recall.append(len(truth & set(found)) / max(len(truth), 1))
        truth_dense = {p for p, _ in store.search_chunks(vector_of[question][0], TOP_K)}
        dense_recall.append(len(truth_dense & set(found_dense)) / max(len(truth_dense), 1))
    figures.update(
        {
            "recall_at_10": round(float(np.mean(recall)), 4),
            "dense_recall_at_10": round(float(np.mean(dense_recall)), 4),
            "exact_p50_ms": round(float(np.percentile(exact_latencies, 50)), 2),
        }
    )
    return figures


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not inherit the parent's across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def faiss_flat(folder: Path):  # noqa: ANN201 - faiss has no type stubs
    """An exact inner-product index over a library's stored chunk vectors."""
    vectors = np.load(folder / CHUNK_VECTORS, mmap_mode="r")
    return build_dense_index(vectors, StoreInfo(dense_index="flat"))


def run_scale(
    engine: SearchEngine,
    sizes: list[int],
    work_dir: Path,
    questions: list[str],
    embed_max: int,
    approximate: str,
    exact_max_chunks: int,
    keep: bool,
    deadline: float,
) -> Iterator[dict[str, object]]:
    """Build and search each size in turn, yielding one figures dict per size (stops at the deadline)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    pool = SentencePool(engine)
    queries = save_queries(engine, questions, work_dir)
    fidelity = perturbation_fidelity(engine, pool) if any(n > embed_max for n in sizes) else None
    for n in sizes:
        if time.monotonic() > deadline:
            yield {"chunks": n, "skipped": "time budget spent"}
            continue
        folder = work_dir / f"library-{n}"
        figures = build_library(engine, pool, n, folder, embed_max, approximate, exact_max_chunks)
        remaining = max(60.0, deadline - time.monotonic())
        process = subprocess.run(
            [sys.executable, "-m", "eval.bench_scale", str(folder), str(queries), str(engine.settings.dense_weight)],
            capture_output=True,
            text=True,
            timeout=remaining,
        )
        if process.returncode != 0:
            raise RuntimeError(f"search of {n} chunks failed: {process.stderr[-2000:]}")
        figures.update(json.loads(process.stdout.strip().splitlines()[-1]))
        if figures["vectors"] == "perturbed":
            figures["perturbed_vs_embedder_cosine"] = fidelity
        if not keep:
            shutil.rmtree(folder)
        yield figures


def perturbation_fidelity(engine: SearchEngine, pool: SentencePool, sample: int = 200) -> float:
    """Mean cosine between the embedder's chunk vectors and the perturbed construction, on `sample` chunks."""
    documents = list(synthetic_documents(pool, sample, 7, None))
    chunks = [c for d in documents for c in d.chunks]
    perturbed = np.concatenate([d.chunk_vectors for d in documents])
    real = engine.embedder.encode_documents([embedding_text(c) for c in chunks])
    return round(float(np.mean(np.sum(real * perturbed, axis=1))), 4)


if __name__ == "__main__":
    # The search half, in its own process: python -m eval.bench_scale FOLDER QUERIES DENSE_WEIGHT
    print(json.dumps(search_library(Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]))))
