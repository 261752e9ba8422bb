"""The index manifest: what an index was built from, and the errors of an unusable index.

Loading compares the manifest with the settings, the model and the corpus, so an index that no
longer matches is refused with a readable reason instead of returning silently wrong passages.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from indexer.corpus import Document, file_sha256
from indexer.embedding import QueryEncoder
from indexer.korean import ANALYZER_VERSION
from indexer.settings import Settings

# Bumped when the files of an index change shape (3: sentence kinds and morphemes in chunks.jsonl;
# 4: a store section, per-document chunk ranges, BM25 terms per chunk, float16 sentence vectors;
# 5: the page of each chunk and sentence; 6: each sentence's fact spans, its dates, numbers, places and names).
FORMAT_VERSION = 6
# Bumped when heading detection or chunk packing changes, so old indexes are rebuilt.
CHUNKER_VERSION = 3
MANIFEST = "manifest.json"
# Libraries whose version changes what the index contains (tokens, vectors, file formats).
TRACKED_LIBRARIES = ("kiwipiepy", "sentence-transformers", "transformers", "torch", "faiss-cpu", "bm25s")
# The libraries whose version changes chunks or vectors: a document's cached vectors are reused only when these match.
CONTENT_LIBRARIES = ("kiwipiepy", "sentence-transformers", "transformers", "torch")
# The same weights reproduce the probe to ~1e-6; another model or other weights do not.
PROBE_MIN_COSINE = 0.999


class IndexLoadError(RuntimeError):
    """The index cannot be used as it is; the message says why and what to run."""


class IndexMissingError(IndexLoadError):
    """There is no index yet."""


class IndexMismatchError(IndexLoadError):
    """The index was built from other settings, another model or another corpus."""


class IndexCorruptError(IndexLoadError):
    """An index file is missing, unreadable or inconsistent."""


class ModelInfo(BaseModel):
    name: str
    # How the vectors were computed: an index is served only by the same backend and precision.
    backend: str = "torch"
    precision: str = "fp32"
    dim: int
    max_seq_length: int
    query_prompt: str
    document_prompt: str
    probe: list[float]


class ChunkingInfo(BaseModel):
    chunk_tokens: int
    overlap_sentences: int
    chunker_version: int
    analyzer_version: int


class StoreInfo(BaseModel):
    """Where and how the vectors are searched: FAISS files or a Milvus collection, and the dense index chosen."""

    kind: Literal["faiss", "milvus"] = "faiss"
    # "flat" (exact) or an approximate index ("hnsw", "ivf"), chosen by the number of chunks.
    dense_index: str = "flat"
    params: dict[str, int | float | str] = Field(default_factory=dict)
    # The Milvus collection behind the alias when this build went live (empty for FAISS).
    collection: str = ""


class DocumentEntry(BaseModel):
    """One document's rows in the index: chunks and sentences are stored document by document, in id order."""

    sha256: str
    first_chunk: int
    n_chunks: int
    first_sentence: int
    n_sentences: int


