"""The question API through real HTTP: answers, exact citations, abstention, bad input, streaming."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from indexer.engine import SearchEngine
from service.api import create_api
from service.qa import QAService
from tests.servers import LoopbackServer

GOLD = Path(__file__).resolve().parents[1] / "eval" / "gold" / "qa.jsonl"


@pytest.fixture(scope="module")
def qa(engine: SearchEngine) -> QAService:
    return QAService(engine)


@pytest.fixture(scope="module")
def client(qa: QAService) -> Iterator[httpx.Client]:
    from fastapi.testclient import TestClient

    with TestClient(create_api(qa=qa)) as test_client:
        yield test_client


def assert_exact(engine: SearchEngine, body: dict) -> None:
    """Every citation and passage quotes the book exactly, and markers match citations."""
    for citation in body["citations"]:
        assert engine.document_text(citation["doc"])[citation["start"] : citation["end"]] == citation["quote"]
    for passage in body["passages"]:
        assert engine.document_text(passage["doc"])[passage["start"] : passage["end"]] == passage["text"]
    markers = {int(m) for m in re.findall(r"\[(\d+)\]", body["answer"])}
    assert markers == {c["id"] for c in body["citations"]}
    for citation in body["citations"]:
        # The answer span, when marked, lies inside its sentence.
        if citation["answer_start"] is not None:
            assert citation["start"] <= citation["answer_start"] < citation["answer_end"] <= citation["end"]


def test_ask_answers_with_exact_sentence_citations(client, engine: SearchEngine) -> None:
    response = client.post("/v1/ask", json={"question": "마이데이터가 뭐야?"})
    assert response.status_code == 200
    body = response.json()
    assert not body["abstained"]
    assert "[1]" in body["answer"] and body["citations"]
    assert "개인신용정보" in body["answer"]
    assert set(body["timings_ms"]) == {"retrieve", "answer", "total"}
    assert len(body["passages"]) == 5
    assert_exact(engine, body)
    # A citation is a sentence, not a whole chunk.
    for citation in body["citations"]:
        passage = next(p for p in body["passages"] if p["chunk_id"] == citation["chunk_id"])
        assert len(citation["quote"]) < len(passage["text"])


def test_every_gold_answer_cites_exactly(client, engine: SearchEngine) -> None:
    gold = [json.loads(line) for line in GOLD.read_text(encoding="utf-8").splitlines()]
    # The test part (half the set, every kind and language): enough to catch an inexact citation.
    for item in [item for item in gold if item["split"] == "test"]:
        response = client.post("/v1/ask", json={"question": item["question"]})
        assert response.status_code == 200, item["id"]
        assert_exact(engine, response.json())


@pytest.mark.parametrize("question", ["김치찌개 끓이는 법 알려줘", "2022년 월드컵 우승국은 어디야?", "오늘 서울 날씨 어때?"])
def test_out_of_scope_questions_abstain(client, question: str) -> None:
    body = client.post("/v1/ask", json={"question": question}).json()
    assert body["abstained"] is True
    assert body["citations"] == []
    assert "책" in body["answer"] and "[" not in body["answer"]


def test_follow_up_uses_the_conversation(client, engine: SearchEngine) -> None:
    history = [
        {"role": "user", "content": "마이페이먼트가 뭐야?"},
        {"role": "assistant", "content": "마이페이먼트는 지급 지시만 전달해 결제 및 송금서비스를 제공하는 서비스입니다."},
    ]
    body = client.post("/v1/ask", json={"question": "그럼 그건 언제부터 시행돼?", "history": history}).json()
    assert not body["abstained"]
    assert "2023" in body["answer"]
    assert any("마이페이먼트" in p["text"] for p in body["passages"][:2])
    assert_exact(engine, body)


def test_search_endpoint_matches_the_engine(client, engine: SearchEngine) -> None:
    response = client.get("/v1/search", params={"q": "스마트 팩토리", "top_k": 3, "mode": "bm25"})
    assert response.status_code == 200
    passages = response.json()["passages"]
    expected = engine.search("스마트 팩토리", top_k=3, mode="bm25")
    assert [p["chunk_id"] for p in passages] == [p.chunk_id for p in expected]


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"question": ""}, "question"),
        ({"question": "   "}, "비어"),
        ({"question": "가" * 2001}, "question"),
        ({"question": "마이데이터", "top_k": 0}, "top_k"),
        ({"question": "마이데이터", "top_k": 51}, "top_k"),
        ({"question": "마이데이터", "top_k": "many"}, "top_k"),
        ({"question": "마이데이터", "mode": "magic"}, "mode"),
        ({"question": 42}, "question"),
        ({"top_k": 3}, "question"),
        ({"question": "마이데이터", "history": [{"role": "system", "content": "x"}]}, "role"),
        ([1, 2, 3], ""),
    ],
)
def test_bad_requests_get_a_clear_4xx(client, payload, needle: str) -> None:
    response = client.post("/v1/ask", json=payload)
    assert response.status_code == 422
    assert needle in response.json()["error"]


def test_malformed_json_and_huge_bodies_are_refused(client) -> None:
    response = client.post("/v1/ask", content=b'{"question": "x"', headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "JSON" in response.json()["error"]
    huge = json.dumps({"question": "가" * (10 * 1024 * 1024)}).encode()
    response = client.post("/v1/ask", content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert client.get("/v1/search", params={"q": ""}).status_code == 422
    assert client.get("/v1/search", params={"q": "x", "top_k": 100}).status_code == 422
    # The service is unharmed.
    assert client.post("/v1/ask", json={"question": "NFT가 뭐야?"}).status_code == 200


def test_stream_sends_the_same_answer(client) -> None:
    payload = {"question": "스마트 팩토리로 기대되는 효과는?"}
    expected = client.post("/v1/ask", json=payload).json()
    with client.stream("POST", "/v1/ask/stream", json=payload) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = "".join(response.iter_text())
    events = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    assert events[-1][0] == "done"
    deltas = "".join(data["text"] for name, data in events if name == "delta")
    assert deltas == expected["answer"] == events[-1][1]["answer"]
    assert events[-1][1]["citations"] == expected["citations"]


def test_concurrent_requests_all_succeed(qa: QAService) -> None:
    questions = ["NFT가 뭐야?", "클라우드 서비스 유형", "마이페이먼트 시행 시기", "스마트 팩토리 목표", "저자는 누구?", "CPS란?"]

    async def run_all() -> list[int]:
        transport = httpx.ASGITransport(app=create_api(qa=qa))
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as async_client:
            responses = await asyncio.gather(
                *(async_client.post("/v1/ask", json={"question": q}) for q in questions * 2)
            )
        return [r.status_code for r in responses]

    assert asyncio.run(run_all()) == [200] * 12


def test_readyz_waits_for_the_model_and_index(qa: QAService) -> None:
    from fastapi.testclient import TestClient

    release = threading.Event()

    def slow_loader() -> QAService:
        release.wait(30)
        return qa

    with TestClient(create_api(loader=slow_loader)) as test_client:
        assert test_client.get("/healthz").status_code == 200
        assert test_client.get("/readyz").status_code == 503
        assert test_client.post("/v1/ask", json={"question": "NFT"}).status_code == 503
        release.set()
        deadline = time.monotonic() + 30
        while test_client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert test_client.get("/readyz").status_code == 200
        assert test_client.get("/docs").status_code == 200


def test_real_uvicorn_server_on_loopback(qa: QAService, engine: SearchEngine) -> None:
    with LoopbackServer(create_api(qa=qa)) as server:
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
        response = httpx.post(f"{server.url}/v1/ask", json={"question": "IaaS는 무엇을 제공해?"}, timeout=60)
        assert response.status_code == 200
        assert_exact(engine, response.json())
        bad = httpx.post(f"{server.url}/v1/ask", content=b"not json", headers={"Content-Type": "application/json"})
        assert bad.status_code == 422
