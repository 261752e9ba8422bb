"""Retrieval over a loaded index: dense (FAISS), BM25 over Kiwi morphemes, and their fusion."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from indexer.chunking import Chunk
from indexer.embedding import Embedder
from indexer.korean import KoreanAnalyzer
from indexer.settings import SearchMode
from indexer.store import LoadedIndex

# Reciprocal rank fusion constant from Cormack et al. (2009); see the README for the measured choice.
RRF_K = 60
# How deep each ranking goes before fusion; the book has under a hundred chunks.
FUSION_DEPTH = 50


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk with its score; `text` is exactly `document[start:end]`."""

    chunk_id: str
    doc: str
    section: str
    start: int
    end: int
    text: str
    score: float

    @classmethod
    def from_chunk(cls, chunk: Chunk, score: float) -> Passage:
        return cls(chunk.chunk_id, chunk.doc, chunk.section, chunk.start, chunk.end, chunk.text, round(score, 6))


def rrf_fuse(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: sum of 1/(k + rank) over rankings, best first (ties by id)."""
    scores: dict[int, float] = defaultdict(float)
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] += 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))


class Retriever:
    """Ranks the chunks of one index for a query in any of the three modes."""

    def __init__(self, index: LoadedIndex, embedder: Embedder, analyzer: KoreanAnalyzer) -> None:
        self.index = index
        self.embedder = embedder
        self.analyzer = analyzer

    def dense_ranking(self, query: str, depth: int) -> list[tuple[int, float]]:
        """Chunk ids and cosine similarities, best first."""
        vector = self.embedder.encode_queries([query])
        depth = min(depth, self.index.dense.ntotal)
        scores, ids = self.index.dense.search(vector, depth)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def bm25_ranking(self, query: str, depth: int) -> list[tuple[int, float]]:
        """Chunk ids and BM25 scores, best first; chunks sharing no morpheme are left out."""
        tokens = self.analyzer.content_morphemes(query)
        if not tokens:
            return []
        scores = self.index.bm25.get_scores(tokens)
        order = np.argsort(-scores, kind="stable")[:depth]
        return [(int(i), float(scores[i])) for i in order if scores[i] > 0]

    def search(self, query: str, top_k: int, mode: SearchMode) -> list[Passage]:
        """The `top_k` best passages for `query`, best first."""
        if mode == "dense":
            ranked = self.dense_ranking(query, top_k)
        elif mode == "bm25":
            ranked = self.bm25_ranking(query, top_k)
        else:
            dense = self.dense_ranking(query, FUSION_DEPTH)
            lexical = self.bm25_ranking(query, FUSION_DEPTH)
            ranked = rrf_fuse([[i for i, _ in dense], [i for i, _ in lexical]])[:top_k]
        return [Passage.from_chunk(self.index.chunks[i], score) for i, score in ranked]