class Manifest(BaseModel):
    """What an index was built from; compared field by field on load and before rebuilding."""

    format_version: int
    created_at: str
    model: ModelInfo
    chunking: ChunkingInfo
    corpus: dict[str, str]
    user_dict_sha256: str | None
    libraries: dict[str, str]
    n_chunks: int
    build_seconds: float
    n_sentences: int = 0
    store: StoreInfo = Field(default_factory=StoreInfo)
    documents: dict[str, DocumentEntry] = Field(default_factory=dict)

    def same_content_as(self, other: Manifest) -> bool:
        """Whether chunks and vectors made under `other` are valid here (same model, chunking, dictionary, versions)."""
        return (
            self.format_version == other.format_version
            and self.model == other.model
            and self.chunking == other.chunking
            and self.user_dict_sha256 == other.user_dict_sha256
            and all(self.libraries.get(name) == other.libraries.get(name) for name in CONTENT_LIBRARIES)
        )
    # SHA-256 of every file of the index folder (the manifest excepted), verified on every load.
    files: dict[str, str] | None = None


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries in TRACKED_LIBRARIES."""
    versions = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "missing"
    return versions


def chunking_info(settings: Settings) -> ChunkingInfo:
    """The chunking settings an index built now would record."""
    return ChunkingInfo(
        chunk_tokens=settings.chunk_tokens,
        overlap_sentences=settings.overlap_sentences,
        chunker_version=CHUNKER_VERSION,
        analyzer_version=ANALYZER_VERSION,
    )


def _cosine(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denominator = float(np.linalg.norm(va) * np.linalg.norm(vb))
    return float(va @ vb) / denominator if denominator else 0.0


def manifest_differences(
    manifest: Manifest,
    settings: Settings,
    documents: list[Document],
    embedder: QueryEncoder | None,
    include_libraries: bool,
) -> list[str]:
    """Readable reasons why `manifest` does not describe an index for these inputs ([] if it does)."""
    reasons = []
    if manifest.format_version != FORMAT_VERSION:
        reasons.append(f"색인 형식 버전이 다릅니다 ({manifest.format_version} → {FORMAT_VERSION})")
    if manifest.model.name != settings.model:
        reasons.append(f"모델이 다릅니다: 색인은 '{manifest.model.name}', 설정은 '{settings.model}'")
    elif embedder is not None:
        built_with = (manifest.model.backend, manifest.model.precision)
        if built_with != (embedder.backend, embedder.precision):
            reasons.append(
                f"임베딩 방식이 다릅니다: 색인은 {built_with[0]}/{built_with[1]}, "
                f"설정은 {embedder.backend}/{embedder.precision} (BOOKQA_BACKEND, BOOKQA_PRECISION)"
            )
        elif manifest.model.dim != embedder.dim:
            reasons.append(f"임베딩 차원이 다릅니다: 색인 {manifest.model.dim}, 모델 {embedder.dim}")
        elif (manifest.model.query_prompt, manifest.model.document_prompt) != (
            embedder.query_prompt,
            embedder.document_prompt,
        ):
            reasons.append("모델의 질의/문서 프롬프트가 색인을 만들 때와 다릅니다")
        elif _cosine(manifest.model.probe, embedder.probe()) < PROBE_MIN_COSINE:
            reasons.append(f"'{settings.model}' 모델의 가중치가 색인을 만들 때와 다릅니다")
    current_chunking = chunking_info(settings)
    if manifest.chunking != current_chunking:
        reasons.append(
            f"청크 설정이 다릅니다: 색인 {manifest.chunking.model_dump()}, 설정 {current_chunking.model_dump()}"
        )
    current = {document.doc_id: document.sha256 for document in documents}
    if manifest.corpus != current:
        changed = sorted(set(manifest.corpus) ^ set(current) | {d for d in current if manifest.corpus.get(d) != current[d]})
        reasons.append(f"코퍼스가 바뀌었습니다: {', '.join(changed)}")
    if manifest.user_dict_sha256 != file_sha256(settings.user_dict_path):
        reasons.append("사용자 사전(user_dict.tsv)이 바뀌었습니다")
    if manifest.libraries.get("kiwipiepy") != library_versions()["kiwipiepy"]:
        # BM25 tokens come from Kiwi: another version may split words differently.
        reasons.append(f"kiwipiepy 버전이 다릅니다 ({manifest.libraries.get('kiwipiepy')} → {library_versions()['kiwipiepy']})")
    if manifest.store.kind == "faiss" and not manifest.files:
        reasons.append("색인에 파일 체크섬이 없습니다 (이전 버전이 만든 색인)")
    if include_libraries:
        current_libraries = library_versions()
        for name, built_with in manifest.libraries.items():
            if name != "kiwipiepy" and current_libraries.get(name) != built_with:
                reasons.append(f"{name} 버전이 다릅니다 ({built_with} → {current_libraries.get(name)})")
    return reasons


def parse_manifest(raw: bytes | str, where: str) -> Manifest:
    """A manifest from its JSON, or IndexCorruptError naming `where` it came from."""
    try:
        return Manifest.model_validate_json(raw)
    except (ValidationError, ValueError) as error:
        raise IndexCorruptError(f"색인 매니페스트가 손상되었습니다: {where}. `bookqa index --force`로 다시 만드세요.") from error


def read_manifest(index_dir: Path) -> Manifest:
    """The manifest of an index folder, or a clear IndexLoadError."""
    path = index_dir / MANIFEST
    if not index_dir.exists():
        raise IndexMissingError(f"색인이 없습니다: {index_dir}. 먼저 `bookqa index`를 실행하세요.")
    try:
        raw = path.read_bytes()
    except FileNotFoundError as error:
        raise IndexCorruptError(f"색인 매니페스트가 없습니다: {path}. `bookqa index --force`로 다시 만드세요.") from error
    except OSError as error:  # e.g. the index path is a file, or unreadable
        raise IndexCorruptError(f"색인 매니페스트를 읽을 수 없습니다: {path} ({error.strerror}).") from error
    return parse_manifest(raw, str(path))
