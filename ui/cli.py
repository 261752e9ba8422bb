"""The `bookqa` command line, put together: a composition root, at the top of the layers.

Each layer contributes its commands (`indexer.commands`, `service.commands`, `serve` here);
packages beside the UI, such as the evaluator, plug theirs in through the `bookqa.commands`
entry points declared in pyproject.toml.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Annotated

import typer
from rich.markup import escape

from indexer.commands import console, index, report_skipped, search, settings_callback
from indexer.settings import Settings
from service.commands import ask, feedback_app

COMMAND_GROUP = "bookqa.commands"

app = typer.Typer(help="bookqa: 디지털 트렌드 2023 책에 대한 질의응답", no_args_is_help=True, add_completion=False)
app.callback()(settings_callback)
app.command()(index)
app.command()(search)
app.command()(ask)
app.add_typer(feedback_app, name="feedback")


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="주소")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="포트")] = 8000,
) -> None:
    """Start the chat (at /ui) and the HTTP API (under /v1, docs at /docs); builds the index first if needed.

    The server listens at once; `/readyz` turns 200 when the index, the model and Kiwi are loaded, and
    the chat follows a few seconds later (`/ui` says it is preparing until then).
    """
    from service.startup import limit_malloc_arenas, start_loading

    limit_malloc_arenas()
    settings: Settings = ctx.obj
    # Loading starts first; the chat (Gradio) is imported once the service is ready (see ui.server).
    loading = start_loading(settings, report=lambda message: console.print(escape(message), soft_wrap=True))

    import uvicorn

    from service.observability import configure_logging
    from ui.server import create_app

    report_skipped(settings)
    console.print(f"bookqa 채팅: http://{host}:{port}/ui/  (API: /v1, 문서: http://{host}:{port}/docs)")
    configure_logging(settings.log_level)
    # One JSON line per request comes from bookqa's own middleware (with its request id), not uvicorn's access log.
    app = create_app(settings, loader=loading.result, defer_chat=True)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


for _entry in entry_points(group=COMMAND_GROUP):
    # An entry point names a command (a function) or a group of commands (a typer.Typer).
    _command = _entry.load()
    if isinstance(_command, typer.Typer):
        app.add_typer(_command, name=_entry.name)
    else:
        app.command(_entry.name)(_command)


if __name__ == "__main__":
    app()
