"""The Gradio chat over the book, mounted in the API's process (`bookqa serve`, at `/ui`).

It calls the same `QAService.ask` as `/v1/ask`, streams the answer into a `gr.Chatbot`, and
shows every `[n]` citation as the quoted sentence highlighted in its passage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from indexer.engine import MAX_QUERY_CHARS, QueryError
from indexer.settings import SEARCH_MODES
from service.feedback import AnswerTracker, UnknownAnswerError
from service.guard import error_response
from service.qa import AskResult, QAService, Turn
from ui import UI_PATH
from ui.render import RenderedTurn, answer_markdown, escape_markdown, rendered_turn, sources_html

# Chat answers computed at once (measured with 16 users asking together: see `bookqa bench`).
CHAT_CONCURRENCY = 16
# Questions from the book's parts: 마이데이터, NFT, 마이페이먼트, cloud, smart factory, the author.
EXAMPLE_QUESTIONS = [
    "마이데이터가 뭐야?",
    "NFT는 왜 대체 불가능하다고 해?",
    "마이페이먼트로 무엇을 할 수 있나요?",
    "기업들이 클라우드로 옮겨 가는 이유는?",
    "스마트 팩토리란 무엇인가요?",
    "저자는 원래 무슨 일을 하던 사람이야?",
]
MODE_CHOICES = [("하이브리드 (의미 + 키워드)", "hybrid"), ("의미 검색", "dense"), ("키워드 검색 (BM25)", "bm25")]
assert {value for _, value in MODE_CHOICES} == set(SEARCH_MODES)
# Gradio's routes for file inputs; matched before the mounted chat, which has no file input.
UPLOAD_ROUTES = ("/gradio_api/upload", "/gradio_api/upload_progress")
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
NOT_READY_MESSAGE = "모델과 색인을 불러오는 중입니다. 잠시 후 다시 질문해 주세요."

# Marker links are handled here, not by the browser: Gradio opens Markdown links in a new tab.
CITATION_JS = """
() => {
  if (window.__bookqaCitations) return;
  window.__bookqaCitations = true;
  document.addEventListener('click', (event) => {
    const link = event.target.closest && event.target.closest('a[href^="#bq-cite-"]');
    if (!link) return;
    event.preventDefault();
    event.stopPropagation();
    const card = document.getElementById(link.getAttribute('href').slice(1));
    if (!card) return;
    document.querySelectorAll('.bq-cite.bq-shown').forEach((el) => el.classList.remove('bq-shown'));
    card.classList.add('bq-shown');
    card.scrollIntoView({block: 'nearest', behavior: 'smooth'});
  }, true);
}
"""

CSS = """
.bq-sources { font-size: 0.95rem; line-height: 1.7; word-break: keep-all; overflow-wrap: anywhere; }
.bq-cite { display: none; border-left: 4px solid var(--color-accent); padding: 0.5rem 0.8rem; margin-bottom: 0.8rem;
           background: var(--block-background-fill); border-radius: 6px; }
