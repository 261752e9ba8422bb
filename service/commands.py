"""The service's commands of the `bookqa` command line: `ask` (the same answer as POST /v1/ask) and `feedback export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from indexer.commands import EXIT_BAD_INPUT, EXIT_UNUSABLE, console, fail, load_or_exit
from indexer.engine import QueryError
from indexer.formats import page_label
from indexer.settings import SearchMode, Settings
from service.api import ask_response
from service.feedback import FeedbackStore, export_thumbs_down
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
            f"({escape(', '.join(filter(None, [citation.doc, page_label(citation.doc, citation.page)])))} "
            f"{citation.start}:{citation.end})[/dim]"
        )


feedback_app = typer.Typer(help="Reader feedback (👍/👎 from the chat and POST /v1/feedback).", no_args_is_help=True)


@feedback_app.command("export")
def export_feedback(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="쓸 JSONL 파일 (골드 세트 형식)")],
) -> None:
    """Write the 👎 answers as gold-set lines (`answerable` null) to review into eval/gold."""
    settings: Settings = ctx.obj
    if not settings.feedback_db.is_file():
        raise fail(FileNotFoundError(f"피드백 데이터베이스가 없습니다: {settings.feedback_db} (BOOKQA_FEEDBACK_DB)"), EXIT_UNUSABLE)
    store = FeedbackStore(settings.feedback_db, settings.feedback_keep_answers, settings.feedback_answer_days)
    count = export_thumbs_down(store, out)
    console.print(
        f"👎 답변 {count}개를 {escape(str(out))}에 썼습니다. 각 줄의 answers·evidence를 검토하고 "
        "answerable을 true/false로 정한 뒤 eval/gold에 옮기세요."
    )
