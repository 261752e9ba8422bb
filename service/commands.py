"""The service's command of the `bookqa` command line: `ask`, the same answer as POST /v1/ask."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from indexer.commands import EXIT_BAD_INPUT, console, fail, load_or_exit
from indexer.engine import QueryError
from indexer.settings import SearchMode
from service.api import ask_response
from service.qa import QAService


def ask(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="질문")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="근거로 쓸 구절 수")] = 5,
    mode: Annotated[SearchMode, typer.Option(help="hybrid, dense 또는 bm25")] = "hybrid",
    doc: Annotated[Optional[list[str]], typer.Option("--doc", help="이 문서에서만 찾습니다 (여러 번 쓸 수 있음)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="/v1/ask와 같은 JSON으로 출력")] = False,
) -> None:
    """Answer a question from the book with citations (the same answer as POST /v1/ask)."""
    qa = load_or_exit(QAService.load, ctx.obj)
    try:
        result = qa.ask(question, top_k=top_k, mode=mode, docs=doc or None)
    except QueryError as error:
        raise fail(error, EXIT_BAD_INPUT) from error
    response = ask_response(result)
    if as_json:
        typer.echo(response.model_dump_json(indent=2))
        return
    console.print(escape(response.answer), soft_wrap=True)
    for note in response.notes:
        console.print(f"[yellow]{escape(note)}[/yellow]")
    for citation in response.citations:
        console.print(
            f"[dim][{citation.id}] {escape(citation.section or citation.doc)} "
            f"({citation.doc} {citation.start}:{citation.end})[/dim]"
        )
