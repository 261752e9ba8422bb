"""The `bookqa` command line: build the index and search it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Optional, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from indexer.corpus import CorpusError
from indexer.embedding import EmbedderError
from indexer.engine import QueryError, SearchEngine, ensure_index
from indexer.settings import SearchMode, Settings
from indexer.store import IndexLoadError

app = typer.Typer(help="bookqa: 디지털 트렌드 2023 책에 대한 질의응답", no_args_is_help=True, add_completion=False)
console = Console()
errors = Console(stderr=True)

# Exit codes: 1 for the index or model being unusable, 2 for a bad request (as typer does for usage).
EXIT_UNUSABLE, EXIT_BAD_INPUT = 1, 2
T = TypeVar("T")


@app.callback()
def main(
    ctx: typer.Context,
    corpus_dir: Annotated[Optional[Path], typer.Option(help="문서 폴더 (BOOKQA_CORPUS_DIR)")] = None,
    index_dir: Annotated[Optional[Path], typer.Option(help="색인 폴더 (BOOKQA_INDEX_DIR)")] = None,
    model: Annotated[Optional[str], typer.Option(help="sentence-transformers 모델 id 또는 경로 (BOOKQA_MODEL)")] = None,
    chunk_tokens: Annotated[Optional[int], typer.Option(help="청크 토큰 예산 (BOOKQA_CHUNK_TOKENS)")] = None,
) -> None:
    """Settings come from BOOKQA_* variables; these flags override them."""
    overrides = {
        key: value
        for key, value in {
            "corpus_dir": corpus_dir,
            "index_dir": index_dir,
            "model": model,
            "chunk_tokens": chunk_tokens,
        }.items()
        if value is not None
    }
    try:
        ctx.obj = Settings(**overrides)
    except ValidationError as error:
        errors.print(f"[red]설정 오류:[/red] {escape(str(error))}")
        raise typer.Exit(EXIT_BAD_INPUT) from error


def _load_or_exit(load: Callable[[Settings], T], settings: Settings) -> T:
    """Load the engine or service, exiting with EXIT_UNUSABLE and the reason if it cannot be."""
    try:
        return load(settings)
    except (IndexLoadError, EmbedderError, CorpusError) as error:
        raise _fail(error, EXIT_UNUSABLE) from error


def _fail(error: Exception, code: int) -> typer.Exit:
    errors.print(f"[red]오류:[/red] {escape(str(error))}")
    return typer.Exit(code)


@app.command()
def index(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="바뀐 것이 없어도 다시 만듭니다")] = False,
) -> None:
    """Build the index (only when the corpus, model or settings changed)."""
    settings: Settings = ctx.obj
    try:
        result = ensure_index(settings, force=force, show_progress=True)
    except (IndexLoadError, EmbedderError, CorpusError) as error:
        raise _fail(error, EXIT_UNUSABLE) from error
    manifest = result.manifest
    if result.status == "up-to-date":
        console.print(f"색인이 최신입니다: {result.path} (청크 {manifest.n_chunks}개, 모델 {manifest.model.name})")
    else:
        console.print(
            f"색인을 만들었습니다: {result.path} (청크 {manifest.n_chunks}개, 모델 {manifest.model.name}, "
            f"{manifest.build_seconds:.1f}초) — 이유: {escape(result.reason)}"
        )


@app.command()
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="질문")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="돌려줄 구절 수")] = 5,
    mode: Annotated[SearchMode, typer.Option(help="hybrid, dense 또는 bm25")] = "hybrid",
    as_json: Annotated[bool, typer.Option("--json", help="JSON으로 출력")] = False,
) -> None:
    """Search the book and print the best passages with their headings."""
    engine = _load_or_exit(SearchEngine.load, ctx.obj)
    try:
        passages = engine.search(query, top_k=top_k, mode=mode)
    except QueryError as error:
        raise _fail(error, EXIT_BAD_INPUT) from error
    if as_json:
        typer.echo(json.dumps({"passages": [asdict(p) for p in passages]}, ensure_ascii=False, indent=2))
        return
    if not passages:
        console.print("찾은 구절이 없습니다.")
    for rank, passage in enumerate(passages, start=1):
        heading = passage.section or "(제목 없음)"
        console.print(
            f"[bold]{rank}. {escape(heading)}[/bold]  [dim]{passage.chunk_id} "
            f"[{passage.start}:{passage.end}] score={passage.score:.4f}[/dim]"
        )
        console.print(escape(passage.text), soft_wrap=True)
        console.print()


@app.command()
def ask(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="질문")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="근거로 쓸 구절 수")] = 5,
    mode: Annotated[SearchMode, typer.Option(help="hybrid, dense 또는 bm25")] = "hybrid",
    as_json: Annotated[bool, typer.Option("--json", help="/v1/ask와 같은 JSON으로 출력")] = False,
) -> None:
    """Answer a question from the book with citations (the same answer as POST /v1/ask)."""
    from service.api import ask_response
    from service.qa import QAService

    qa = _load_or_exit(QAService.load, ctx.obj)
    try:
        result = qa.ask(question, top_k=top_k, mode=mode)
    except QueryError as error:
        raise _fail(error, EXIT_BAD_INPUT) from error
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


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="주소")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="포트")] = 8000,
) -> None:
    """Start the chat (at /ui) and the HTTP API (under /v1, docs at /docs); builds the index first if needed."""
    import uvicorn

    from service.api import create_app

    settings: Settings = ctx.obj
    try:
        result = ensure_index(settings, show_progress=True)
    except (IndexLoadError, EmbedderError, CorpusError) as error:
        raise _fail(error, EXIT_UNUSABLE) from error
    if result.status == "built":
        console.print(f"색인을 만들었습니다: {result.path}")
    console.print(f"bookqa 채팅: http://{host}:{port}/ui/  (API: /v1, 문서: http://{host}:{port}/docs)")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@app.command("eval")
def evaluate_gold(
    ctx: typer.Context,
    gold: Annotated[Path, typer.Option("--gold", help="골드 질문 파일 (JSONL)")],
    out: Annotated[Path, typer.Option("--out", help="결과 폴더 (run.jsonl, metrics.json, report.md, report.png)")],
    modes: Annotated[str, typer.Option("--modes", help="쉼표로 구분한 검색 방식")] = "hybrid,dense,bm25",
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="검색 지표에 쓸 구절 수 (10 이상)")] = 10,
) -> None:
    """Evaluate retrieval and answers on a gold question file, for every mode; writes a report and a chart."""
    from eval.evaluate import evaluate
    from eval.gold import GoldFileError, load_gold
    from eval.report import RETRIEVAL_COLUMNS
    from indexer.engine import MAX_TOP_K
    from indexer.settings import SEARCH_MODES
    from service.qa import QAService

    chosen = list(dict.fromkeys(m.strip() for m in modes.split(",") if m.strip()))
    unknown = [m for m in chosen if m not in SEARCH_MODES]
    if not chosen or unknown:
        raise _fail(
            ValueError(f"알 수 없는 검색 방식입니다: {', '.join(unknown) or modes!r} (가능: {', '.join(SEARCH_MODES)})"),
            EXIT_BAD_INPUT,
        )
    if not 10 <= top_k <= MAX_TOP_K:
        raise _fail(ValueError(f"--top-k는 10에서 {MAX_TOP_K} 사이여야 합니다: {top_k}"), EXIT_BAD_INPUT)
    try:
        questions = load_gold(gold)
    except GoldFileError as error:
        raise _fail(error, EXIT_BAD_INPUT) from error
    qa = _load_or_exit(QAService.load, ctx.obj)
    try:
        result = evaluate(qa, questions, gold, out, chosen, top_k=top_k)
    except OSError as error:
        raise _fail(ValueError(f"결과를 쓸 수 없습니다: {error}"), EXIT_UNUSABLE) from error
    for m in result.metrics:
        figures = "  ".join(
            f"{title} {'n/a' if getattr(m, name) is None else format(getattr(m, name), '.3f')}"
            for name, title in RETRIEVAL_COLUMNS
        )
        if m.answer_containment is not None:
            figures += f"  containment {m.answer_containment:.3f}  p50 {m.latency_p50_ms:.0f} ms"
        console.print(f"[bold]{m.mode}[/bold]  {figures}", soft_wrap=True)
    console.print(f"질문 {len(questions)}개, {result.elapsed_seconds:.0f}초. 결과: {out}/report.md")


if __name__ == "__main__":
    app()
