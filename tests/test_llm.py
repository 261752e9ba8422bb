"""Generative answers against a small OpenAI-compatible server that the test runs on loopback."""

from __future__ import annotations

import re
import time

import pytest
from fastapi import FastAPI, Request

from indexer.engine import SearchEngine
from service.llm import LLMAnswerer
from service.qa import QAService
from tests.servers import LoopbackServer
from tests.test_service import assert_exact


def fake_openai() -> tuple[FastAPI, dict]:
    """A chat-completions endpoint whose reply (or delay) the test sets in `behaviour`."""
    app = FastAPI()
    behaviour: dict = {"reply": "", "delay": 0.0, "requests": []}

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> dict:
        body = await request.json()
        behaviour["requests"].append(body)
        if behaviour["delay"]:
            import asyncio

            await asyncio.sleep(behaviour["delay"])
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": behaviour["reply"]}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    return app, behaviour


@pytest.fixture(scope="module")
def llm_server():
    app, behaviour = fake_openai()
    with LoopbackServer(app) as server:
        yield server, behaviour


def service_for(engine: SearchEngine, server: LoopbackServer, timeout: float = 10.0) -> QAService:
    return QAService(engine, LLMAnswerer(f"{server.url}/v1", "test-model", "sk-test", timeout))


def test_generated_answer_keeps_only_markers_of_real_passages(engine: SearchEngine, llm_server) -> None:
    server, behaviour = llm_server
    behaviour.update(reply="마이데이터는 흩어진 개인신용정보를 한눈에 보여주는 사업입니다 [1]. 근거 없는 말 [9].", delay=0.0)
    result = service_for(engine, server).ask("마이데이터가 뭐야?", top_k=5)
    assert result.answer_mode == "generative"
    assert "[9]" not in result.answer and "[1]" in result.answer
    assert [c.id for c in result.citations] == [1]
    citation = result.citations[0]
    assert citation.chunk_id == result.passages[0].chunk_id
    assert engine.document_text(citation.doc)[citation.start : citation.end] == citation.quote
    assert len(citation.quote) < len(result.passages[0].text)  # a sentence, not the chunk
    sent = behaviour["requests"][-1]
    assert sent["model"] == "test-model"
    prompt = sent["messages"][-1]["content"]
    assert "[1]" in prompt and result.passages[0].text in prompt and "마이데이터가 뭐야?" in prompt


def test_timeout_falls_back_to_the_extractive_answer(engine: SearchEngine, llm_server) -> None:
    server, behaviour = llm_server
    behaviour.update(reply="늦은 답 [1]", delay=3.0)
    started = time.monotonic()
    result = service_for(engine, server, timeout=0.5).ask("NFT가 뭐야?")
    assert time.monotonic() - started < 3.0
    assert result.answer_mode == "extractive"
    assert result.notes and "발췌" in result.notes[0]
    assert not result.abstained and result.citations
    assert set(map(int, re.findall(r"\[(\d+)\]", result.answer))) == {c.id for c in result.citations}


def test_model_saying_not_found_abstains(engine: SearchEngine, llm_server) -> None:
    server, behaviour = llm_server
    behaviour.update(reply="책에서 찾을 수 없습니다.", delay=0.0)
    result = service_for(engine, server).ask("클라우드 서비스의 유형은?")
    assert result.abstained and result.citations == []


def test_api_reports_generative_mode(engine: SearchEngine, llm_server) -> None:
    from fastapi.testclient import TestClient

    from service.api import create_api

    server, behaviour = llm_server
    behaviour.update(reply="IaaS는 CPU, 메모리 같은 하드웨어 자원을 제공합니다 [2][1].", delay=0.0)
    with TestClient(create_api(qa=service_for(engine, server))) as client:
        body = client.post("/v1/ask", json={"question": "IaaS는 무엇을 제공해?"}).json()
    assert body["answer_mode"] == "generative"
    assert {c["id"] for c in body["citations"]} == {1, 2}
    assert_exact(engine, body)


def test_the_abstention_decision_gates_the_model(engine: SearchEngine, llm_server) -> None:
    """A question the book does not answer is declined before any LLM call, as for extractive answers."""
    server, behaviour = llm_server
    behaviour.update(reply="맨디언트 본사는 서울에 있습니다 [1].", delay=0.0)
    before = len(behaviour["requests"])
    result = service_for(engine, server).ask("맨디언트 본사는 어디에 있어?")
    assert result.abstained and result.answer_mode == "extractive"
    assert "나오지 않습니다" in result.answer
    assert len(behaviour["requests"]) == before
