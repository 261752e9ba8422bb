"""Metrics and logs of the HTTP service: Prometheus `/metrics`, one JSON log line per request, request ids.

Every request passes `ObservabilityMiddleware`: it takes the caller's `X-Request-ID` (or makes
one), returns it as a header, counts the request and its latency per route, and writes one JSON
line to the `bookqa.access` logger. A question's text is never logged unless
`BOOKQA_LOG_QUESTIONS` is set; its length is.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ACCESS_LOGGER = "bookqa.access"
REQUEST_ID_HEADER = "X-Request-ID"
# A caller's request id is kept only if it is short and plain (it ends up in logs and headers).
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Latency buckets for answers of tens of milliseconds up to slow generative ones.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Where the log fields an endpoint adds are kept in the request's scope.
LOG_FIELDS = "bookqa_log"

access_log = logging.getLogger(ACCESS_LOGGER)


class Metrics:
    """The service's Prometheus metrics in a registry of their own (one per app, so apps never collide)."""

    def __init__(self, index_facts: Callable[[], dict[str, Any] | None]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bookqa_http_requests", "HTTP requests by route and status.", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "bookqa_http_request_duration_seconds",
            "Time to the end of the response, by route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.answers = Counter(
            "bookqa_answers", "Answers given, by how they were made and where they went.", ["answer_mode", "channel"], registry=self.registry
        )
        self.abstentions = Counter(
            "bookqa_abstentions", "Questions answered with 'the book does not say'.", ["channel"], registry=self.registry
        )
        self.llm_fallbacks = Counter(
            "bookqa_llm_fallbacks", "Generative answers that fell back to the extractive one (timeout, error, no markers).", registry=self.registry
        )
        self.feedback = Counter("bookqa_feedback", "Reader feedback received, by rating.", ["rating"], registry=self.registry)
        self.registry.register(_IndexCollector(index_facts))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def observe_answer(self, answer_mode: str, abstained: bool, llm_fallback: bool, channel: str) -> None:
        self.answers.labels(answer_mode, channel).inc()
        if abstained:
            self.abstentions.labels(channel).inc()
        if llm_fallback:
            self.llm_fallbacks.inc()

    def observe_feedback(self, rating: str) -> None:
        self.feedback.labels(rating).inc()


class _IndexCollector(Collector):
    """Index size and build facts, read from the loaded service at each scrape (nothing while loading)."""

    def __init__(self, index_facts: Callable[[], dict[str, Any] | None]) -> None:
        self.index_facts = index_facts

    def collect(self) -> Iterator[Any]:
        facts = self.index_facts()
        ready = GaugeMetricFamily("bookqa_ready", "1 once the model and index are loaded.")
        ready.add_metric([], 1.0 if facts else 0.0)
        yield ready
        if not facts:
            return
        chunks = GaugeMetricFamily("bookqa_index_chunks", "Chunks (passages) in the loaded index.")
        chunks.add_metric([], float(facts["chunks"]))
        yield chunks
        documents = GaugeMetricFamily("bookqa_index_documents", "Documents in the loaded index.")
        documents.add_metric([], float(facts["documents"]))
        yield documents
        build = GaugeMetricFamily("bookqa_index_build_seconds", "How long building the loaded index took.")
        build.add_metric([], float(facts["build_seconds"]))
        yield build
        info = InfoMetricFamily("bookqa_index", "What the loaded index was built from.")
        info.add_metric([], {key: str(facts[key]) for key in ("version", "model", "format_version", "created_at")})
        yield info


def route_label(scope: Scope) -> str:
    """The route template that served a request (`/v1/ask`, `/ui/gradio_api/queue/join`), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return "unmatched"
    return f"{scope.get('root_path', '')}{path}" or "/"


def request_id_of(scope: Scope) -> str:
    """The caller's request id when it is safe to echo, else a new one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1").strip()
            if _SAFE_REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def add_log_fields(scope_state: dict[str, Any], **fields: Any) -> None:
    """Fields an endpoint adds to its request's log line (pass `request.scope.setdefault("state", {})`)."""
    scope_state.setdefault(LOG_FIELDS, {}).update(fields)


class ObservabilityMiddleware:
    """Request id in and out, request count and latency per route, one JSON log line per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = route_label(scope)
            self.metrics.observe_request(scope["method"], route, status, seconds)
            access_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    **state.get(LOG_FIELDS, {}),
                },
            )


def configure_logging(level: str = "INFO", stream: Any = None) -> logging.Handler:
    """Send bookqa's request log to `stream` (stderr) as one JSON object a line; returns the handler."""
    from pythonjsonlogger.json import JsonFormatter

    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"asctime": "time", "levelname": "level"})
    )
    logger = logging.getLogger("bookqa")
    for old in [h for h in logger.handlers if getattr(h, "_bookqa_json", False)]:
        logger.removeHandler(old)
    handler._bookqa_json = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return handler
