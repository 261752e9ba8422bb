"""The chat UI: safe rendering, Gradio's own client against a running app, and a real browser."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from indexer.engine import SearchEngine
from service.answer import ABSTAIN_MESSAGE
from ui.server import create_app
from service.qa import QAService
from tests.servers import LoopbackServer
from ui.app import EXAMPLE_QUESTIONS, Conversation, make_respond
from ui.render import answer_markdown, escape_markdown, sources_html

CHROMIUM = os.environ.get("BOOKQA_CHROMIUM", "/usr/bin/chromium")
# Flags for a closed network: without them Chromium keeps trying to reach Google's services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INJECTION = '<img src=x onerror="window.__bookqa_xss=1"><script>window.__bookqa_xss=2</script> 마이데이터'


@pytest.fixture(scope="module")
def qa(engine: SearchEngine) -> QAService:
    return QAService(engine)


@pytest.fixture(scope="module")
def server(qa: QAService) -> Iterator[LoopbackServer]:
    with LoopbackServer(create_app(qa=qa)) as running:
        yield running


def test_deferred_chat_follows_the_service_and_answers(qa: QAService) -> None:
    """`bookqa serve`'s app: /ui says it is preparing while the service loads, then serves the chat."""
    import threading

    release = threading.Event()

    def slow_loader() -> QAService:
        release.wait(60)
        return qa

    with LoopbackServer(create_app(loader=slow_loader, defer_chat=True)) as running:
        waiting = httpx.get(f"{running.url}/ui/")
        assert waiting.status_code == 503 and "준비하고 있습니다" in waiting.text
        assert waiting.headers["x-frame-options"] == "DENY"  # the app's guards cover the placeholder too
        assert httpx.get(f"{running.url}/readyz").status_code == 503
        release.set()
        deadline = time.monotonic() + 120
        page = waiting
        while page.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            page = httpx.get(f"{running.url}/ui/")
        assert page.status_code == 200 and httpx.get(f"{running.url}/readyz").status_code == 200
        assert httpx.post(f"{running.url}/ui/gradio_api/upload").status_code == 404
        client = Client(f"{running.url}/ui/", verbose=False, download_files=False)
        _, chat, sources = client.predict("마이데이터가 뭐야?", [], 5, "hybrid", api_name="/ask")
        assert "(#bq-cite-1-1)" in _text(chat[-1]) and '<mark class="bq-quote">' in sources


