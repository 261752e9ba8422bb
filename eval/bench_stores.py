"""`bookqa bench stores`: the gold set's retrieval through the FAISS store and the Milvus store, side by side.

Milvus (Lite, in a temporary file) is filled with the FAISS index's own chunks and vectors, so the
figures compare stores, not embeddings. Rows: FAISS; Milvus with client-side BM25 sparse vectors;
Milvus with its built-in BM25 function over the morphemes; and Milvus's own `hybrid_search`
(dense + lexical fused by a `WeightedRanker` 0.7/0.3, or RRF) instead of bookqa's convex fusion
with sentence vectors. Latency is per search with the query already embedded.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from eval.gold import GoldQuestion
from eval.metrics import hit_at_k, reciprocal_rank
from eval.scoring import relevant_chunk_ids
from indexer.corpus import load_corpus
from indexer.engine import SearchEngine
from indexer.milvus_store import MilvusBackend, encode_terms, milvus_client, query_vector
from indexer.retrieval import Retriever
from indexer.settings import Settings
from indexer.store import IndexContent, IndexStore, backend_for

Ranker = Callable[[str], list[str]]


def measure(name: str, rank: Ranker, engine: SearchEngine, gold: list[GoldQuestion]) -> dict[str, object]:
    """Recall@1, MRR@10 and search latency of one ranking function over the answerable questions."""
    chunks = list(engine.chunks())
    questions = [q for q in gold if q.answerable]
    rank(questions[0].question)
    hits, ranks, latencies = [], [], []
    for question in questions:
        started = time.perf_counter()
        ranked = rank(question.question)
        latencies.append((time.perf_counter() - started) * 1000)
        relevant = relevant_chunk_ids(chunks, question)
        relevance = [chunk_id in relevant for chunk_id in ranked]
        hits.append(hit_at_k(relevance, 1))
        ranks.append(reciprocal_rank(relevance, 10))
    return {
        "store": name,
        "recall_at_1": round(float(np.mean(hits)), 3),
        "mrr_at_10": round(float(np.mean(ranks)), 3),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p95_ms": round(float(np.percentile(latencies, 95)), 2),
    }


def milvus_engine(settings: Settings, faiss_engine: SearchEngine, folder: Path, lexical: str) -> SearchEngine:
    """A Milvus Lite index in `folder` holding the FAISS index's documents, and an engine over it."""
    milvus = settings.model_copy(
        update={"store": "milvus", "milvus_uri": str(folder / f"{lexical}.db"), "milvus_lexical": lexical}
    )
    store = open_store(settings)
    MilvusBackend(milvus).write(IndexContent(store.manifest, [store.document_data(d) for d in store.document_ids()]))
    store.close()
    return SearchEngine(milvus, faiss_engine.embedder, faiss_engine.analyzer)


def open_store(settings: Settings) -> IndexStore:
    """The live index of the store the settings name, as retrieval sees it."""
    backend = backend_for(settings)
    return backend.open(backend.read_manifest(), load_corpus(settings.corpus_dir), verify=False)


class Queries:
    """Every question embedded and analysed once, up front, so no timing includes it."""

    def __init__(self, engine: SearchEngine, gold: list[GoldQuestion]) -> None:
        texts = [q.question for q in gold]
        self.vectors = dict(zip(texts, engine.embedder.encode_queries(texts)[:, None, :]))
        self.terms = {text: engine.query_terms(text) for text in texts}

    def retriever(self, store: IndexStore, settings: Settings) -> Retriever:
        return Retriever(store, self.vectors.__getitem__, self.terms.__getitem__, settings.fusion, settings.dense_weight)


def server_side_hybrid(engine: SearchEngine, queries: Queries, ranker: str) -> Ranker:
    """Milvus's own hybrid_search over the engine's collection (no sentence vectors, no definition lift)."""
    from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

    settings = engine.settings
    client = milvus_client(settings.milvus_uri, settings.milvus_token)
    collection = engine.manifest.store.collection
    lexical = str(engine.manifest.store.params.get("lexical", "sparse"))
    weight = settings.dense_weight
    fuse = WeightedRanker(weight, 1 - weight) if ranker == "weighted" else RRFRanker(60)

    def rank(question: str) -> list[str]:
        vector = queries.vectors[question][0].tolist()
        terms = queries.terms[question]
        lexical_data = [encode_terms(terms)] if lexical == "bm25" else [query_vector(terms) or {0: 0.0}]
        requests = [
            AnnSearchRequest(data=[vector], anns_field="dense", param={"metric_type": "IP"}, limit=100),
            AnnSearchRequest(
                data=lexical_data,
                anns_field="bm25" if lexical == "bm25" else "lexical",
                param={"metric_type": "BM25" if lexical == "bm25" else "IP"},
                limit=100,
            ),
        ]
        hits = client.hybrid_search(collection, requests, fuse, limit=10, output_fields=["record"])[0]
        return [json.loads(hit["entity"]["record"])["chunk_id"] for hit in hits]

    return rank


def compare_stores(settings: Settings, faiss_engine: SearchEngine, gold: list[GoldQuestion]) -> Iterator[dict]:
    """One figures dict per row (see the module docstring)."""
    queries = Queries(faiss_engine, gold)

    def client_side(store_settings: Settings, mode: str = "hybrid") -> Ranker:
        retriever = queries.retriever(open_store(store_settings), store_settings)
        return lambda question: [p.chunk_id for p in retriever.search(question, 10, mode)]

    yield measure("faiss", client_side(settings), faiss_engine, gold)
    yield measure("faiss bm25 mode", client_side(settings, "bm25"), faiss_engine, gold)
    with tempfile.TemporaryDirectory(prefix="bookqa-stores-") as folder:
        for lexical in ("sparse", "bm25"):
            engine = milvus_engine(settings, faiss_engine, Path(folder), lexical)
            yield measure(f"milvus ({lexical}), convex fusion in bookqa", client_side(engine.settings), engine, gold)
            yield measure(f"milvus ({lexical}) bm25 mode", client_side(engine.settings, "bm25"), engine, gold)
            for ranker in ("weighted", "rrf"):
                rank = server_side_hybrid(engine, queries, ranker)
                yield measure(f"milvus ({lexical}) hybrid_search {ranker}", rank, engine, gold)
