"""An OpenAI-compatible face of bookqa: `POST /v1/chat/completions` and `GET /v1/models`.

Any OpenAI client or chat front-end (Open WebUI, LibreChat, the `openai` SDK) can use bookqa as
the model `bookqa`: the last user message is the question, earlier messages the history, and the
reply is the same `QAService.ask` answer as `/v1/ask`, with `[n]` markers and the citations as
footnotes in the text and as structured data in the extra fields `citations` and `bookqa`.
`stream: true` sends `chat.completion.chunk` events ending in `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StringConstraints, field_validator
from starlette.concurrency import run_in_threadpool

from indexer.engine import MAX_QUERY_CHARS, MAX_TOP_K, QueryError
from indexer.formats import page_label
from service.answer import Citation, stream_pieces
from service.feedback import Answered, AnswerTracker
from service.guard import NOT_BLANK, ErrorResponse, strict_int
from service.observability import add_log_fields
from service.qa import AskResult, QAService, Turn

MODEL_ID = "bookqa"
# Footnotes start after this line; it is cut from assistant messages sent back as history.
FOOTNOTE_RULE = "\n\n---\n"
MAX_MESSAGES = 100
MAX_MESSAGE_CHARS = 8000
_TEXT = {"type": "string", "pattern": NOT_BLANK, "maxLength": MAX_QUERY_CHARS}
USER_QUESTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"const": "user"},
        "content": {
            "anyOf": [
                _TEXT,
                {
                    "type": "array",
                    "contains": {"type": "object", "required": ["type", "text"], "properties": {"type": {"const": "text"}, "text": _TEXT}},
                },
            ]
        },
    },
}


class ContentPart(BaseModel):
    """One part of a message's content; only text parts carry a question."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_CHARS)] | list[ContentPart] | None = None

    def text(self) -> str:
        """The message's text (text parts joined; images and other parts ignored)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text or "" for part in self.content if part.type == "text")


class ChatCompletionRequest(BaseModel):
    """The OpenAI request; sampling options (temperature, max_tokens…) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(MODEL_ID, examples=[MODEL_ID], json_schema_extra={"enum": [MODEL_ID]})
    messages: list[ChatMessage] = Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        # The schema says what the server needs: a user message with text (the last such is the question).
        json_schema_extra={"contains": USER_QUESTION_SCHEMA},
    )
    stream: StrictBool = False
    # bookqa's own options, sent as extra body fields (`extra_body={"top_k": 8}` in the openai client).
    top_k: Annotated[int, BeforeValidator(strict_int)] = Field(5, ge=1, le=MAX_TOP_K)
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value != MODEL_ID:
            raise ValueError(f"알 수 없는 모델입니다: '{value}' (가능: {MODEL_ID})")
        return value


def question_and_history(messages: list[ChatMessage]) -> tuple[str, list[Turn]]:
    """The last user message as the question, the user/assistant messages before it as history.

    System messages are the front-end's instructions to a general model; bookqa answers from the
    book alone, so they are left out. Footnotes of earlier bookqa replies are cut from the history.
    """
    users = [i for i, message in enumerate(messages) if message.role == "user"]
    if not users:
        raise QueryError("messages에 사용자(user) 질문이 없습니다.")
    asked = [i for i in users if messages[i].text().strip()]
    if not asked:
        raise QueryError("질문이 비어 있습니다: 사용자(user) 메시지에 내용이 없습니다.")
    last_user = asked[-1]
    question = messages[last_user].text().strip()
    history = []
    for message in messages[:last_user]:
        if message.role not in ("user", "assistant"):
            continue
        text = message.text().split(FOOTNOTE_RULE, 1)[0].strip()[:MAX_MESSAGE_CHARS]
        if text:
            history.append(Turn(message.role, text))
    return question, history


