"""Shared fixtures: the real model and one real index of the book, built once per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Nothing in the tests may reach for a model hub; the default model is converted offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Answers the tests get are remembered for feedback: in a throwaway database, never the checkout's.
os.environ.setdefault("BOOKQA_FEEDBACK_DB", os.path.join(tempfile.mkdtemp(prefix="bookqa-feedback-"), "feedback.sqlite3"))

import pytest  # noqa: E402

from indexer.embedding import Embedder  # noqa: E402
from indexer.engine import SearchEngine, load_analyzer, load_embedder, load_encoder  # noqa: E402
from indexer.korean import KoreanAnalyzer  # noqa: E402
from indexer.settings import Settings  # noqa: E402
from indexer.build import build_index  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "corpus"


@pytest.fixture(scope="session")
def book_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings over the real corpus folder with an index in a temporary folder."""
    return Settings(corpus_dir=CORPUS, index_dir=tmp_path_factory.mktemp("index") / "index")


@pytest.fixture(scope="session")
def embedder(book_settings: Settings) -> Embedder:
    return load_embedder(book_settings)


@pytest.fixture(scope="session")
def analyzer(book_settings: Settings) -> KoreanAnalyzer:
    return load_analyzer(book_settings)


@pytest.fixture(scope="session")
def engine(book_settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer) -> SearchEngine:
    """A search engine over a freshly built index of the book, answering through the serving encoder."""
    build_index(book_settings, embedder, analyzer)
    return SearchEngine(book_settings, load_encoder(book_settings), analyzer)


@pytest.fixture()
def private_settings(tmp_path: Path, book_settings: Settings, engine: SearchEngine) -> Settings:
    """A copy of the corpus and of the built index that a test may change or break."""
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    index_dir = tmp_path / "index"
    shutil.copytree(book_settings.index_dir, index_dir)
    return book_settings.model_copy(update={"corpus_dir": corpus, "index_dir": index_dir})


# Three passages of the book (NFT, 마이데이터, 스마트 팩토리): an index of them builds in seconds.
TINY_TOPICS = ("NFT(Non-Fungible Token)는", "마이데이터는 정보 주체가", "스마트 팩토리는 제품의")


def write_tiny_corpus(folder: Path, extra: str = "") -> Path:
    """A small corpus cut from the book (plus `extra` text as a document of its own), for tests that build."""
    book = (CORPUS / "digital-trend-2023.txt").read_text(encoding="utf-8")
    parts = []
    for topic in TINY_TOPICS:
        at = book.index(topic)
        start = book.rfind("\n", 0, at) + 1
        end = book.find("\n", at + 600)
        parts.append(book[start:end].strip())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "excerpts.txt").write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    if extra:
        (folder / "extra.txt").write_text(extra, encoding="utf-8")
    return folder


@pytest.fixture()
def tiny_settings(tmp_path: Path, book_settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer) -> Settings:
    """Settings over a small corpus cut from the book, its index built."""
    settings = book_settings.model_copy(
        update={"corpus_dir": write_tiny_corpus(tmp_path / "corpus"), "index_dir": tmp_path / "index"}
    )
    build_index(settings, embedder, analyzer)
    return settings
