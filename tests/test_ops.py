"""Operating bookqa: /metrics, JSON request logs with request ids, reader feedback in SQLite and its export."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from eval.gold import GoldFileError, load_gold
from indexer.engine import SearchEngine
from indexer.settings import Settings
from service.api import create_api
from service.feedback import FeedbackStore, UnknownAnswerError
from service.llm import LLMAnswerer
from service.observability import configure_logging
from service.qa import AskResult, QAService, Turn
from tests.servers import LoopbackServer, free_port
from tests.test_cli import BOOKQA
from tests.test_llm import fake_openai


@pytest.fixture(scope="module")
def qa(engine: SearchEngine) -> QAService:
    return QAService(engine)


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(feedback_db=tmp_path / "feedback.sqlite3")


def scrape(client: TestClient | httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- metrics ----------------------------------------------------------------------------------------


def test_metrics_move_with_requests_answers_and_abstentions(qa: QAService, settings: Settings, engine: SearchEngine) -> None:
    with TestClient(create_api(settings, qa=qa)) as client:
        before = scrape(client)
        assert value(before, "bookqa_ready") == 1.0
        assert value(before, "bookqa_index_chunks") == engine.n_chunks
        assert value(before, "bookqa_index_documents") == 1.0
        info = [key for key in before if key[0] == "bookqa_index_info"]
        assert info and dict(info[0][1])["model"] == engine.manifest.model.name
        for question in ("NFT가 뭐야?", "클라우드 서비스 유형은?", "김치찌개 끓이는 법 알려줘"):
            assert client.post("/v1/ask", json={"question": question}).status_code == 200
        assert client.post("/v1/ask", json={"question": ""}).status_code == 422
        after = scrape(client)
    assert value(after, "bookqa_answers_total", answer_mode="extractive", channel="api") == 3
    assert value(after, "bookqa_abstentions_total", channel="api") == 1
    assert value(after, "bookqa_http_requests_total", method="POST", route="/v1/ask", status="200") == 3
    assert value(after, "bookqa_http_requests_total", method="POST", route="/v1/ask", status="422") == 1
    assert value(after, "bookqa_http_request_duration_seconds_count", method="POST", route="/v1/ask") == 4
    assert value(after, "bookqa_llm_fallbacks_total") == 0


def test_llm_fallbacks_are_counted(engine: SearchEngine, settings: Settings) -> None:
    app, behaviour = fake_openai()
    behaviour.update(reply="늦은 답 [1]", delay=3.0)
    with LoopbackServer(app) as llm:
        service = QAService(engine, LLMAnswerer(f"{llm.url}/v1", "test-model", "sk-test", 0.3))
        with TestClient(create_api(settings, qa=service)) as client:
            body = client.post("/v1/ask", json={"question": "NFT가 뭐야?"}).json()
            samples = scrape(client)
    assert body["notes"] and body["answer_mode"] == "extractive"
    assert value(samples, "bookqa_llm_fallbacks_total") == 1


def test_metrics_before_the_index_is_loaded(settings: Settings) -> None:
    release = threading.Event()
    with TestClient(create_api(settings, loader=lambda: release.wait(30) and None)) as client:  # type: ignore[arg-type]
        samples = scrape(client)
        release.set()
    assert value(samples, "bookqa_ready") == 0.0
    assert not any(name == "bookqa_index_chunks" for name, _ in samples)


# --- request ids and logs ----------------------------------------------------------------------------


@pytest.fixture()
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging("INFO", stream)
    yield stream
    import logging

    logging.getLogger("bookqa").removeHandler(handler)


def test_one_json_log_line_per_request_with_its_id(qa: QAService, settings: Settings, log_lines: io.StringIO) -> None:
    with TestClient(create_api(settings, qa=qa)) as client:
        given = client.post("/v1/ask", json={"question": "마이데이터가 뭐야?"}, headers={"X-Request-ID": "trace-42"})
        fresh = client.post("/v1/ask", json={"question": "NFT가 뭐야?"})
        hostile = client.get("/healthz", headers={"X-Request-ID": "bad id\r\nX-Evil: 1"})
    assert given.headers["X-Request-ID"] == "trace-42"
    assert len(fresh.headers["X-Request-ID"]) == 32 and fresh.headers["X-Request-ID"] != "trace-42"
    assert hostile.headers["X-Request-ID"] != "bad id\r\nX-Evil: 1"
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert first["request_id"] == "trace-42" and first["route"] == "/v1/ask" and first["status"] == 200
    assert first["level"] == "INFO" and first["name"] == "bookqa.access" and first["duration_ms"] > 0
    assert first["question_chars"] == len("마이데이터가 뭐야?") and first["answer_id"] == given.json()["answer_id"]
    assert [line["request_id"] for line in lines[1:]] == [fresh.headers["X-Request-ID"], hostile.headers["X-Request-ID"]]
    # The question's text stays out of the log unless configured.
    assert "마이데이터" not in log_lines.getvalue() and "question" not in first


def test_question_text_is_logged_only_when_configured(qa: QAService, settings: Settings, log_lines: io.StringIO) -> None:
    with TestClient(create_api(settings.model_copy(update={"log_questions": True}), qa=qa)) as client:
        client.post("/v1/ask", json={"question": "마이데이터가 뭐야?"})
    assert json.loads(log_lines.getvalue().splitlines()[0])["question"] == "마이데이터가 뭐야?"


# --- feedback ----------------------------------------------------------------------------------------


def test_feedback_on_an_answer_is_stored_and_exported_for_review(
    qa: QAService, private_settings: Settings, tmp_path: Path, engine: SearchEngine
) -> None:
    settings = private_settings.model_copy(update={"feedback_db": tmp_path / "feedback.sqlite3"})
    with TestClient(create_api(settings, qa=qa)) as client:
        liked = client.post("/v1/ask", json={"question": "NFT가 뭐야?"}).json()
        disliked = client.post("/v1/ask", json={"question": "마이데이터가 뭐야?"}).json()
        assert liked["answer_id"] and disliked["answer_id"] and liked["answer_id"] != disliked["answer_id"]
        ok = client.post("/v1/feedback", json={"answer_id": liked["answer_id"], "rating": "up"})
        assert ok.status_code == 201 and ok.json()["rating"] == "up"
        down = client.post(
            "/v1/feedback", json={"answer_id": disliked["answer_id"], "rating": "down", "comment": "정의가 아니라 사례를 답했어요"}
        )
        assert down.status_code == 201
        unknown = client.post("/v1/feedback", json={"answer_id": "0" * 32, "rating": "down"})
        assert unknown.status_code == 404 and "답변을 찾을 수 없습니다" in unknown.json()["error"]
        bad = client.post("/v1/feedback", json={"answer_id": liked["answer_id"], "rating": "meh"})
        assert bad.status_code == 422 and "rating" in bad.json()["error"]
        assert value(scrape(client), "bookqa_feedback_total", rating="down") == 1

    out = tmp_path / "review.jsonl"
    result = subprocess.run(
        [BOOKQA, "feedback", "export", "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "BOOKQA_FEEDBACK_DB": str(settings.feedback_db)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 1, "only the thumbs-down answer"
    line = lines[0]
    assert line["question"] == "마이데이터가 뭐야?" and line["answerable"] is None and line["answers"] == []
    assert line["evidence"] == [c["quote"] for c in disliked["citations"]]
    assert all(evidence in engine.document_text("digital-trend-2023.txt") for evidence in line["evidence"])
    review = line["review"]
    assert review["answer"] == disliked["answer"] and review["comments"] == ["정의가 아니라 사례를 답했어요"]
    assert review["answer_mode"] == "extractive" and review["index_version"].startswith(engine.manifest.created_at)
    # Used as a gold file before review, it is refused with a clear message.
    with pytest.raises(GoldFileError, match="검토하지 않은 피드백"):
        load_gold(out)


def _result(answer: str = "답 [1]") -> AskResult:
    return AskResult(answer, False, [], [], {})


def _write_feedback(path: str, answer_id: str, count: int) -> None:
    store = FeedbackStore(Path(path))
    for number in range(count):
        store.add_feedback(answer_id, "down" if number % 2 else "up", f"process {os.getpid()} #{number}", "test")


def test_concurrent_writers_never_lose_a_row(tmp_path: Path) -> None:
    path = tmp_path / "feedback.sqlite3"
    store = FeedbackStore(path)
    answer_id = store.remember("질문", [Turn("user", "앞 질문")], _result(), "v1", "test")
    threads_n, processes_n, each = 8, 3, 25
    errors: list[BaseException] = []

    def write() -> None:
        try:
            _write_feedback(str(path), answer_id, each)
            for _ in range(each):
                store.remember("질문", [], _result(), "v1", "test")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=write) for _ in range(threads_n)]
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_feedback, args=(str(path), answer_id, each)) for _ in range(processes_n)]
    for worker in [*threads, *processes]:
        worker.start()
    for thread in threads:
        thread.join(120)
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    assert not errors, errors
    assert store.count("feedback") == (threads_n + processes_n) * each
    assert store.count("answers") == 1 + threads_n * each


def test_remembered_answers_are_bounded_in_number_and_age(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "feedback.sqlite3", keep_answers=100, answer_days=1.0)
    ids = [store.remember(f"질문 {n}", [], _result(), "v1", "test") for n in range(250)]
    assert store.count("answers") <= 100 + 100  # pruned as it goes, every 100 answers
    store.prune()
    assert store.count("answers") == 100
    with pytest.raises(UnknownAnswerError):
        store.add_feedback(ids[0], "down", None, "test")
    store.add_feedback(ids[-1], "down", None, "test")  # the newest can still be rated
    short = FeedbackStore(tmp_path / "short.sqlite3", answer_days=0.5 / 86_400)
    old = short.remember("질문", [], _result(), "v1", "test")
    time.sleep(0.6)
    short.prune()
    with pytest.raises(UnknownAnswerError):
        short.add_feedback(old, "up", None, "test")
    # Feedback outlives the answer it rates.
    assert store.count("feedback") == 1 and store.rated("down")[0].question == "질문 249"


# --- bookqa serve, as an operator runs it --------------------------------------------------------------


def test_bookqa_serve_answers_openai_clients_with_metrics_and_logs(private_settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "BOOKQA_CORPUS_DIR": str(private_settings.corpus_dir),
        "BOOKQA_INDEX_DIR": str(private_settings.index_dir),
        "BOOKQA_FEEDBACK_DB": str(tmp_path / "feedback.sqlite3"),
        "HF_HUB_OFFLINE": "1",
    }
    log = (tmp_path / "serve.log").open("w+", encoding="utf-8")
    server = subprocess.Popen([BOOKQA, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.5)
        else:
            pytest.fail("bookqa serve did not become ready")
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=120)
        reply = client.chat.completions.create(model="bookqa", messages=[{"role": "user", "content": "NFT가 뭐야?"}])
        assert "[1]" in (reply.choices[0].message.content or "")
        streamed = client.chat.completions.create(
            model="bookqa", messages=[{"role": "user", "content": "NFT가 뭐야?"}], stream=True
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed) == reply.choices[0].message.content
        traced = httpx.post(f"{base}/v1/ask", json={"question": "클라우드가 뭐야?"}, headers={"X-Request-ID": "op-7"}, timeout=60)
        assert traced.headers["X-Request-ID"] == "op-7"
        with httpx.Client(base_url=base, timeout=30) as http:
            samples = scrape(http)
        assert value(samples, "bookqa_answers_total", answer_mode="extractive", channel="openai") == 2
        assert value(samples, "bookqa_answers_total", answer_mode="extractive", channel="api") == 1
        assert value(samples, "bookqa_http_requests_total", method="POST", route="/v1/chat/completions", status="200") == 2
    finally:
        server.terminate()
        server.wait(30)
    output = (tmp_path / "serve.log").read_text(encoding="utf-8")
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    traced_lines = [record for record in records if record.get("request_id") == "op-7"]
    assert len(traced_lines) == 1 and traced_lines[0]["route"] == "/v1/ask" and traced_lines[0]["status"] == 200
    assert any(record.get("route") == "/v1/chat/completions" for record in records)
    assert "NFT가 뭐야" not in output and "클라우드가 뭐야" not in output
