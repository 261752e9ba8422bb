"""The web app, put together: the question API with the chat mounted at `/ui` (a composition root).

`bookqa serve` runs this; `service.api.create_api` alone is the API without the chat.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from indexer.settings import Settings
from service.api import create_api, loaded_service, loaded_tracker
from service.qa import QAService
from ui.app import UI_PATH, mount_chat_ui


def create_app(
    settings: Settings | None = None,
    qa: QAService | None = None,
    loader: Callable[[], QAService] | None = None,
) -> FastAPI:
    """The API of `create_api` plus the Gradio chat at `/ui`, sharing one service; `/` leads to the chat."""
    app = create_api(settings, qa=qa, loader=loader)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse(f"{UI_PATH}/")

    mount_chat_ui(app, lambda: loaded_service(app), tracker=loaded_tracker(app))
    return app
