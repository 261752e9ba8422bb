"""A reference ranking: BM25 over whitespace-split, lower-cased tokens of the index's own chunks.

Scored beside the service's modes so the gain of Kiwi morphemes over plain word splitting is visible.
"""

from __future__ import annotations

from collections.abc import Sequence

import bm25s
import numpy as np

from indexer.chunking import Chunk, embedding_text
from indexer.retrieval import Passage

REFERENCE_MODE = "bm25-whitespace"


def whitespace_tokens(text: str) -> list[str]:
    """Lower-cased whitespace-separated words, punctuation and particles left attached.

    Deliberately naive: `마이데이터란` and `마이데이터는` stay different tokens.
    """
    return text.lower().split()


class WhitespaceBM25:
    """bm25s over whitespace tokens of the same texts the Kiwi BM25 index sees (heading + chunk).

    Only the tokenizer differs from the service's `bm25` mode, so the difference is the tokenizer's.
    """

    def __init__(self, chunks: Sequence[Chunk]) -> None:
        self.chunks = list(chunks)
        self.bm25 = bm25s.BM25()
        self.bm25.index([whitespace_tokens(embedding_text(chunk)) for chunk in self.chunks], show_progress=False)

    def search(self, query: str, top_k: int) -> list[Passage]:
        """The `top_k` best chunks as passages, best first; chunks sharing no token are left out.

        Ranked like the service's BM25 (stable sort, ties by chunk order).
        """
        tokens = whitespace_tokens(query)
        if not tokens:
            return []
        scores = np.asarray(self.bm25.get_scores(tokens))
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [Passage.from_chunk(self.chunks[i], float(scores[i])) for i in order if scores[i] > 0]
