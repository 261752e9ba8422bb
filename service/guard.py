"""The app-wide error contract and browser hardening, installed on a FastAPI app by `install_guards`.

Every response of the app, whatever route produced it (routes added later included), gets:
a Korean `{"error": ...}` body for any 4xx/5xx the app itself produces, never the raw input
echoed back; request bodies over the limit refused with 413 before the route runs; JSON bodies
that cannot be read (not UTF-8, nested too deep, NaN, lone surrogates) refused with 422; and the
security headers of `SECURITY_HEADERS` on every page, API answer and static file.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
# Deeper JSON than any request of ours needs; Python's parser itself gives up near 1,000 levels.
MAX_JSON_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")

# One policy for every page, checked in Chromium against the chat: Gradio 6 needs inline scripts and
# styles, and `new Function` ('unsafe-eval') for gr.HTML templates and the chat's own `js=` hook.
# Everything loads from this origin; nothing may frame the pages, post forms or connect elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; "
    "script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; "
    "font-src 'self' data:; "
    "media-src 'self' data: blob:; "
    "connect-src 'self'; "
    "worker-src 'self' blob:; "
    "frame-src 'self'; "
    "object-src 'none'; "
    "base-uri 'self'; "
    "form-action 'self'; "
    "frame-ancestors 'none'"
)
# FastAPI's /docs and /redoc load Swagger UI / ReDoc from a CDN.
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; "
    "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "font-src 'self' data: https://fonts.gstatic.com; "
    "connect-src 'self'; "
    "worker-src 'self' blob:; "
    "object-src 'none'; "
    "base-uri 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}

_STATUS_MESSAGES = {
    400: "요청을 읽을 수 없습니다.",
    401: "인증이 필요합니다.",
    403: "접근이 허용되지 않습니다.",
    404: "요청한 주소를 찾을 수 없습니다.",
    405: "이 주소에서 허용되지 않는 메서드입니다.",
    406: "요청한 형식으로 응답할 수 없습니다.",
    413: f"요청 본문이 너무 큽니다 (최대 {MAX_BODY_BYTES // 1024} KB).",
    415: "지원하지 않는 본문 형식입니다.",
    422: "요청이 올바르지 않습니다.",
    429: "요청이 너무 많습니다. 잠시 후 다시 시도하세요.",
    500: "서버 내부 오류가 발생했습니다. 잠시 후 다시 시도하세요.",
    503: "서비스를 준비하는 중입니다.",
}


# A question holds a character that Python's str.strip() keeps (what the engine checks). Spelled
# out: JSON Schema, pydantic's regex engine and Python disagree on what `\s` matches.
NOT_BLANK = "[^" + "".join(f"\\u{code:04x}" for code in range(0x3001) if chr(code).isspace()) + "]"


def strict_int(value: Any) -> Any:
    """JSON integers only: `"5"` and `true` are refused (pydantic's lax mode would take them); 5.0 is 5."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("정수여야 합니다")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("정수여야 합니다")
        return int(value)
    return value


class ErrorResponse(BaseModel):
    """The body of every error response: a Korean message, and for validation errors where it failed."""

    error: str = Field(description="사람이 읽을 한국어 오류 메시지")
    detail: list[dict[str, Any]] | None = Field(
        None, description="검증 오류의 위치(loc), 종류(type), 설명(msg); 입력값은 담지 않습니다"
    )


def clean_text(text: str) -> str:
    """`text` made safe to encode as UTF-8: lone surrogates become U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def error_response(status: int, message: str | None = None, detail: list[dict] | None = None, headers=None) -> JSONResponse:
    """A JSON error in the contract: `{"error": Korean text}` (plus `detail` for validation errors)."""
    body: dict[str, Any] = {"error": clean_text(message or _STATUS_MESSAGES.get(status) or HTTPStatus(status).phrase)}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


# --- validation errors -------------------------------------------------------------------------

_MESSAGES = {
    "string_too_short": "비어 있을 수 없습니다",
    "too_short": "비어 있을 수 없습니다",
    "string_pattern_mismatch": "비어 있을 수 없습니다 (공백만 있습니다)",
    "string_type": "문자열이어야 합니다",
    "int_parsing": "정수여야 합니다",
    "int_type": "정수여야 합니다",
    "int_from_float": "정수여야 합니다",
    "float_parsing": "수여야 합니다",
    "float_type": "수여야 합니다",
    "bool_parsing": "true 또는 false여야 합니다",
    "bool_type": "true 또는 false여야 합니다",
    "list_type": "목록이어야 합니다",
    "model_attributes_type": "JSON 객체여야 합니다",
    "model_type": "JSON 객체여야 합니다",
    "dict_type": "JSON 객체여야 합니다",
    "extra_forbidden": "알 수 없는 항목입니다",
    "finite_number": "유한한 수여야 합니다",
}
_BOUNDS = {
    "greater_than_equal": "이상이어야 합니다",
    "less_than_equal": "이하여야 합니다",
    "greater_than": "보다 커야 합니다",
    "less_than": "보다 작아야 합니다",
}


def describe_validation_errors(errors: Iterable[dict]) -> str:
    """One Korean sentence per validation error, naming the field; never the value that was sent."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "header"))
        where = where or "요청 본문"
        kind = error.get("type", "")
        context = error.get("ctx") or {}
        if kind == "json_invalid":
            parts.append("JSON 형식이 올바르지 않습니다")
        elif kind == "missing":
            parts.append(f"{where} 항목이 필요합니다")
        elif kind in ("string_too_long", "too_long"):
            parts.append(f"{where}: 너무 깁니다 (최대 {context.get('max_length', '')})")
        elif kind in _BOUNDS:
            parts.append(f"{where}: {next(iter(context.values()), '')} {_BOUNDS[kind]}")
        elif kind == "literal_error":
            parts.append(f"{where}: 허용되지 않는 값입니다 (가능: {context.get('expected', '')})")
        elif kind == "value_error":
            parts.append(f"{where}: {re.sub(r'^Value error, ', '', str(error.get('msg', '')))}")
        else:
            parts.append(f"{where}: {_MESSAGES.get(kind, '올바르지 않은 값입니다')}")
    return clean_text("; ".join(parts) or "요청이 올바르지 않습니다")


def _detail(errors: Iterable[dict]) -> list[dict[str, Any]]:
    """Where and what failed, without `input` or `ctx`: those may hold unencodable or huge values."""
    return [
        {
            "loc": [part if isinstance(part, int) else clean_text(str(part)) for part in error.get("loc", ())],
            "type": clean_text(str(error.get("type", ""))),
            "msg": clean_text(str(error.get("msg", ""))),
        }
        for error in errors
    ]


async def _on_validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    errors = list(error.errors())
    return error_response(422, describe_validation_errors(errors), _detail(errors))


async def _on_http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    status = error.status_code
    if status == 400:
        # FastAPI's "There was an error parsing the body": an unreadable body is invalid input.
        status = 422
        message = "요청 본문을 JSON으로 읽을 수 없습니다."
    elif isinstance(error.detail, str) and error.detail != HTTPStatus(status).phrase:
        message = error.detail  # a route's own message
    else:
        message = None
    return error_response(status, message, headers=getattr(error, "headers", None))


# --- request bodies ----------------------------------------------------------------------------


class _NonFiniteNumber(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFiniteNumber(text)
    return value


def _reject_constant(text: str) -> float:
    raise _NonFiniteNumber(text)


def json_body_problem(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why a JSON request body cannot be used (in Korean), or None when it can.

    Catches what would otherwise reach a route as a crash or an English parser message: bytes
    that are not UTF-8, nesting deep enough to exhaust the parser, NaN/Infinity and numbers out
    of float range, oversized integers, and lone surrogates (`"\\ud800"`) that cannot be encoded
    back into any response or handed to the tokenizers.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return f"요청 본문이 올바른 UTF-8이 아닙니다 ({error.start}번째 바이트)."
    try:
        value = json.loads(text, parse_float=_finite_float, parse_constant=_reject_constant)
    except RecursionError:
        return f"JSON이 너무 깊게 중첩되어 있습니다 (최대 {max_depth}단계)."
    except _NonFiniteNumber:
        return "JSON에 NaN, Infinity나 범위를 넘는 수는 쓸 수 없습니다."
    except json.JSONDecodeError as error:
        return f"JSON 형식이 올바르지 않습니다 ({error.lineno}번째 줄 {error.colno}번째 글자)."
    except ValueError:  # e.g. an integer of more than 4,300 digits
        return "JSON의 수가 너무 큽니다."
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return f"JSON이 너무 깊게 중첩되어 있습니다 (최대 {max_depth}단계)."
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return "문자열에 짝이 없는 서로게이트 문자(예: \\ud800)가 있습니다. 올바른 유니코드 문자열을 보내세요."
        elif isinstance(item, dict):
            stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return None


def _is_json(content_type: str | None) -> bool:
    """Whether FastAPI would parse a body with this content type as JSON (it does when there is none)."""
    if not content_type:
        return True
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


class BodyLimitMiddleware:
    """Read each request body whole (up to `limit` bytes) before the app runs, and check JSON bodies.

    A body over the limit gets 413 whether it declares its length or arrives chunked; as the app
    has not started, the 413 is the only response ever sent. A JSON body that cannot be read gets
    422 with the reason. The app then receives the body as if from the client.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app = app
        self.limit = limit
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.limit:
            await error_response(413)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; there is no one to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await error_response(413)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = headers.get(b"content-type")
        if body and _is_json(content_type.decode("latin-1") if content_type else None):
            problem = json_body_problem(body, self.max_depth)
            if problem:
                await error_response(422, problem)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then whatever the client does next (a disconnect)

        await self.app(scope, replay, send)


# --- every response ----------------------------------------------------------------------------


class SecurityHeadersMiddleware:
    """Add the security headers to every HTTP response, and turn an unexpected crash into a Korean 500.

    The outermost layer of the app, so responses of mounted apps (the chat), of static files and
    of the other middleware get the headers too. An exception that escapes the app before a
    response started is logged and answered `{"error": ...}` with status 500, echoing nothing.
    """

    def __init__(self, app: ASGIApp, docs_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.docs_paths = frozenset(path for path in docs_paths if path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = dict(SECURITY_HEADERS)
        if scope.get("path") in self.docs_paths:
            policy["Content-Security-Policy"] = DOCS_CONTENT_SECURITY_POLICY
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in policy.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if started:
                raise
            log.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            await error_response(500)(scope, receive, send_with_headers)


# --- the schema --------------------------------------------------------------------------------


def _declare_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare the contract's error responses on every operation, replacing FastAPI's default 422."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorResponse"] = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    reference = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            # Any request may carry a body, so any operation may answer 413 or 422 from the middleware.
            statuses = {
                "413": f"요청 본문이 {MAX_BODY_BYTES // 1024} KB를 넘습니다",
                "422": "요청이 올바르지 않습니다",
                "503": "모델과 색인을 불러오는 중이거나 불러오지 못했습니다",
            }
            for status, description in statuses.items():
                responses[status] = {"description": description, "content": reference}
    for unused in ("HTTPValidationError", "ValidationError"):
        if not any(unused in json.dumps(value) for name, value in components.items() if name != unused):
            components.pop(unused, None)
    return schema


def install_guards(app: FastAPI, limit: int = MAX_BODY_BYTES) -> None:
    """Put the error contract, the body checks and the security headers on `app` (routes to come included)."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http_error)  # type: ignore[arg-type]
    app.add_middleware(BodyLimitMiddleware, limit=limit)
    # Added last, so it is the outermost: even a 413 or a crash carries the headers.
    app.add_middleware(SecurityHeadersMiddleware, docs_paths=(app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url))

    generate = app.openapi  # FastAPI's own, which caches its result in app.openapi_schema

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _declare_errors(generate())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