def footnotes(citations: list[Citation]) -> str:
    """The citations as readable footnotes: `[1] book.pdf, p. 37 · section: "quote"`."""
    lines = []
    for citation in citations:
        where = ", ".join(filter(None, [citation.doc, page_label(citation.doc, citation.page)]))
        section = f" · {citation.section}" if citation.section else ""
        lines.append(f"[{citation.id}] {where}{section}: “{citation.quote}”")
    return FOOTNOTE_RULE + "\n".join(lines) if lines else ""


def extra_fields(result: AskResult, answer_id: str | None) -> dict[str, Any]:
    """What bookqa adds to an OpenAI reply: structured citations and the answer's facts."""
    return {
        "citations": [asdict(citation) for citation in result.citations],
        "bookqa": {
            "answer_id": answer_id,
            "abstained": result.abstained,
            "answer_mode": result.answer_mode,
            "notes": result.notes,
        },
    }


def _log_answer(request: Request, result: AskResult, answer_id: str | None) -> None:
    add_log_fields(request.scope["state"], answer_id=answer_id, answer_mode=result.answer_mode, abstained=result.abstained)


_COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A `chat.completion` object, or with `stream: true` server-sent `chat.completion.chunk` events ending in `data: [DONE]`",
        "content": {
            "application/json": {"schema": {"type": "object", "required": ["id", "object", "choices"]}},
            # Before OpenAPI 3.2, the schema of an event stream describes each event: `data:` only.
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"data": {"type": "string"}},
                }
            },
        },
    }
}


def openai_router(
    get_service: Callable[[], QAService],
    tracker: AnswerTracker,
    created: Callable[[], int],
    log_question: Callable[..., None],
) -> APIRouter:
    """The routes; `get_service` raises the app's not-ready error while loading, `created` is the index's
    build time, `log_question(request, question, **fields)` adds to the request's log line what the settings allow."""
    router = APIRouter(tags=["openai"])

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        """bookqa as the one model of an OpenAI-compatible server."""
        return {"object": "list", "data": [_model_card(created())]}

    @router.get("/v1/models/{model_id}", responses={404: {"model": ErrorResponse, "description": "그런 모델이 없습니다"}})
    async def model(model_id: str) -> JSONResponse:
        if model_id != MODEL_ID:
            return JSONResponse({"error": f"모델이 없습니다: {model_id} (가능: {MODEL_ID})"}, status_code=404)
        return JSONResponse(_model_card(created()))

    @router.post("/v1/chat/completions", response_model=None, responses=_COMPLETION_RESPONSES)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        """Answer the last user message from the book, in the OpenAI chat-completions format."""
        qa = get_service()
        question, history = question_and_history(body.messages)
        log_question(request, question, channel="openai", top_k=body.top_k, mode=body.mode)
        now = int(time.time())
        if not body.stream:
            result, answer_id = await run_in_threadpool(tracker.ask, qa, question, body.top_k, body.mode, history, "openai")
            _log_answer(request, result, answer_id)
            return JSONResponse(
                {
                    "id": f"chatcmpl-{answer_id or uuid.uuid4().hex}",
                    "object": "chat.completion",
                    "created": now,
                    "model": MODEL_ID,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": result.answer + footnotes(result.citations)},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    **extra_fields(result, answer_id),
                }
            )

        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        items = tracker.ask_stream(qa, question, body.top_k, body.mode, history, "openai")
        # The first piece comes after validation and retrieval, so a bad request is still a 422.
        first = await run_in_threadpool(next, items)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
            event = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": now,
                "model": MODEL_ID,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
                **extra,
            }
            return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            item: str | Answered = first
            while not isinstance(item, Answered):
                for piece in stream_pieces(item):
                    yield chunk({"content": piece})
                item = await run_in_threadpool(next, items)
            result, answer_id = item.result, item.answer_id
            _log_answer(request, result, answer_id)
            notes = footnotes(result.citations)
            if notes:
                yield chunk({"content": notes})
            yield chunk({}, "stop", **extra_fields(result, answer_id))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return router


def _model_card(created: int) -> dict[str, Any]:
    return {"id": MODEL_ID, "object": "model", "created": created, "owned_by": "bookqa"}
