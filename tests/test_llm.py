"""Generative answers against a small OpenAI-compatible server that the test runs on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from indexer.engine import SearchEngine
from service.llm import LLMAnswerer
from service.qa import QAService
from tests.servers import LoopbackServer
from tests.test_service import assert_exact


def fake_openai() -> tuple[FastAPI, dict]:
    """A chat-completions endpoint whose reply (or delay) the test sets in `behaviour`.

    Asked to stream, it sends the reply word by word, `piece_delay` seconds apart, as OpenAI does.
    """
    app = FastAPI()
    behaviour: dict = {"reply": "", "delay": 0.0, "piece_delay": 0.0, "requests": []}

    @app.post("/v1/chat/completions", response_model=None)
    async def completions(request: Request) -> dict | StreamingResponse:
        body = await request.json()
        behaviour["requests"].append(body)
        if behaviour["delay"]:
            await asyncio.sleep(behaviour["delay"])
        if body.get("stream"):
            return StreamingResponse(_chunks(body["model"], behaviour), media_type="text/event-stream")
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


async def _chunks(model: str, behaviour: dict) -> AsyncIterator[str]:
    base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    for piece in re.findall(r"\S+\s*", behaviour["reply"]):
        chunk = {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        await asyncio.sleep(behaviour["piece_delay"])
    yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
    yield "data: [DONE]\n\n"


@pytest.fixture(scope="module")
def llm_server():
    app, behaviour = fake_openai()
    with LoopbackServer(app) as server:
        yield server, behaviour


def service_for(engine: SearchEngine, server: LoopbackServer, timeout: float = 10.0) -> QAService:
    return QAService(engine, LLMAnswerer(f"{server.url}/v1", "test-model", "sk-test", timeout))


def test_generated_answer_keeps_only_markers_of_real_passages(engine: SearchEngine, llm_server) -> None:
    server, behaviour = llm_server
    behaviour.update(piece_delay=0.0, reply="마이데이터는 흩어진 개인신용정보를 한눈에 보여주는 사업입니다 [1]. 근거 없는 말 [9].", delay=0.0)
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
    behaviour.update(piece_delay=0.0, reply="늦은 답 [1]", delay=3.0)
    started = time.monotonic()
    result = service_for(engine, server, timeout=0.5).ask("NFT가 뭐야?")
    assert time.monotonic() - started < 3.0
    assert result.answer_mode == "extractive"
    assert result.notes and "발췌" in result.notes[0]
    assert not result.abstained and result.citations
    assert set(map(int, re.findall(r"\[(\d+)\]", result.answer))) == {c.id for c in result.citations}


def test_model_saying_not_found_abstains(engine: SearchEngine, llm_server) -> None:
    server, behaviour = llm_server
    behaviour.update(piece_delay=0.0, reply="책에서 찾을 수 없습니다.", delay=0.0)
    result = service_for(engine, server).ask("클라우드 서비스의 유형은?")
    assert result.abstained and result.citations == []


def test_api_reports_generative_mode(engine: SearchEngine, llm_server) -> None:
    from fastapi.testclient import TestClient

    from service.api import create_api

    server, behaviour = llm_server
    behaviour.update(piece_delay=0.0, reply="IaaS는 CPU, 메모리 같은 하드웨어 자원을 제공합니다 [2][1].", delay=0.0)
    with TestClient(create_api(qa=service_for(engine, server))) as client:
        body = client.post("/v1/ask", json={"question": "IaaS는 무엇을 제공해?"}).json()
    assert body["answer_mode"] == "generative"
    assert {c["id"] for c in body["citations"]} == {1, 2}
    assert_exact(engine, body)


def test_generated_answer_streams_as_the_model_writes_it(engine: SearchEngine, llm_server) -> None:
    """Pieces reach the caller while the model is still writing, then the checked result."""
    server, behaviour = llm_server
    reply = "마이페이먼트는 고객의 결제 지시만으로 결제와 송금을 해 주는 서비스입니다 [1]."
    behaviour.update(piece_delay=0.15, reply=reply, delay=0.0)
    started = time.monotonic()
    arrivals, result = [], None
    for item in service_for(engine, server).ask_stream("마이페이먼트가 뭐야?"):
        if isinstance(item, str):
            arrivals.append((time.monotonic() - started, item))
        else:
            result = item
    total = time.monotonic() - started
    assert result is not None and result.answer_mode == "generative"
    assert len(arrivals) >= 5
    assert arrivals[0][0] < total - 0.5  # the first words came long before the last
    assert "".join(piece for _, piece in arrivals).strip() == result.answer


def test_api_stream_sends_generated_pieces_then_the_whole_answer(engine: SearchEngine, llm_server) -> None:
    from fastapi.testclient import TestClient

    from service.api import create_api

    server, behaviour = llm_server
    behaviour.update(piece_delay=0.02, reply="IaaS는 서버와 저장소 같은 인프라를 빌려 줍니다 [1].", delay=0.0)
    with TestClient(create_api(qa=service_for(engine, server))) as client:
        with client.stream("POST", "/v1/ask/stream", json={"question": "IaaS는 무엇을 제공해?"}) as response:
            raw = "".join(response.iter_text())
    events = [block.split("\n", 1) for block in raw.strip().split("\n\n")]
    names = [head.removeprefix("event: ") for head, _ in events]
    assert names[-1] == "done" and names.count("delta") >= 5
    done = json.loads(events[-1][1].removeprefix("data: "))
    assert done["answer_mode"] == "generative"
    assert_exact(engine, done)


def test_chat_shows_generated_words_as_they_arrive(engine: SearchEngine, llm_server) -> None:
    from ui.app import make_respond

    server, behaviour = llm_server
    behaviour.update(piece_delay=0.01, reply="NFT는 블록체인 기술로 디지털 자산에 고유한 값을 부여한 인증서입니다 [1].", delay=0.0)
    respond = make_respond(lambda: service_for(engine, server))
    shown = [out[1][-1]["content"] for out in respond("NFT가 뭐야?", [], None, 5, "hybrid") if out[1]]
    assert len(shown) >= 5
    assert all(len(a) <= len(b) for a, b in zip(shown[:-1], shown[1:-1]))
    assert "(#bq-cite-1-1)" in shown[-1]  # the last update links the checked citation
