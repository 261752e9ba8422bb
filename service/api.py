"""The HTTP service: `/v1/ask`, `/v1/ask/stream`, `/v1/search`, `/v1/feedback`, `/healthz`, `/readyz`, `/metrics`.

The OpenAI-compatible `/v1/chat/completions` and `/v1/models` come from `service.openai_compat`.

Model and index load once, in the background at startup, so `/healthz` answers at once and
`/readyz` turns 200 when questions can be served. Inference runs in a thread pool, off the
event loop. A user's mistake is always a 4xx with a Korean message, never a 500.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, BeforeValidator, Field, field_validator
from starlette.concurrency import run_in_threadpool

from indexer.corpus import CorpusError
from indexer.embedding import EmbedderError
from indexer.engine import MAX_QUERY_CHARS, MAX_TOP_K, QueryError, UnknownDocumentError
from indexer.manifest import IndexLoadError
from indexer.settings import Settings
from indexer.retrieval import Passage
from service.answer import Citation, stream_pieces
from service.feedback import Answered, AnswerTracker, FeedbackStore, UnknownAnswerError, index_version
from service.guard import NOT_BLANK, ErrorResponse, error_response, install_guards, strict_int
from service.observability import Metrics, ObservabilityMiddleware, add_log_fields
from service.openai_compat import openai_router
from service.qa import MAX_HISTORY_MESSAGE_CHARS, MAX_HISTORY_MESSAGES, AskResult, QAService, Turn

log = logging.getLogger(__name__)
MAX_DOC_FILTER = 100




class HistoryMessage(BaseModel):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_HISTORY_MESSAGE_CHARS)


class AskRequest(BaseModel):
    # The limit is the question's alone; earlier turns have their own (see `history`).
    question: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=NOT_BLANK, examples=["마이데이터가 뭐야?"])
    top_k: Annotated[int, BeforeValidator(strict_int)] = Field(5, ge=1, le=MAX_TOP_K)
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    history: list[HistoryMessage] = Field(
        default_factory=list,
        max_length=MAX_HISTORY_MESSAGES,
        description=f"earlier turns, oldest first: at most {MAX_HISTORY_MESSAGES}, "
        f"{MAX_HISTORY_MESSAGE_CHARS} characters each",
    )
    doc: list[Annotated[str, Field(min_length=1, max_length=1024)]] | None = Field(
        None, min_length=1, max_length=MAX_DOC_FILTER, description="Only these documents (ids as in passages' `doc`)."
    )

    @field_validator("doc", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class AskResponse(BaseModel):
    answer: str
    abstained: bool
    citations: list[Citation]
    passages: list[Passage]
    timings_ms: dict[str, float]
    answer_mode: Literal["extractive", "generative"] = "extractive"
    notes: list[str] = Field(default_factory=list, description="e.g. why a generative answer fell back")
    answer_id: str | None = Field(None, description="Names this answer in POST /v1/feedback (null when feedback is off)")
    answer_type: str | None = Field(
        None,
        description="what the question asks for: date, percent, money, quantity, number, ordinal, place, person, "
        "organization, name, definition, reason, manner or other",
    )


class SearchResponse(BaseModel):
    passages: list[Passage]


MAX_COMMENT_CHARS = 2000


class FeedbackRequest(BaseModel):
    answer_id: str = Field(min_length=1, max_length=64, description="`answer_id` of a /v1/ask answer")
    rating: Literal["up", "down"] = Field(description="👍 up or 👎 down")
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)


class FeedbackResponse(BaseModel):
    feedback_id: int
    answer_id: str
    rating: Literal["up", "down"]


def ask_response(result: AskResult, answer_id: str | None = None) -> AskResponse:
    return AskResponse(
        answer=result.answer,
        abstained=result.abstained,
        citations=result.citations,
        passages=result.passages,
        timings_ms=result.timings_ms,
        answer_mode=result.answer_mode,
        notes=result.notes,
        answer_id=answer_id,
        answer_type=result.answer_type,
    )


def loaded_tracker(app: FastAPI) -> AnswerTracker:
    """The app's answer tracker (metrics and feedback), for the chat mounted beside the API."""
    return app.state.bookqa["tracker"]