def test_a_chat_that_cannot_be_built_says_so_and_the_api_answers(qa: QAService, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not "preparing" forever: /ui says the chat could not start, while /v1 keeps answering."""
    from ui.server import DeferredChat

    def broken(self: DeferredChat) -> object:
        raise RuntimeError("gradio is broken here")

    monkeypatch.setattr(DeferredChat, "_build", broken)
    with LoopbackServer(create_app(loader=lambda: qa, defer_chat=True)) as running:
        deadline = time.monotonic() + 30
        page = httpx.get(f"{running.url}/ui/")
        while "준비하고 있습니다" in page.text and time.monotonic() < deadline:
            time.sleep(0.1)
            page = httpx.get(f"{running.url}/ui/")
        assert page.status_code == 503 and "시작하지 못했습니다" in page.text
        answer = httpx.post(f"{running.url}/v1/ask", json={"question": "마이데이터가 뭐야?"}, timeout=60)
        assert answer.status_code == 200 and answer.json()["citations"]


def test_markers_link_to_their_cards_and_text_stays_text() -> None:
    rendered = answer_markdown("가 [1] 나 [2] 다 [7] <b>x</b>", turn=3, markers={1, 2})
    assert "[\\[1\\]](#bq-cite-3-1)" in rendered and "[\\[2\\]](#bq-cite-3-2)" in rendered
    assert "\\[7\\]" in rendered  # a marker naming no citation stays plain text
    assert "\\<b\\>" in rendered
    assert escape_markdown("1. 목록\n# 제목") == "1\\. 목록\n\\# 제목"


def test_sources_panel_escapes_book_and_user_text(qa: QAService) -> None:
    respond = make_respond(lambda: qa)
    *_, (_, chat, conversation, sources) = respond("NFT는 무엇인가요?", [], None, 5, "hybrid")
    assert "<script" not in sources and "onerror" not in sources.replace("&quot;", "")
    assert conversation.turns[0].cards, "an answer about NFT cites the book"
    for view in conversation.turns[0].cards:
        assert f'id="bq-cite-1-{view.citation.id}"' in sources
    html_free = sources_html(conversation.turns)
    assert html_free == sources


def test_follow_up_keeps_the_conversation_and_old_citations(qa: QAService, engine: SearchEngine) -> None:
    respond = make_respond(lambda: qa)
    *_, (_, chat, conversation, _) = respond("마이페이먼트가 뭐야?", [], Conversation(), 5, "hybrid")
    *_, (_, chat, conversation, sources) = respond("그게 도입되면 뭐가 좋아?", chat, conversation, 5, "hybrid")
    assert [turn.role for turn in conversation.history] == ["user", "assistant"] * 2
    assert len(chat) == 4
    expected = qa.ask("그게 도입되면 뭐가 좋아?", history=conversation.history[:2])
    assert conversation.history[-1].content == expected.answer
    # Both answers' markers stay clickable: the cards of turn 1 and turn 2 are in the panel.
    assert "bq-cite-1-1" in sources and "bq-cite-2-1" in sources


@pytest.mark.parametrize("question", EXAMPLE_QUESTIONS)
def test_every_example_question_gets_a_cited_answer(qa: QAService, question: str) -> None:
    result = qa.ask(question)
    assert not result.abstained and result.citations, result.answer


def test_blank_or_too_long_question_and_unready_service_change_nothing(qa: QAService) -> None:
    outputs = list(make_respond(lambda: qa)("   ", [], Conversation(), 5, "hybrid"))
    assert len(outputs) == 1 and outputs[0][1] == []
    too_long = "마이데이터 " * 500
    outputs = list(make_respond(lambda: qa)(too_long, [], Conversation(), 5, "hybrid"))
    assert len(outputs) == 1 and outputs[0][0] == too_long and outputs[0][1] == []  # kept for editing
    outputs = list(make_respond(lambda: None)("마이데이터가 뭐야?", [], Conversation(), 5, "hybrid"))
    assert outputs[0][0] == "마이데이터가 뭐야?" and outputs[0][1] == []


def _text(message: dict) -> str:
    content = message["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def test_gradio_client_gets_an_answer_with_a_citation(server: LoopbackServer, engine: SearchEngine) -> None:
    assert httpx.get(f"{server.url}/", follow_redirects=False).headers["location"] == "/ui/"
    client = Client(f"{server.url}/ui/", verbose=False, download_files=False)
    question_box, chat, sources = client.predict("마이데이터가 뭐야?", [], 5, "hybrid", api_name="/ask")
    assert question_box == ""
    answer = _text(chat[-1])
    assert chat[-1]["role"] == "assistant"
    assert "(#bq-cite-1-1)" in answer
    quote = re.search(r'<mark class="bq-quote">(.*?)</mark>', sources, re.S)
    assert quote and "본인 정보를 통합해 제공하는 사업" in quote.group(1)
    assert quote.group(1) in engine.document_text("digital-trend-2023.txt")

    _, chat, _ = client.predict("김치찌개 맛있게 끓이는 법 알려줘", [], 5, "hybrid", api_name="/ask")
    assert ABSTAIN_MESSAGE.split(".")[0] in _text(chat[-1])


def test_concurrent_users_all_get_whole_answers_at_once(server: LoopbackServer) -> None:
    questions = ["NFT는 무엇인가요?", "클라우드 도입의 장점은?", "스마트 팩토리란 무엇인가요?"]
    clients = [Client(f"{server.url}/ui/", verbose=False, download_files=False) for _ in questions]
    jobs = [client.submit(q, [], 5, "hybrid", api_name="/ask") for client, q in zip(clients, questions)]
    for job in jobs:
        _, chat, _ = job.result(timeout=120)
        assert _text(chat[-1]).strip()
        # An extractive answer exists whole at once: it is shown whole, not paced out word by word.
        partial = [_text(out[1][-1]) for out in job.outputs() if out[1]]
        assert 1 <= len(partial) <= 2 and partial[-1] == _text(chat[-1])


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: `make test` installs it (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


def _open_chat(page, url: str) -> None:
    # Not "networkidle": Gradio keeps a connection open for its queue.
    page.goto(url, wait_until="load")
    page.locator("#bq-question textarea").wait_for(timeout=30_000)


def _ask_in_page(page, question: str) -> str:
    """Type a question, press Enter, and wait until the streamed answer stops changing."""
    bots = page.locator("#bq-chat [data-testid='bot']")
    before = bots.count()
    page.locator("#bq-question textarea").fill(question)
    page.locator("#bq-question textarea").press("Enter")
    page.wait_for_function(
        "n => document.querySelectorAll(\"#bq-chat [data-testid='bot']\").length > n", arg=before, timeout=60_000
    )
    last, stable_since = None, time.monotonic()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = bots.last.inner_text()
        if text != last:
            last, stable_since = text, time.monotonic()
        elif text.strip() and time.monotonic() - stable_since > 0.8:
            return text
        page.wait_for_timeout(100)
    raise AssertionError(f"the answer did not settle: {last!r}")


def test_browser_asks_streams_and_clicks_through_to_the_sentence(
    server: LoopbackServer, browser, engine: SearchEngine, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="ko-KR")
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # The security headers' Content-Security-Policy must allow everything the chat does.
    page.add_init_script(
        "window.__csp = []; document.addEventListener('securitypolicyviolation',"
        " (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI))"
    )
    _open_chat(page, f"{server.url}/")
    answer = _ask_in_page(page, "마이데이터가 뭐야?")
    assert "[1]" in answer
    link = page.locator("#bq-chat a[href='#bq-cite-1-1']")
    link.wait_for(timeout=60_000)
    card = page.locator("#bq-cite-1-1")
    assert not card.is_visible()
    link.click()
    card.wait_for(state="visible", timeout=10_000)
    quote = card.locator("mark.bq-quote").inner_text()
    assert "본인 정보를 통합해 제공하는 사업" in quote
    assert quote in engine.document_text("digital-trend-2023.txt")
    assert "TREND 2" in card.locator(".bq-cite-head").inner_text()
    assert page.url.endswith("/ui/"), "the citation opened in the page, not a new tab"
    screenshot = Path(os.environ.get("BOOKQA_UI_SCREENSHOT", tmp_path / "chat.png"))
    page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 10_000
    assert not errors, errors
    assert page.evaluate("window.__csp") == []
    page.close()


def test_browser_never_runs_injected_markup(server: LoopbackServer, browser) -> None:
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    _open_chat(page, f"{server.url}/ui/")
    _ask_in_page(page, INJECTION)
    assert page.evaluate("window.__bookqa_xss") is None
    assert not dialogs
    user_text = page.locator("#bq-chat [data-testid='user']").last.inner_text()
    assert "<img src=x onerror=" in user_text, "the question is shown as the text the user typed"
    assert page.locator("#bq-chat img[src='x']").count() == 0
    assert page.locator("#bq-sources script").count() == 0
    page.close()


def test_thumbs_and_comment_are_stored_as_feedback(qa: QAService, tmp_path: Path) -> None:
    import gradio as gr

    from indexer.settings import Settings
    from service.feedback import AnswerTracker, FeedbackStore
    from ui.app import make_comment, make_rate

    store = FeedbackStore(tmp_path / "feedback.sqlite3")
    tracker = AnswerTracker(store, None, lambda: "v-test")
    *_, (_, chat, conversation, _) = make_respond(lambda: qa, tracker)("마이데이터가 뭐야?", [], None, 5, "hybrid")
    assert list(conversation.answer_ids) == [1] and chat[1]["role"] == "assistant"
    conversation = make_rate(tracker)(conversation, gr.LikeData(None, {"index": 1, "value": chat[1], "liked": False}))
    assert make_comment(tracker)("  출처가 틀렸어요  ", conversation)[0] == ""
    [record] = store.rated("down")
    assert record.question == "마이데이터가 뭐야?" and record.comments == ("출처가 틀렸어요",)
    assert record.index_version == "v-test" and record.citations
    # A withdrawn vote ("") and a click on a question store nothing.
    make_rate(tracker)(conversation, gr.LikeData(None, {"index": 1, "value": chat[1], "liked": ""}))
    make_rate(tracker)(conversation, gr.LikeData(None, {"index": 0, "value": chat[0], "liked": True}))
    assert store.count("feedback") == 2
    assert Settings().feedback_db != tmp_path / "feedback.sqlite3"


def test_browser_thumbs_down_and_comment_reach_the_feedback_store(server: LoopbackServer, browser) -> None:
    from indexer.settings import Settings
    from service.feedback import FeedbackStore

    store = FeedbackStore(Settings().feedback_db)
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="en-US")
    _open_chat(page, f"{server.url}/ui/")
    question = "스마트 팩토리의 목표는 뭐야?"
    _ask_in_page(page, question)
    page.locator("#bq-chat").get_by_role("button", name="Dislike").last.click()
    page.locator("#bq-comment textarea").fill("답이 너무 길어요")
    page.locator("#bq-comment-send").click()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        records = [r for r in store.rated("down") if r.question == question]
        if records and records[0].comments:
            break
        page.wait_for_timeout(200)
    assert records and records[0].comments == ("답이 너무 길어요",)
    assert records[0].answer and records[0].citations
    # The store is written inside the handler; the box is cleared when its reply reaches the page.
    from playwright.sync_api import expect

    expect(page.locator("#bq-comment textarea")).to_have_value("", timeout=15_000)
    page.close()
