"""The web app, put together: the question API with the chat mounted at `/ui` (a composition root).

`bookqa serve` runs this; `service.api.create_api` alone is the API without the chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from indexer.settings import Settings
from service.api import create_api, loaded_service, loaded_tracker, loading_finished
from service.qa import QAService
from ui import UI_PATH

log = logging.getLogger(__name__)

# What the chat's address shows in the seconds between the service being ready and the chat being mounted.
CHAT_LOADING_PAGE = (
    '<!doctype html><html lang="ko"><head><meta charset="utf-8"><meta http-equiv="refresh" content="1">'
    "<title>bookqa</title></head><body><p>채팅 화면을 준비하고 있습니다. 잠시 후 저절로 열립니다.</p></body></html>"
)
# What it shows when the chat could not be built (the log says why); the API keeps answering.
CHAT_FAILED_PAGE = (
    '<!doctype html><html lang="ko"><head><meta charset="utf-8"><title>bookqa</title></head><body>'
    "<p>채팅 화면을 시작하지 못했습니다. 서버 기록을 확인해 주세요. 질문 API(/v1)는 계속 쓸 수 있습니다.</p></body></html>"
)
# The chat is mounted once the service has loaded (or failed to), or after this long in any case.
CHAT_WAIT_SECONDS = 600.0


def create_app(
    settings: Settings | None = None,
    qa: QAService | None = None,
    loader: Callable[[], QAService] | None = None,
    defer_chat: bool = False,
) -> FastAPI:
    """The API of `create_api` plus the Gradio chat at `/ui`, sharing one service; `/` leads to the chat.

    With `defer_chat` (what `bookqa serve` does) Gradio is imported and the chat mounted only once the
    service has loaded: its import holds Python's lock for seconds that would otherwise delay the first
    answer. Until then `/ui` answers 503 with a page that reloads itself.
    """
    app = create_api(settings, qa=qa, loader=loader)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse(f"{UI_PATH}/")

    if not defer_chat:
        from ui.app import mount_chat_ui

        mount_chat_ui(app, lambda: loaded_service(app), tracker=loaded_tracker(app))
        return app
    slot = DeferredChat(app)
    app.mount(UI_PATH, slot)
    serve_api = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(running: FastAPI) -> AsyncIterator[object]:
        async with serve_api(running) as state:
            slot.stopping = asyncio.Event()  # made in the running loop: a test client may start the app again
            task = asyncio.create_task(slot.run())
            try:
                yield state
            finally:
                slot.stopping.set()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(task, 10)

    app.router.lifespan_context = lifespan
    return app


class DeferredChat:
    """An ASGI app at `/ui` that serves a "preparing" page until the chat is built, then the chat itself."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.chat: FastAPI | None = None
        self.failed = False
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Wait for the service, build the chat on a worker thread, then run Gradio's start-up until shutdown."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CHAT_WAIT_SECONDS
        while not loading_finished(self.app) and loop.time() < deadline and not self.stopping.is_set():
            await asyncio.sleep(0.1)
        if self.stopping.is_set():
            return
        try:
            chat = await asyncio.to_thread(self._build)
        except Exception:
            log.exception("the chat could not be built")
            self.failed = True  # not "preparing" forever
            return
        # Gradio's own start-up (its queue, background tasks) normally runs in the app's lifespan.
        async with chat.router.lifespan_context(chat):
            self.chat = chat
            try:
                await self.stopping.wait()
            finally:
                self.chat = None

    def _build(self) -> FastAPI:
        from ui.app import mount_chat_ui  # Gradio: imported only now

        # The chat gets a FastAPI of its own with the same routes it would have in the main app.
        chat = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        return mount_chat_ui(chat, lambda: loaded_service(self.app), tracker=loaded_tracker(self.app))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.chat is None:
            if scope["type"] == "http" and self.failed:
                page = HTMLResponse(CHAT_FAILED_PAGE, status_code=503, headers={"Cache-Control": "no-store"})
                await page(scope, receive, send)
            elif scope["type"] == "http":
                page = HTMLResponse(CHAT_LOADING_PAGE, status_code=503, headers={"Retry-After": "1", "Cache-Control": "no-store"})
                await page(scope, receive, send)
            elif scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1013})
            return
        # The mount added "/ui" to the root path; the chat's app routes whole paths, as when mounted directly.
        root_path = scope.get("root_path", "")
        chat_scope = dict(scope, root_path=root_path.removesuffix(UI_PATH))
        target: ASGIApp = self.chat
        await target(chat_scope, receive, send)
