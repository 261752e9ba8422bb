"""The fast serving path: the OpenVINO export and its lean encoder, micro-batching, backend checks, start-up.

Timings are not asserted here (machines are shared); `bookqa bench` measures them. These tests
check that the fast path gives the same vectors and the same answers, and fails clearly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from eval.gold import load_gold
from eval.metrics import hit_at_k, is_relevant, reciprocal_rank
from indexer.batching import QueryBatcher
from indexer.build import build_index
from indexer.embedding import Embedder, OpenVINOQueryEncoder
from indexer.engine import SearchEngine, load_analyzer, load_embedder
from indexer.manifest import IndexMismatchError
from indexer.openvino_encoder import COMPILED_DIR, OpenVINOEncoder, ensure_openvino_export
from indexer.settings import Settings
from indexer.store import load_index
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1]
GOLD = REPO / "eval" / "gold" / "qa.jsonl"


def test_the_default_is_the_openvino_int8_export(engine: SearchEngine) -> None:
    assert (engine.settings.backend, engine.settings.precision) == ("openvino", "int8")
    assert isinstance(engine.embedder, OpenVINOQueryEncoder)
    assert (engine.manifest.model.backend, engine.manifest.model.precision) == ("openvino", "int8")


def test_lean_encoder_matches_sentence_transformers_on_the_book(engine: SearchEngine, book_settings: Settings) -> None:
    """The runtime that serves questions gives sentence-transformers' own OpenVINO vectors, sentence for sentence."""
    builder = load_embedder(book_settings)
    lean = OpenVINOQueryEncoder(book_settings.model, book_settings.cache_dir, book_settings.precision)
    sentences = [chunk.sentence_text(s) for chunk in engine.chunks() for s in chunk.sentences]
    questions = [q.question for q in load_gold(GOLD)]
    for texts, ours, theirs in (
        (sentences, lean.encode_documents, builder.encode_documents),
        (questions, lean.encode_queries, builder.encode_queries),
    ):
        cosines = (ours(texts) * theirs(texts)).sum(axis=1)
        assert cosines.min() > 0.9999, texts[int(cosines.argmin())]


def test_questions_embedded_together_get_the_vectors_they_get_alone(book_settings: Settings) -> None:
    """Micro-batching pads questions to the longest of their pass: that must not move their vectors."""
    lean = OpenVINOQueryEncoder(book_settings.model, book_settings.cache_dir, book_settings.precision, threads=2)
    questions = [q.question for q in load_gold(GOLD)][:24]
    alone = np.concatenate([lean.encode_queries([question]) for question in questions])
    together = np.concatenate([lean.encode_queries(questions[i : i + 4]) for i in range(0, len(questions), 4)])
    assert (alone * together).sum(axis=1).min() > 0.9999


def test_the_compiled_model_is_cached_and_a_damaged_one_compiled_again(book_settings: Settings, tmp_path: Path) -> None:
    """Start-up loads OpenVINO's compiled model from beside the export; a truncated blob costs time, not answers."""
    import shutil

    export = tmp_path / "export"
    shutil.copytree(ensure_openvino_export(book_settings.model, book_settings.cache_dir, book_settings.precision), export)
    shutil.rmtree(export / COMPILED_DIR, ignore_errors=True)
    questions = ["마이데이터란 무엇인가?", "What is MyData?"]
    expected = OpenVINOEncoder(export).encode(questions, "query: ")
    blobs = list((export / COMPILED_DIR).glob("*.blob"))
    assert blobs, "no compiled model was cached"
    assert np.allclose(OpenVINOEncoder(export).encode(questions, "query: "), expected, atol=1e-6)
    for blob in blobs:
        blob.chmod(0o600)
        blob.write_bytes(blob.read_bytes()[:1000])
    assert np.allclose(OpenVINOEncoder(export).encode(questions, "query: "), expected, atol=1e-6)