.bq-cite.bq-shown, .bq-cite:target { display: block; }
.bq-cite-head, .bq-path { font-weight: 600; font-size: 0.85rem; color: var(--body-text-color-subdued); }
.bq-context { margin: 0.4rem 0; white-space: pre-wrap; }
.bq-quote, .bq-text mark { background: #ffe58a; color: #222; padding: 0 2px; border-radius: 3px; }
.bq-answer { background: #ffc53d; font-weight: 700; border-radius: 3px; padding: 0 1px; }
.bq-offsets { font-size: 0.75rem; color: var(--body-text-color-subdued); }
.bq-passages { padding-left: 1.2rem; }
.bq-passage { margin-bottom: 0.7rem; }
.bq-text { white-space: pre-wrap; max-height: 12rem; overflow-y: auto; }
.bq-hint { color: var(--body-text-color-subdued); }
.bq-viewer:has(.bq-shown) .bq-hint { display: none; }
.bq-path { cursor: pointer; }
.bq-page { font-weight: 400; white-space: nowrap; }
#bq-chat a[href^="#bq-cite-"] { text-decoration: none; font-weight: 700; font-size: 0.8em; padding: 0 0.25em;
                                border-radius: 4px; background: var(--color-accent-soft); vertical-align: super; }
#bq-chat .message { word-break: keep-all; overflow-wrap: anywhere; }
"""

THEME = gr.themes.Soft(
    primary_hue="indigo",
    # Korean system fonts first: the default Latin font has no Hangul, and no web font is fetched.
    font=["Pretendard", "Noto Sans KR", "NanumGothic", "Apple SD Gothic Neo", "Malgun Gothic", "sans-serif"],
)


@dataclass
class Conversation:
    """One browser session's conversation: raw turns for the service, rendered turns for display."""

    history: list[Turn] = field(default_factory=list)
    turns: list[RenderedTurn] = field(default_factory=list)
    # answer_id of each answer, by its message's index in the chat (what Gradio's like event names).
    answer_ids: dict[int, str] = field(default_factory=dict)
    # The latest 👍/👎 given (answer_id, rating): a comment sent afterwards goes with it.
    last_rating: tuple[str, str] | None = None


def make_respond(
    get_service: Callable[[], QAService | None], tracker: AnswerTracker | None = None
) -> Callable[..., Iterator[tuple[Any, ...]]]:
    """The chat handler: ask the service, then stream the answer and show its sources.

    With a `tracker`, each answer is counted in the metrics and remembered for 👍/👎.
    """

    def respond(
        question: str, chat: list[dict[str, Any]], conversation: Conversation | None, top_k: float, mode: str
    ) -> Iterator[tuple[Any, ...]]:
        conversation = conversation or Conversation()
        chat = list(chat or [])
        question = question or ""
        if not question.strip():
            gr.Warning("질문을 입력해 주세요.")
            yield question, chat, conversation, gr.skip()
            return
        qa = get_service()
        if qa is None:
            gr.Warning(NOT_READY_MESSAGE)
            yield question, chat, conversation, gr.skip()
            return
        items = qa.ask_stream(question, top_k=int(top_k), mode=mode, history=conversation.history)  # type: ignore[arg-type]
        try:
            item = next(items)
        except QueryError as error:
            gr.Warning(str(error))
            yield question, chat, conversation, gr.skip()
            return
        turn = len(conversation.turns) + 1
        chat += [{"role": "user", "content": escape_markdown(question)}, {"role": "assistant", "content": ""}]
        # Text shows as soon as it is final (a generated answer once its citations are checked).
        shown = ""
        while not isinstance(item, AskResult):
            shown += item
            chat[-1] = {"role": "assistant", "content": escape_markdown(shown)}
            yield "", chat, conversation, gr.skip()
            item = next(items)
        result = item
        if tracker is not None:
            answer_id = tracker.answered(question, conversation.history, result, "chat")
            if answer_id is not None:
                conversation.answer_ids[len(chat) - 1] = answer_id
        conversation.history += [Turn("user", question), Turn("assistant", result.answer)]
        conversation.turns.append(rendered_turn(qa.engine, turn, result))
        sources = sources_html(conversation.turns)
        markers = {citation.id for citation in result.citations}
        chat[-1] = {"role": "assistant", "content": answer_markdown(result.answer, turn, markers)}
        footer = [escape_markdown(note) for note in result.notes]
        if result.abstained:
            footer.append("질문을 바꾸어 보거나, 책이 다루는 주제(NFT, 마이데이터, 마이페이먼트, 클라우드, 스마트 팩토리)를 물어보세요.")
        if footer:
            chat[-1]["content"] += "\n\n" + "\n\n".join(f"*{line}*" for line in footer)
        yield "", chat, conversation, sources

    return respond


RATINGS = {True: "up", False: "down"}
THANKS = "의견 고맙습니다. 답변을 고치는 데 쓰겠습니다."


def make_rate(tracker: AnswerTracker) -> Callable[..., Conversation]:
    """The 👍/👎 handler of the chat's messages."""

    def rate(conversation: Conversation | None, data: gr.LikeData) -> Conversation:
        conversation = conversation or Conversation()
        index = data.index if isinstance(data.index, int) else data.index[0]
        rating = RATINGS.get(data.liked) if isinstance(data.liked, bool) else None
        answer_id = conversation.answer_ids.get(index)
        if rating is None or answer_id is None:
            return conversation  # a withdrawn vote, or a message that is no answer
        try:
            tracker.feedback(answer_id, rating, None, "chat")  # type: ignore[arg-type]
        except UnknownAnswerError:
            gr.Warning("오래된 답변이라 더 이상 평가할 수 없습니다.")
            return conversation
        conversation.last_rating = (answer_id, rating)
        gr.Info(THANKS)
        return conversation

    return rate


def make_comment(tracker: AnswerTracker) -> Callable[..., tuple[Any, ...]]:
    """The handler of the comment box: the text goes with the latest 👍/👎."""

    def comment(text: str, conversation: Conversation | None) -> tuple[Any, ...]:
        conversation = conversation or Conversation()
        if not (text or "").strip():
            gr.Warning("의견을 입력해 주세요.")
            return text, conversation
        if conversation.last_rating is None:
            gr.Warning("먼저 답변 아래의 👍 또는 👎를 눌러 주세요.")
            return text, conversation
        answer_id, rating = conversation.last_rating
        try:
            tracker.feedback(answer_id, rating, text.strip()[:2000], "chat")  # type: ignore[arg-type]
        except UnknownAnswerError:
            gr.Warning("오래된 답변이라 더 이상 평가할 수 없습니다.")
            return text, conversation
        gr.Info(THANKS)
        return "", conversation

    return comment


def clear() -> tuple[Any, ...]:
    """A fresh conversation."""
    return "", [], Conversation(), sources_html([])


def build_chat_ui(get_service: Callable[[], QAService | None], tracker: AnswerTracker | None = None) -> gr.Blocks:
    """The chat page; `get_service` returns the loaded service, or None while it is loading.

    With a `tracker`, answers get 👍/👎 buttons and a comment box, stored as reader feedback.
    """
    with gr.Blocks(title="bookqa · 디지털 트렌드 2023", analytics_enabled=False) as blocks:
        gr.Markdown(
            "## 『디지털 트렌드 2023』에게 물어보세요\n"
            "책의 내용으로만 답합니다. 답변 끝의 [1] 같은 번호를 누르면 근거가 된 문장을 책의 문맥 속에서 보여줍니다."
        )
        conversation = gr.State(Conversation())
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                chat = gr.Chatbot(
                    label="대화",
                    elem_id="bq-chat",
                    height=520,
                    sanitize_html=True,
                    allow_tags=False,
                    feedback_options=("Like", "Dislike") if tracker is not None else None,
                    buttons=["copy"],
                    placeholder="책에 대해 궁금한 것을 물어보세요. 아래 예시 질문으로 시작해도 좋습니다.",
                )
                with gr.Row():
                    question = gr.Textbox(
                        placeholder="예: 마이데이터가 뭐야?",
                        show_label=False,
                        elem_id="bq-question",
                        scale=5,
                        max_lines=4,
                        # The browser stops typing at the service's limit, rather than failing after sending.
                        max_length=MAX_QUERY_CHARS,
                        submit_btn=False,
                    )
                    send = gr.Button("보내기", variant="primary", scale=1, elem_id="bq-send")
                with gr.Row():
                    reset = gr.Button("대화 지우기", variant="secondary", size="sm", elem_id="bq-clear")
                if tracker is not None:
                    with gr.Row():
                        comment_box = gr.Textbox(
                            placeholder="답변에 👍/👎를 누른 뒤, 무엇이 좋았고 무엇이 틀렸는지 적어 주세요 (선택)",
                            show_label=False,
                            elem_id="bq-comment",
                            scale=5,
                            max_lines=3,
                            max_length=2000,
                            submit_btn=False,
                        )
                        comment_send = gr.Button("의견 보내기", size="sm", scale=1, elem_id="bq-comment-send")
                gr.Examples(EXAMPLE_QUESTIONS, inputs=[question], label="예시 질문")
                with gr.Accordion("설정", open=False):
                    top_k = gr.Slider(1, 10, value=5, step=1, label="참고할 구절 수")
                    mode = gr.Radio(MODE_CHOICES, value="hybrid", label="검색 방식")
            with gr.Column(scale=2):
                gr.Markdown("### 근거")
                sources = gr.HTML(sources_html([]), elem_id="bq-sources", js_on_load=None)
        respond = make_respond(get_service, tracker)
        inputs = [question, chat, conversation, top_k, mode]
        outputs = [question, chat, conversation, sources]
        question.submit(respond, inputs, outputs, api_name="ask", concurrency_id="ask")
        send.click(respond, inputs, outputs, api_visibility="private", concurrency_id="ask")
        reset.click(clear, None, outputs, api_name="clear", queue=False)
        if tracker is not None:
            chat.like(make_rate(tracker), [conversation], [conversation], api_name="rate", queue=False)
            comment_inputs = [comment_box, conversation]
            comment_send.click(make_comment(tracker), comment_inputs, comment_inputs, api_name="comment", queue=False)
            comment_box.submit(make_comment(tracker), comment_inputs, comment_inputs, api_visibility="private", queue=False)
    # Answers take milliseconds and concurrent questions share one embedding pass (the engine batches
    # them), so many may run at once; the queue only stops a flood.
    blocks.queue(default_concurrency_limit=CHAT_CONCURRENCY, max_size=256)
    return blocks


async def _no_uploads(_: Request) -> JSONResponse:
    return error_response(404, "이 채팅은 파일을 받지 않습니다.")


def mount_chat_ui(
    app: FastAPI,
    get_service: Callable[[], QAService | None],
    path: str = UI_PATH,
    tracker: AnswerTracker | None = None,
) -> FastAPI:
    """Serve the chat at `path` of the API's app, in the same process and with the same service.

    The chat has no file input, so Gradio's upload routes are answered 404 before Gradio sees
    them: nobody can store files on the server through the chat.
    """
    for route in UPLOAD_ROUTES:
        app.add_route(f"{path}{route}", _no_uploads, methods=_ALL_METHODS, include_in_schema=False)
    return gr.mount_gradio_app(
        app,
        build_chat_ui(get_service, tracker),
        path=path,
        theme=THEME,
        css=CSS,
        js=CITATION_JS,
        ssr_mode=False,
        footer_links=["api"],
    )
