"""The error contract through a real uvicorn: the reviewer's bad inputs, each answered 4xx in Korean, never 5xx.

Every request here goes to the whole app `bookqa serve` runs (API and chat) on loopback, as raw
bytes where the input is not something a JSON library would write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from indexer.engine import SearchEngine
from service.api import create_api
from service.guard import SECURITY_HEADERS
from service.qa import QAService
from tests.servers import LoopbackServer
from ui.server import create_app

HANGUL = re.compile("[가-힣]")
JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(engine: SearchEngine) -> Iterator[LoopbackServer]:
    with LoopbackServer(create_app(qa=QAService(engine))) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: LoopbackServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def assert_contract(response: httpx.Response, status: int, needle: str = "") -> dict:
    """A Korean `error` of the expected status, the security headers, nothing echoed that cannot be encoded."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert HANGUL.search(body["error"]), body
    assert needle in body["error"], body
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    return body


def deep(levels: int) -> bytes:
    return b'{"question": "x", "history": ' + b"[" * levels + b"]" * levels + b"}"


# (name, raw body, status, what the message must name)
BAD_BODIES = [
    ("lone high surrogate in the question", b'{"question": "\\ud800"}', 422, "서로게이트"),
    ("lone low surrogate in the question", b'{"question": "abc\\udc00"}', 422, "서로게이트"),
    ("lone surrogate in history", b'{"question": "x", "history": [{"role": "user", "content": "\\ud800"}]}', 422, "서로게이트"),
    ("lone surrogate in a key", b'{"question": "x", "\\ud800": 1}', 422, "서로게이트"),
    ("top_k 1e400", b'{"question": "NFT", "top_k": 1e400}', 422, "NaN"),
    ("top_k -1e400", b'{"question": "NFT", "top_k": -1e400}', 422, "NaN"),
    ("top_k NaN", b'{"question": "NFT", "top_k": NaN}', 422, "NaN"),
    ("top_k Infinity", b'{"question": "NFT", "top_k": Infinity}', 422, "NaN"),
    ("top_k as a string", b'{"question": "NFT", "top_k": "5"}', 422, "top_k"),
    ("top_k true", b'{"question": "NFT", "top_k": true}', 422, "top_k"),
    ("top_k 5.5", b'{"question": "NFT", "top_k": 5.5}', 422, "top_k"),
    ("top_k null", b'{"question": "NFT", "top_k": null}', 422, "top_k"),
    ("top_k a list", b'{"question": "NFT", "top_k": [5]}', 422, "top_k"),
    ("top_k 10^22", b'{"question": "NFT", "top_k": 10000000000000000000000}', 422, "top_k"),
    ("top_k of 5,000 digits", b'{"question": "NFT", "top_k": ' + b"9" * 5000 + b"}", 422, "수"),
    ("mode in capitals", b'{"question": "NFT", "mode": "HYBRID"}', 422, "mode"),
    ("mode null", b'{"question": "NFT", "mode": null}', 422, "mode"),
    ("question null", b'{"question": null}', 422, "question"),
    ("question a number", b'{"question": 42}', 422, "question"),
    ("question of 2,001 characters", json.dumps({"question": "가" * 2001}).encode(), 422, "question"),
    ("question of spaces and tabs", b'{"question": " \\t\\n "}', 422, "비어"),
    ("no question", b'{"top_k": 3}', 422, "question"),
    ("invalid UTF-8", b'{"question": "\xff\xfe"}', 422, "UTF-8"),
    ("a surrogate encoded in UTF-8 bytes", b'{"question": "\xed\xa0\x80"}', 422, "UTF-8"),
    ("overlong UTF-8", b'{"question": "\xc0\xaf"}', 422, "UTF-8"),
    ("Latin-1 text", "{\"question\": \"café\"}".encode("latin-1"), 422, "UTF-8"),
    ("10,000 nested arrays", deep(10_000), 422, "중첩"),
    ("100 nested arrays", deep(100), 422, "중첩"),
    ("10,000 nested objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 422, "중첩"),
    ("truncated JSON", b'{"question": "x"', 422, "JSON"),
    ("not JSON", b"question=x", 422, "JSON"),
    ("empty body", b"", 422, "요청 본문"),
    ("null", b"null", 422, "객체"),
    ("a string", b'"question"', 422, "객체"),
    ("a list", b"[1, 2, 3]", 422, "객체"),
    ("history not a list", b'{"question": "x", "history": "earlier"}', 422, "history"),
    ("history of 51 messages", json.dumps({"question": "x", "history": [{"role": "user", "content": "가"}] * 51}).encode(), 422, "history"),
    ("history message of 4,001 characters", json.dumps({"question": "x", "history": [{"role": "user", "content": "가" * 4001}]}).encode(), 422, "history"),
    ("history role system", b'{"question": "x", "history": [{"role": "system", "content": "x"}]}', 422, "role"),
    ("history without content", b'{"question": "x", "history": [{"role": "user"}]}', 422, "content"),
]


@pytest.mark.parametrize("path", ["/v1/ask", "/v1/ask/stream"])
@pytest.mark.parametrize(("name", "body", "status", "needle"), BAD_BODIES, ids=[case[0] for case in BAD_BODIES])
def test_bad_bodies_get_a_korean_4xx(http: httpx.Client, path: str, name: str, body: bytes, status: int, needle: str) -> None:
    assert_contract(http.post(path, content=body, headers=JSON_HEADERS), status, needle)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"question": "NFT"}'),
        ("application/x-www-form-urlencoded", b"question=NFT"),
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=question\r\n\r\nNFT\r\n--x--\r\n"),
        ("application/json; charset=latin-1", b'{"question": "\xff"}'),
    ],
)
def test_other_content_types_get_a_korean_422(http: httpx.Client, content_type: str, body: bytes) -> None:
    assert_contract(http.post("/v1/ask", content=body, headers={"Content-Type": content_type}), 422)


