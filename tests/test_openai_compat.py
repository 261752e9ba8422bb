"""The OpenAI-compatible endpoint through the official `openai` client against a live loopback server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from indexer.engine import SearchEngine
from indexer.settings import Settings
from service.api import create_api
from service.qa import QAService
from tests.servers import LoopbackServer


@pytest.fixture(scope="module")
def qa(engine: SearchEngine) -> QAService:
    return QAService(engine)


@pytest.fixture(scope="module")
def client(qa: QAService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    settings = Settings(feedback_db=tmp_path_factory.mktemp("feedback") / "feedback.sqlite3")
    with LoopbackServer(create_api(settings, qa=qa)) as server:
        yield openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=120)


def assert_citations_exact(engine: SearchEngine, citations: list[dict]) -> None:
    for citation in citations:
        assert engine.document_text(citation["doc"])[citation["start"] : citation["end"]] == citation["quote"]


def test_models_list_bookqa(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["bookqa"]
    assert client.models.retrieve("bookqa").owned_by == "bookqa"


def test_completion_carries_markers_footnotes_and_structured_citations(
    client: openai.OpenAI, qa: QAService, engine: SearchEngine
) -> None:
    response = client.chat.completions.create(
        model="bookqa",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "마이데이터가 뭐야?"},
        ],
        temperature=0.2,  # accepted and ignored, as front-ends send it
    )
    assert response.object == "chat.completion" and response.model == "bookqa"
    choice = response.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    content = choice.message.content or ""
    expected = qa.ask("마이데이터가 뭐야?")
    answer, _, notes = content.partition("\n\n---\n")
    assert answer == expected.answer and "[1]" in answer
    citations = response.model_extra["citations"]
    assert [c["id"] for c in citations] == [c.id for c in expected.citations]
    assert_citations_exact(engine, citations)
    # Each citation is a readable footnote: marker, document, section and the quoted sentence.
    for citation in citations:
        assert f"[{citation['id']}] {citation['doc']} · {citation['section']}: “{citation['quote']}”" in notes
    extra = response.model_extra["bookqa"]
    assert extra["abstained"] is False and re.fullmatch(r"[0-9a-f]{32}", extra["answer_id"])
    assert response.id == f"chatcmpl-{extra['answer_id']}"


def test_streamed_completion_is_the_same_answer(client: openai.OpenAI, engine: SearchEngine) -> None:
    messages = [{"role": "user", "content": "스마트 팩토리로 기대되는 효과는?"}]
    whole = client.chat.completions.create(model="bookqa", messages=messages).choices[0].message.content
    chunks = list(client.chat.completions.create(model="bookqa", messages=messages, stream=True))
    assert len(chunks) >= 4
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert streamed == whole
    assert [chunk.choices[0].finish_reason for chunk in chunks][-1] == "stop"
    assert all(chunk.choices[0].finish_reason is None for chunk in chunks[:-1])
    assert_citations_exact(engine, chunks[-1].model_extra["citations"])
    assert chunks[-1].model_extra["citations"]


def test_conversation_becomes_history(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="bookqa", messages=[{"role": "user", "content": "마이페이먼트가 뭐야?"}])
    follow_up = client.chat.completions.create(
        model="bookqa",
        messages=[
            {"role": "user", "content": "마이페이먼트가 뭐야?"},
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": [{"type": "text", "text": "그럼 그건 언제부터 시행돼?"}]},
        ],
        extra_body={"top_k": 3},
    )
    content = follow_up.choices[0].message.content or ""
    assert "2023" in content.split("\n\n---\n")[0]


def test_out_of_scope_question_abstains_without_footnotes(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="bookqa", messages=[{"role": "user", "content": "김치찌개 끓이는 법 알려줘"}])
    assert response.model_extra["bookqa"]["abstained"] is True
    assert response.model_extra["citations"] == []
    assert "---" not in (response.choices[0].message.content or "")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "NFT"}]}, "모델"),
        ({"model": "bookqa", "messages": [{"role": "system", "content": "hi"}]}, "user"),
        ({"model": "bookqa", "messages": [{"role": "user", "content": "   "}]}, "비어"),
        ({"model": "bookqa", "messages": []}, "messages"),
        ({"model": "bookqa", "messages": [{"role": "user", "content": "가" * 2001}]}, "너무 깁니다"),
    ],
)
def test_bad_requests_are_clear_4xx(client: openai.OpenAI, kwargs: dict, needle: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as error:
        client.chat.completions.create(**kwargs)
    assert needle in str(error.value.body)