def test_int8_retrieval_stays_within_001_of_float32(
    engine: SearchEngine, book_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Recall@1 and MRR@10 of the default (OpenVINO int8) index against a plain float32 torch index of the same book."""
    reference = book_settings.model_copy(
        update={"backend": "torch", "precision": "fp32", "index_dir": tmp_path_factory.mktemp("fp32") / "index"}
    )
    build_index(reference, load_embedder(reference), load_analyzer(reference))
    fp32 = SearchEngine(reference, load_embedder(reference), load_analyzer(reference))
    gold = [q for q in load_gold(GOLD) if q.answerable]

    def figures(search_engine: SearchEngine) -> tuple[float, float]:
        hits, ranks = [], []
        for question in gold:
            passages = search_engine.search(question.question, top_k=10)
            relevance = [is_relevant(p.text, question.evidence) for p in passages]
            hits.append(hit_at_k(relevance, 1))
            ranks.append(reciprocal_rank(relevance, 10))
        return float(np.mean(hits)), float(np.mean(ranks))

    (recall_int8, mrr_int8), (recall_fp32, mrr_fp32) = figures(engine), figures(fp32)
    assert abs(recall_int8 - recall_fp32) <= 0.01, (recall_int8, recall_fp32)
    assert abs(mrr_int8 - mrr_fp32) <= 0.01, (mrr_int8, mrr_fp32)


def test_an_index_built_with_another_backend_is_refused(engine: SearchEngine, private_settings: Settings) -> None:
    torch_settings = private_settings.model_copy(update={"backend": "torch", "precision": "fp32"})
    with pytest.raises(IndexMismatchError) as refused:
        load_index(torch_settings, Embedder(torch_settings.model, torch_settings.cache_dir))
    message = str(refused.value)
    assert "openvino/int8" in message and "torch/fp32" in message and "bookqa index" in message


def test_int8_needs_openvino() -> None:
    with pytest.raises(ValueError, match="int8"):
        Settings(backend="torch", precision="int8")


def test_batcher_shares_passes_between_concurrent_callers() -> None:
    calls: list[int] = []
    release = threading.Event()

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        release.wait(5)
        return np.array([[float(len(text))] for text in texts], dtype=np.float32)

    batcher = QueryBatcher(encode)
    results: dict[str, float] = {}
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    threads = [threading.Thread(target=lambda t=t: results.__setitem__(t, float(batcher.encode(t)[0, 0]))) for t in texts]
    for thread in threads:
        thread.start()
        time.sleep(0.02)  # the first caller's pass is under way while the others queue
    release.set()
    for thread in threads:
        thread.join(10)
    assert results == {t: float(len(t)) for t in texts}  # every caller got its own row
    assert calls[0] == 1 and sum(calls) == 5 and len(calls) < 5


def test_batcher_hands_errors_to_every_caller() -> None:
    def broken(texts: list[str]) -> np.ndarray:
        raise RuntimeError("model failed")

    batcher = QueryBatcher(broken)
    with pytest.raises(RuntimeError, match="model failed"):
        batcher.encode("질문")
    with pytest.raises(RuntimeError, match="model failed"):
        batcher.encode("또 다른 질문")


def test_serve_is_ready_without_torch_and_answers(engine: SearchEngine, private_settings: Settings) -> None:
    """`bookqa serve` as users start it: ready, answering, and no torch or sentence-transformers in the process."""
    port = free_port()
    env = {
        **os.environ,
        "BOOKQA_CORPUS_DIR": str(private_settings.corpus_dir),
        "BOOKQA_INDEX_DIR": str(private_settings.index_dir),
        "HF_HUB_OFFLINE": "1",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "ui.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and server.poll() is None and not ready:
            try:
                ready = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.1)
        assert ready, server.stderr.read().decode()[-2000:] if server.poll() is not None else "not ready in 180 s"
        body = httpx.post(f"{url}/v1/ask", json={"question": "마이데이터가 뭐야?"}, timeout=60).json()
        assert body["citations"] and not body["abstained"]
        # The chat is mounted after the service is ready; until then its address says it is preparing.
        chat = httpx.get(f"{url}/ui/", timeout=30)
        while chat.status_code == 503 and "준비" in chat.text and time.monotonic() < deadline:
            time.sleep(0.2)
            chat = httpx.get(f"{url}/ui/", timeout=30)
        assert chat.status_code == 200
        maps = Path(f"/proc/{server.pid}/maps").read_text()
        assert "libtorch" not in maps
        # bm25s is imported without numba (its LLVM alone is ~40 MB), though the test extra installs it.
        assert "llvmlite" not in maps
    finally:
        server.terminate()
        server.wait(30)


def test_bench_writes_every_figure(engine: SearchEngine, private_settings: Settings, tmp_path: Path) -> None:
    """`bookqa bench` end to end with small counts: the figures are there (their values are the benchmark's business)."""
    import json

    env = {
        **os.environ,
        "BOOKQA_CORPUS_DIR": str(private_settings.corpus_dir),
        "BOOKQA_INDEX_DIR": str(private_settings.index_dir),
        "HF_HUB_OFFLINE": "1",
    }
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "ui.cli", "bench", "--out", str(out), "--gold", str(GOLD)]
    command += ["--questions", "5", "--rss-requests", "40", "--load-seconds", "5", "--chat-users", "3"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    required = {
        "encode_fp32_p50_ms", "ask_p50_ms", "ask_p95_ms", "http_p50_ms", "http_p95_ms", "rps_c8", "rps_c32",
        "errors", "ready_s", "rss_ready_mb", "rss_after_mb",
    }
    assert required <= figures.keys()
    assert figures["errors"] == 0 and figures["encode_fp32_p50_ms"] > 0 and figures["rps_c8"] > 0
    assert figures["rss_after_mb"] > 100 and figures["requests_after"] >= 40
    assert 0 < figures["chat_http_p50_s"] <= figures["chat_http_max_s"] and figures["chat_server_cpu_s"] > 0
    assert figures["chat_ready_s"] >= figures["ready_s"] > 0
    assert (out / "bench.md").read_text(encoding="utf-8").startswith("# bookqa bench")
    assert (out / "bench.png").stat().st_size > 10_000
