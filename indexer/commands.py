"""The indexer's commands of the `bookqa` command line (`index`, `search`) and what every command shares.

The `bookqa` app itself is put together in `ui/cli.py`; each layer contributes its own commands,
so this module knows nothing of the layers above it.
"""

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

from indexer.corpus import CorpusError, scan_corpus
from indexer.embedding import EmbedderError
from indexer.engine import QueryError, SearchEngine, ensure_index
from indexer.manifest import IndexLoadError
from indexer.settings import SearchMode, Settings

console = Console()
errors = Console(stderr=True)

# Exit codes: 1 for the index or model being unusable, 2 for a bad request (as typer does for usage).
EXIT_UNUSABLE, EXIT_BAD_INPUT = 1, 2
T = TypeVar("T")


def settings_callback(
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


def load_or_exit(load: Callable[[Settings], T], settings: Settings) -> T:
    """Load the engine or service, exiting with EXIT_UNUSABLE and the reason if it cannot be."""
    try:
        return load(settings)
    except (IndexLoadError, EmbedderError, CorpusError) as error:
        raise fail(error, EXIT_UNUSABLE) from error


def fail(error: Exception, code: int) -> typer.Exit:
    errors.print(f"[red]오류:[/red] {escape(str(error))}")
    return typer.Exit(code)


def index(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="바뀐 것이 없어도 다시 만듭니다")] = False,
) -> None:
    """Build the index (only when the corpus, model or settings changed)."""
    settings: Settings = ctx.obj
    try:
        result = ensure_index(settings, force=force, show_progress=True)
    except (IndexLoadError, EmbedderError, CorpusError) as error:
        raise fail(error, EXIT_UNUSABLE) from error
    manifest = result.manifest
    report_skipped(settings)
    if result.status == "up-to-date":
        console.print(f"색인이 최신입니다: {result.path} (청크 {manifest.n_chunks}개, 모델 {manifest.model.name})")
        return
    console.print(
        f"색인을 만들었습니다: {escape(result.path)} (문서 {len(manifest.documents)}개, 청크 {manifest.n_chunks}개, "
        f"모델 {manifest.model.name}, 검색 구조 {manifest.store.kind}/{manifest.store.dense_index}, "
        f"{manifest.build_seconds:.1f}초) — 이유: {escape(result.reason)}"
    )
    console.print(
        f"문서: 추가 {len(result.added)}, 변경 {len(result.changed)}, 삭제 {len(result.removed)}, "
        f"재사용 {len(result.reused)} (새로 임베딩한 청크 {result.embedded_chunks}개)"
    )
    for label, names in (("추가", result.added), ("변경", result.changed), ("삭제", result.removed)):
        if names:
            console.print(f"  {label}: {escape(', '.join(names[:20]))}{' …' if len(names) > 20 else ''}")


def report_skipped(settings: Settings) -> None:
    """Name every corpus file left out of the index, and why (extraction results are cached, so this is cheap)."""
    try:
        _, skipped = scan_corpus(settings.corpus_dir)
    except CorpusError:
        return
    for file in skipped:
        errors.print(f"[yellow]건너뛴 파일:[/yellow] {escape(file.reason)}")


def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="질문")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="돌려줄 구절 수")] = 5,
    mode: Annotated[SearchMode, typer.Option(help="hybrid, dense 또는 bm25")] = "hybrid",
    doc: Annotated[Optional[list[str]], typer.Option("--doc", help="이 문서에서만 찾습니다 (여러 번 쓸 수 있음)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON으로 출력")] = False,
) -> None:
    """Search the library and print the best passages with their headings (`--doc` limits it to documents)."""
    engine = load_or_exit(SearchEngine.load, ctx.obj)
    try:
        passages = engine.search(query, top_k=top_k, mode=mode, docs=doc or None)
    except QueryError as error:
        raise fail(error, EXIT_BAD_INPUT) from error
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