def test_valid_oddities_are_answered(http: httpx.Client) -> None:
    """What a JSON parser accepts and the schema allows is answered, not refused."""
    accepted = [
        b'\xef\xbb\xbf{"question": "NFT\xea\xb0\x80 \xeb\xad\x90\xec\x95\xbc?"}',  # a UTF-8 byte-order mark
        b'{"question": "NFT", "top_k": 5.0}',  # 5.0 is the integer 5 in JSON Schema
        b'{"question": "NFT", "unknown": {"nested": [1, 2]}}',  # fields we do not know are ignored
        b'{"question": "\\ud83d\\ude00 NFT"}',  # a surrogate pair is one character (an emoji)
        b'{"question": "\\u0000NFT\\u200b"}',  # NUL and zero-width space
        # The longest question with a long history, within the body limit (256 KB of UTF-8).
        json.dumps({"question": "가" * 2000, "history": [{"role": "user", "content": "나" * 4000}] * 20}, ensure_ascii=False).encode(),
    ]
    for body in accepted:
        response = http.post("/v1/ask", content=body, headers=JSON_HEADERS)
        assert response.status_code == 200, (body[:60], response.text[:300])


def test_follow_up_is_limited_by_the_question_alone(http: httpx.Client) -> None:
    """Issue 13, case 3: a 1,100-character question after a 1,100-character turn was refused as 2,199 characters."""
    payload = {
        "question": "마이데이터 서비스는 " + "어떤 정보를 모아 보여주나요? " * 60,
        "history": [{"role": "user", "content": "마이페이먼트는 " + "무엇을 할 수 있나요? " * 80}],
    }
    assert len(payload["question"]) > 1000 and len(payload["history"][0]["content"]) > 1000
    for path in ("/v1/ask", "/v1/ask/stream"):
        response = http.post(path, json=payload)
        assert response.status_code == 200, response.text[:300]


