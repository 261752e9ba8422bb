"""The HTTP service: `/v1/ask`, `/v1/ask/stream`, `/v1/search`, `/healthz`, `/readyz`.

Model and index load once, in the background at startup, so `/healthz` answers at once and
`/readyz` turns 200 when questions can be served. Inference runs in a thread pool, off the
event loop. A user's mistake is always a 4xx with a Korean message, never a 500.
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, BeforeValidator, Field
from starlette.concurrency import run_in_threadpool

from indexer.corpus import CorpusError
from indexer.embedding import EmbedderError
from indexer.engine import MAX_QUERY_CHARS, MAX_TOP_K, QueryError
from indexer.manifest import IndexLoadError
from indexer.settings import Settings
from indexer.retrieval import Passage
from service.answer import Citation, stream_pieces
from service.guard import error_response, install_guards
from service.qa import MAX_HISTORY_MESSAGE_CHARS, MAX_HISTORY_MESSAGES, AskResult, QAService, Turn

log = logging.getLogger(__name__)


def _strict_int(value: Any) -> Any:
    """JSON integers only: `"5"` and `true` are refused (pydantic's lax mode would take them); 5.0 is 5."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("정수여야 합니다")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("정수여야 합니다")
        return int(value)
    return value


# A question holds a character that Python's str.strip() keeps (what the engine checks). Spelled
# out: JSON Schema, pydantic's regex engine and Python disagree on what `\s` matches.
NOT_BLANK = "[^" + "".join(f"\\u{code:04x}" for code in range(0x3001) if chr(code).isspace()) + "]"


class HistoryMessage(BaseModel):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_HISTORY_MESSAGE_CHARS)


class AskRequest(BaseModel):
    # The limit is the question's alone; earlier turns have their own (see `history`).
    question: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=NOT_BLANK, examples=["마이데이터가 뭐야?"])
    top_k: Annotated[int, BeforeValidator(_strict_int)] = Field(5, ge=1, le=MAX_TOP_K)
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    history: list[HistoryMessage] = Field(
        default_factory=list,
        max_length=MAX_HISTORY_MESSAGES,
        description=f"earlier turns, oldest first: at most {MAX_HISTORY_MESSAGES}, "
        f"{MAX_HISTORY_MESSAGE_CHARS} characters each",
    )


class AskResponse(BaseModel):
    answer: str
    abstained: bool
    citations: list[Citation]
    passages: list[Passage]
    timings_ms: dict[str, float]
    answer_mode: Literal["extractive", "generative"] = "extractive"
    notes: list[str] = Field(default_factory=list, description="e.g. why a generative answer fell back")


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
    )


class EventStreamResponse(StreamingResponse):
    """Server-sent events (`text/event-stream`)."""

    media_type = "text/event-stream"


_STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`event: delta` lines with `{\"text\"}` pieces of the answer, then `event: done` with the AskResponse",
        # Before OpenAPI 3.2, the schema of an event stream describes each event.
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {
                        "event": {"type": "string", "enum": ["delta", "done"]},
                        "data": {"type": "string", "contentMediaType": "application/json"},
                    },
                }
            }
        },
    }
}


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
        except (IndexLoadError, EmbedderError, CorpusError) as error:  # shown by /readyz; the process stays up to say why
            log.error("loading failed: %s", error)
            state["error"] = str(error)
        except Exception as error:
            log.exception("loading failed")
            state["error"] = f"모델과 색인을 불러오지 못했습니다: {error}"

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
    install_guards(app)
    app.state.bookqa = state

    def service() -> QAService:
        current = state["qa"]
        if current is None:
            raise _NotReady(str(state["error"] or "모델과 색인을 불러오는 중입니다."))
        return current  # type: ignore[return-value]

    @app.exception_handler(QueryError)
    async def _bad_query(_: Request, error: QueryError) -> JSONResponse:
        return error_response(422, str(error))

    @app.exception_handler(_NotReady)
    async def _not_ready(_: Request, error: _NotReady) -> JSONResponse:
        return error_response(503, str(error))

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """200 once the model and index are loaded, 503 before (or if loading failed)."""
        if state["qa"] is not None:
            return JSONResponse({"status": "ready"})
        if state["error"]:
            return JSONResponse({"status": "failed", "error": state["error"]}, status_code=503)
        return JSONResponse({"status": "loading", "error": "모델과 색인을 불러오는 중입니다."}, status_code=503)

    @app.post("/v1/ask", response_model=AskResponse, tags=["qa"])
    async def ask(request: AskRequest) -> AskResponse:
        """Answer a question from the book, with `[n]` markers and exact citations."""
        qa_service = service()
        history = [Turn(m.role, m.content) for m in request.history]
        result = await run_in_threadpool(qa_service.ask, request.question, request.top_k, request.mode, history)
        return ask_response(result)

    @app.post("/v1/ask/stream", tags=["qa"], response_class=EventStreamResponse, responses=_STREAM_RESPONSES)
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

        return EventStreamResponse(events(), headers={"Cache-Control": "no-cache"})

    @app.get("/v1/search", response_model=SearchResponse, tags=["qa"])
    async def search(
        q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, pattern=NOT_BLANK, description="질문")],
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