def index_facts(qa: QAService | None) -> dict[str, object] | None:
    """What /metrics reports of the loaded index (None while loading)."""
    if qa is None:
        return None
    manifest = qa.engine.manifest
    return {
        "chunks": manifest.n_chunks,
        "documents": len(manifest.corpus),
        "build_seconds": manifest.build_seconds,
        "version": index_version(manifest),
        "model": manifest.model.name,
        "format_version": manifest.format_version,
        "created_at": manifest.created_at,
    }


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


_UNKNOWN_DOCUMENT: dict[int | str, dict[str, Any]] = {
    404: {
        "description": "`doc`가 색인에 없는 문서를 가리킵니다",
        # Spelled out: on the event-stream route a `model` would be declared as text/event-stream.
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
}
_STREAM_RESPONSES.update(_UNKNOWN_DOCUMENT)


def loaded_service(app: FastAPI) -> QAService | None:
    """The app's service once loaded, None while loading (for the chat mounted beside the API)."""
    return app.state.bookqa["qa"]


def loading_finished(app: FastAPI) -> bool:
    """True once the app's service has loaded or failed to (`/readyz` then says which)."""
    return app.state.bookqa["qa"] is not None or app.state.bookqa["error"] is not None


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
    metrics = Metrics(lambda: index_facts(state["qa"]))  # type: ignore[arg-type]
    # Added after the guards, so it is outermost: refused bodies (413) are counted and logged too.
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    store = None
    if settings.feedback:
        try:
            store = FeedbackStore(settings.feedback_db, settings.feedback_keep_answers, settings.feedback_answer_days)
        except (sqlite3.Error, OSError) as error:  # the service answers all the same, without answer ids
            log.warning("feedback is off: cannot open %s: %s", settings.feedback_db, error)

    def service() -> QAService:
        current = state["qa"]
        if current is None:
            raise _NotReady(str(state["error"] or "모델과 색인을 불러오는 중입니다."))
        return current  # type: ignore[return-value]

    tracker = AnswerTracker(store, metrics, lambda: index_version(service().engine.manifest))
    state["tracker"] = tracker
    state["metrics"] = metrics
    app.state.bookqa = state

    def log_question(request: Request, question: str, **fields: object) -> None:
        extra: dict[str, object] = {"question_chars": len(question), **fields}
        if settings.log_questions:
            extra["question"] = question
        add_log_fields(request.scope.setdefault("state", {}), **extra)

    async def answer(request: Request, body: AskRequest, channel: str) -> AskResponse:
        qa_service = service()
        history = [Turn(m.role, m.content) for m in body.history]
        log_question(request, body.question, channel=channel, top_k=body.top_k, mode=body.mode)
        result, answer_id = await run_in_threadpool(
            tracker.ask, qa_service, body.question, body.top_k, body.mode, history, channel, body.doc
        )
        add_log_fields(request.scope["state"], answer_id=answer_id, answer_mode=result.answer_mode, abstained=result.abstained)
        return ask_response(result, answer_id)

    @app.exception_handler(QueryError)
    async def _bad_query(_: Request, error: QueryError) -> JSONResponse:
        return error_response(422, str(error))

    @app.exception_handler(UnknownDocumentError)
    async def _unknown_document(_: Request, error: UnknownDocumentError) -> JSONResponse:
        return error_response(404, str(error))

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

    @app.post("/v1/ask", response_model=AskResponse, tags=["qa"], responses=_UNKNOWN_DOCUMENT)
    async def ask(body: AskRequest, request: Request) -> AskResponse:
        """Answer a question from the book, with `[n]` markers and exact citations."""
        return await answer(request, body, "api")

    @app.post("/v1/ask/stream", tags=["qa"], response_class=EventStreamResponse, responses=_STREAM_RESPONSES)
    async def ask_stream(body: AskRequest, request: Request) -> StreamingResponse:
        """The answer as server-sent events: `delta` events with text as it exists, then `done` with everything.

        The deltas are the answer's words; a generated answer streams only after its citations are
        checked, so the deltas are always the final text.
        """
        qa_service = service()
        history = [Turn(m.role, m.content) for m in body.history]
        log_question(request, body.question, channel="stream", top_k=body.top_k, mode=body.mode)
        items = tracker.ask_stream(qa_service, body.question, body.top_k, body.mode, history, "stream", body.doc)
        # The first item comes after validation and retrieval, so a bad question is still a 422.
        first = await run_in_threadpool(next, items)

        async def events() -> AsyncIterator[str]:
            item: str | Answered = first
            while True:
                if isinstance(item, Answered):
                    result = item.result
                    add_log_fields(
                        request.scope["state"], answer_id=item.answer_id, answer_mode=result.answer_mode, abstained=result.abstained
                    )
                    yield _sse("done", ask_response(result, item.answer_id).model_dump())
                    return
                for piece in stream_pieces(item):
                    yield _sse("delta", {"text": piece})
                item = await run_in_threadpool(next, items)

        return EventStreamResponse(events(), headers={"Cache-Control": "no-cache"})

    @app.get("/v1/search", response_model=SearchResponse, tags=["qa"], responses=_UNKNOWN_DOCUMENT)
    async def search(
        q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, pattern=NOT_BLANK, description="질문")],
        top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = 5,
        mode: Annotated[Literal["hybrid", "dense", "bm25"], Query()] = "hybrid",
        doc: Annotated[
            list[Annotated[str, Field(min_length=1, max_length=1024)]] | None,
            Query(max_length=MAX_DOC_FILTER, description="이 문서에서만 (여러 번 쓸 수 있음)"),
        ] = None,
    ) -> SearchResponse:
        """Ranked passages for a query, best first; `document[start:end] == text`; `doc` limits it to documents."""
        qa_service = service()
        passages = await run_in_threadpool(qa_service.engine.search, q, top_k, mode, doc)
        return SearchResponse(passages=passages)

    @app.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        status_code=201,
        tags=["feedback"],
        responses={404: {"model": ErrorResponse, "description": "이 answer_id의 답변이 없거나 너무 오래되었습니다"}},
    )
    async def feedback(body: FeedbackRequest) -> FeedbackResponse | JSONResponse:
        """👍/👎 (and an optional comment) on an answer, named by the `answer_id` /v1/ask returned."""
        try:
            receipt = await run_in_threadpool(tracker.feedback, body.answer_id, body.rating, body.comment, "api")
        except UnknownAnswerError:
            days = f"{settings.feedback_answer_days:g}"
            return error_response(
                404,
                f"답변을 찾을 수 없습니다: {body.answer_id} (최근 {settings.feedback_keep_answers:,}개, {days}일 이내의 답변만 평가할 수 있습니다)",
            )
        return FeedbackResponse(feedback_id=receipt.feedback_id, answer_id=receipt.answer_id, rating=receipt.rating)

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics: requests and latency per route, answers by mode, abstentions, LLM fallbacks, index facts."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(openai_router(service, tracker, lambda: _created(state["qa"]), log_question))  # type: ignore[arg-type]
    return app


def _created(qa: QAService | None) -> int:
    """The index's build time as a Unix timestamp (0 while loading), the `created` of the model card."""
    from datetime import datetime

    if qa is None:
        return 0
    try:
        return int(datetime.fromisoformat(qa.engine.manifest.created_at).timestamp())
    except ValueError:
        return 0


class _NotReady(Exception):
    pass


def _sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
