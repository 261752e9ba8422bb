"""The HTTP service: `/v1/ask`, `/v1/ask/stream`, `/v1/search`, `/healthz`, `/readyz`.

Model and index load once, in the background at startup, so `/healthz` answers at once and
`/readyz` turns 200 when questions can be served. Inference runs in a thread pool, off the
event loop. A user's mistake is always a 4xx with a Korean message, never a 500.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.engine import MAX_QUERY_CHARS, MAX_TOP_K, QueryError
from indexer.settings import Settings
from indexer.retrieval import Passage
from service.answer import Citation, stream_pieces
from service.qa import AskResult, QAService, Turn

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 256 * 1024
MAX_HISTORY_CHARS = 4000


class HistoryMessage(BaseModel):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_HISTORY_CHARS)


class AskRequest(BaseModel):
    question: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, examples=["마이데이터가 뭐야?"])
    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    history: list[HistoryMessage] = Field(default_factory=list, max_length=50)

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("질문이 비어 있습니다")
        return value


class AskResponse(BaseModel):
    answer: str
    abstained: bool
    citations: list[Citation]
    passages: list[Passage]
    timings_ms: dict[str, float]
    answer_mode: Literal["extractive", "generative"] = "extractive"
    notes: list[str] = Field(default_factory=list, description="e.g. why a generative answer fell back")
    answer_type: str | None = Field(
        None,
        description="what the question asks for: date, percent, money, quantity, number, ordinal, place, person, "
        "organization, name, definition, reason, manner or other",
    )


class SearchResponse(BaseModel):
    passages: list[Passage]


def ask_response(result: AskResult) -> AskResponse:
    return AskResponse(
        answer=result.answer,
        abstained=result.abstained,
        citations=result.citations,
        passages=result.passages,
        timings_ms=result.timings_ms,
        answer_mode=result.answer_mode,
        notes=result.notes,
        answer_type=result.answer_type,
    )


class BodyLimitMiddleware:
    """Refuse request bodies over `limit` bytes with 413 before reading them into memory."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _too_large(self.limit)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"error": f"요청 본문이 너무 큽니다 (최대 {limit // 1024} KB)."}, status_code=413)


_MESSAGES = {
    "string_too_short": "비어 있을 수 없습니다",
    "too_short": "비어 있을 수 없습니다",
    "string_type": "문자열이어야 합니다",
    "int_parsing": "정수여야 합니다",
    "int_type": "정수여야 합니다",
    "list_type": "목록이어야 합니다",
    "model_attributes_type": "JSON 객체여야 합니다",
    "dict_type": "JSON 객체여야 합니다",
}


_BOUNDS = {
    "greater_than_equal": "이상이어야 합니다",
    "less_than_equal": "이하여야 합니다",
    "greater_than": "보다 커야 합니다",
    "less_than": "보다 작아야 합니다",
}


def _describe(errors: list[dict]) -> str:
    """One Korean sentence per validation error, naming the field."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query")) or "요청 본문"
        kind = error.get("type", "")
        context = error.get("ctx") or {}
        if kind == "json_invalid":
            parts.append("JSON 형식이 올바르지 않습니다")
        elif kind == "missing":
            parts.append(f"{where} 항목이 필요합니다")
        elif kind in ("string_too_long", "too_long"):
            limit = context.get("max_length", "")
            parts.append(f"{where}: 너무 깁니다 (최대 {limit})")
        elif kind in _BOUNDS:
            parts.append(f"{where}: {next(iter(context.values()), '')} {_BOUNDS[kind]}")
        elif kind == "literal_error":
            parts.append(f"{where}: 허용되지 않는 값입니다 (가능: {context.get('expected', '')})")
        elif kind == "value_error":
            parts.append(f"{where}: {re.sub(r'^Value error, ', '', error.get('msg', ''))}")
        else:
            parts.append(f"{where}: {_MESSAGES.get(kind, error.get('msg', '올바르지 않은 값입니다'))}")
    return "; ".join(parts) or "요청이 올바르지 않습니다"


def loaded_service(app: FastAPI) -> QAService | None:
    """The app's service once loaded, None while loading (for the chat mounted beside the API)."""
    return app.state.bookqa["qa"]


def create_api(
    settings: Settings | None = None,
    qa: QAService | None = None,
    loader: Callable[[], QAService] | None = None,
) -> FastAPI:
    """The FastAPI app of the question API; pass `qa` to serve an already-loaded service (tests, embedding).

    The chat is mounted beside it by `ui.server.create_app`, the app `bookqa serve` runs.
    """
    settings = settings or Settings()
    state: dict[str, object] = {"qa": qa, "error": None}
    load = loader or (lambda: QAService.load(settings))

    def load_in_background() -> None:
        try:
            state["qa"] = load()
        except Exception as error:  # shown by /readyz; the process stays up to say why
            log.exception("loading failed")
            state["error"] = str(error)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if state["qa"] is None:
            threading.Thread(target=load_in_background, name="bookqa-loader", daemon=True).start()
        yield

    app = FastAPI(
        title="bookqa",
        description="『디지털 트렌드 2023』 질의응답 API: 답변과 원문 인용(정확한 문자 위치)",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware)
    app.state.bookqa = state

    def service() -> QAService:
        current = state["qa"]
        if current is None:
            raise _NotReady(str(state["error"] or "모델과 색인을 불러오는 중입니다."))
        return current  # type: ignore[return-value]

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _describe(list(error.errors())), "detail": json.loads(json.dumps(error.errors(), default=str))}, status_code=422)

    @app.exception_handler(QueryError)
    async def _bad_query(_: Request, error: QueryError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=422)

    @app.exception_handler(_NotReady)
    async def _not_ready(_: Request, error: _NotReady) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=503)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """200 once the model and index are loaded, 503 before (or if loading failed)."""
        if state["qa"] is not None:
            return JSONResponse({"status": "ready"})
        status = "failed" if state["error"] else "loading"
        return JSONResponse({"status": status, "error": state["error"]}, status_code=503)

    @app.post("/v1/ask", response_model=AskResponse, tags=["qa"])
    async def ask(request: AskRequest) -> AskResponse:
        """Answer a question from the book, with `[n]` markers and exact citations."""
        qa_service = service()
        history = [Turn(m.role, m.content) for m in request.history]
        result = await run_in_threadpool(qa_service.ask, request.question, request.top_k, request.mode, history)
        return ask_response(result)

    @app.post("/v1/ask/stream", tags=["qa"])
    async def ask_stream(request: AskRequest) -> StreamingResponse:
        """The same answer as server-sent events: `delta` events with text, then `done` with everything."""
        qa_service = service()
        history = [Turn(m.role, m.content) for m in request.history]
        result = await run_in_threadpool(qa_service.ask, request.question, request.top_k, request.mode, history)
        response = ask_response(result)

        async def events() -> AsyncIterator[str]:
            for piece in stream_pieces(response.answer):
                yield _sse("delta", {"text": piece})
            yield _sse("done", response.model_dump())

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/search", response_model=SearchResponse, tags=["qa"])
    async def search(
        q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="질문")],
        top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = 5,
        mode: Annotated[Literal["hybrid", "dense", "bm25"], Query()] = "hybrid",
    ) -> SearchResponse:
        """Ranked passages for a query, best first; `document[start:end] == text`."""
        qa_service = service()
        passages = await run_in_threadpool(qa_service.engine.search, q, top_k, mode)
        return SearchResponse(passages=passages)

    return app


class _NotReady(Exception):
    pass


def _sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