def test_huge_bodies_get_413_declared_or_chunked(http: httpx.Client) -> None:
    ten_mb = json.dumps({"question": "가" * (10 * 1024 * 1024 // 3)}).encode()
    assert_contract(http.post("/v1/ask", content=ten_mb, headers=JSON_HEADERS), 413, "KB")

    def chunked(total: int, piece: int = 64 * 1024) -> Iterator[bytes]:
        yield b'{"question": "'
        for _ in range(total // piece):
            yield b"a" * piece
        yield b'"}'

    # httpx sends a generator with Transfer-Encoding: chunked, so no length is declared.
    for path in ("/v1/ask", "/v1/ask/stream"):
        assert_contract(http.post(path, content=chunked(10 * 1024 * 1024), headers=JSON_HEADERS), 413, "KB")
    # Issue 13, case 1: a chunked 1 MB upload to Gradio's upload route crashed the body limit (500).
    response = http.post(
        "/ui/gradio_api/upload", content=chunked(1024 * 1024), headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert_contract(response, 413)
    assert http.post("/v1/ask", json={"question": "NFT가 뭐야?"}).status_code == 200  # the server is unharmed


def test_the_chat_takes_no_uploads(http: httpx.Client) -> None:
    response = http.post("/ui/gradio_api/upload", files={"files": ("note.txt", b"hello")})
    assert_contract(response, 404, "파일")
    assert_contract(http.get("/ui/gradio_api/upload_progress", params={"upload_id": "x"}), 404)


@pytest.mark.parametrize(
    "params",
    [
        {"q": "x", "top_k": "1e400"},
        {"q": "x", "top_k": "NaN"},
        {"q": "x", "top_k": "true"},
        {"q": "x", "top_k": "0"},
        {"q": "", "top_k": "5"},
        {"q": "   "},
        {"q": "가" * 2001},
        {"q": "x", "mode": "magic"},
        {},
    ],
)
def test_search_parameters_never_give_5xx(http: httpx.Client, params: dict) -> None:
    response = http.get("/v1/search", params=params)
    if response.status_code != 200:
        assert_contract(response, 422)


def test_raw_percent_encoded_bytes_in_the_query(http: httpx.Client) -> None:
    for raw in ("%ED%A0%80", "%FF%FE", "%C0%AF", "%00"):
        response = http.get(f"/v1/search?q={raw}x")
        assert response.status_code in (200, 422), (raw, response.text[:200])


def test_unknown_routes_and_methods_answer_in_korean(http: httpx.Client) -> None:
    assert_contract(http.get("/v1/nothing-here"), 404)
    response = http.delete("/v1/ask")
    assert_contract(response, 405)
    assert "POST" in response.headers["allow"]


def test_every_page_and_file_sends_the_security_headers(http: httpx.Client) -> None:
    pages = ["/", "/ui/", "/docs", "/openapi.json", "/healthz", "/readyz", "/v1/search?q=NFT"]
    assets = re.findall(r'(?:src|href)="(\./assets/[^"]+\.(?:js|css))"', http.get("/ui/").text)
    assert assets, "the chat page loads its own scripts and styles"
    pages += [f"/ui/{asset[2:]}" for asset in assets[:3]]
    for page in pages:
        response = http.get(page, follow_redirects=False)
        assert response.status_code < 400, page
        assert response.headers["X-Content-Type-Options"] == "nosniff", page
        assert response.headers["X-Frame-Options"] == "DENY", page
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"], page
    # What /docs loads from the CDN is what its policy allows (its page cannot be tried offline).
    docs = http.get("/docs")
    policy = docs.headers["Content-Security-Policy"]
    for url in re.findall(r"https://[^'\"]+", docs.text):
        origin = "/".join(url.split("/")[:3])
        assert origin in policy, origin


class Echo(BaseModel):
    text: str
    n: int = 1


def test_routes_added_later_inherit_the_contract(engine: SearchEngine) -> None:
    """Another route on the same app (as the OpenAI-compatible endpoint will be) needs no work of its own."""
    app: FastAPI = create_api(qa=QAService(engine))

    @app.post("/v1/echo")
    async def echo(body: Echo) -> dict:
        return {"text": body.text * body.n}

    @app.get("/v1/broken")
    async def broken() -> dict:
        raise RuntimeError("secret internals sk-do-not-show")

    with LoopbackServer(app) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        assert client.post("/v1/echo", json={"text": "가", "n": 2}).json() == {"text": "가가"}
        assert_contract(client.post("/v1/echo", content=b'{"text": "\\ud800"}', headers=JSON_HEADERS), 422, "서로게이트")
        assert_contract(client.post("/v1/echo", content=b'{"text": "x", "n": NaN}', headers=JSON_HEADERS), 422)
        assert_contract(client.post("/v1/echo", json={"text": 1}), 422, "text")
        assert_contract(client.post("/v1/echo", content=b"x" * (300 * 1024), headers=JSON_HEADERS), 413)
        crashed = client.get("/v1/broken")
        assert_contract(crashed, 500)
        assert "sk-do-not-show" not in crashed.text and "RuntimeError" not in crashed.text
        schema = client.get("/openapi.json").json()
        assert {"413", "422"} <= set(schema["paths"]["/v1/echo"]["post"]["responses"])


def test_openapi_declares_the_error_contract_and_the_stream(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status in ("413", "422", "503"):
                content = operation["responses"][status]["content"]["application/json"]["schema"]
                assert content == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
    stream = schema["paths"]["/v1/ask/stream"]["post"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]
    assert schema["components"]["schemas"]["AskRequest"]["properties"]["top_k"]["maximum"] == 50


def test_chat_answers_a_long_follow_up(engine: SearchEngine) -> None:
    """The chat refused the same long follow-up as the API did (issue 13, case 3)."""
    from ui.app import Conversation, make_respond
    from service.qa import Turn

    conversation = Conversation(history=[Turn("user", "마이페이먼트는 " + "무엇을 할 수 있나요? " * 80), Turn("assistant", "답")])
    question = "그럼 마이데이터 서비스는 " + "어떤 정보를 모아 보여주나요? " * 60
    *_, (box, chat, conversation, _) = make_respond(lambda: QAService(engine))(question, [], conversation, 5, "hybrid")
    assert box == "" and len(chat) == 2 and chat[-1]["content"]


def test_retrieval_query_keeps_the_question_whole_and_trims_history() -> None:
    from indexer.engine import MAX_QUERY_CHARS
    from service.qa import Turn, retrieval_query

    question = "그건 언제부터 시행돼?"
    history = [Turn("user", "오래된 질문 " * 500), Turn("assistant", "답"), Turn("user", "마이페이먼트가 뭐야? " * 300)]
    query = retrieval_query(question, history)
    assert len(query) <= MAX_QUERY_CHARS and query.endswith(question)
    assert "마이페이먼트가 뭐야?" in query and "오래된" not in query  # the newest turn first, cut to its end
    long_question = "가" * MAX_QUERY_CHARS
    assert retrieval_query(long_question, history) == long_question
    assert retrieval_query(question, [Turn("user", "NFT란?"), Turn("user", "마이데이터란?")]) == "NFT란?\n마이데이터란?\n" + question
