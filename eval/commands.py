"""The evaluator's command of the `bookqa` command line: `eval`.

It reaches `bookqa` through the `bookqa.commands` entry points in pyproject.toml, so the CLI
root needs no import of this package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from indexer.commands import EXIT_BAD_INPUT, EXIT_UNUSABLE, console, fail, load_or_exit


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
        raise fail(
            ValueError(f"알 수 없는 검색 방식입니다: {', '.join(unknown) or modes!r} (가능: {', '.join(SEARCH_MODES)})"),
            EXIT_BAD_INPUT,
        )
    if not 10 <= top_k <= MAX_TOP_K:
        raise fail(ValueError(f"--top-k는 10에서 {MAX_TOP_K} 사이여야 합니다: {top_k}"), EXIT_BAD_INPUT)
    try:
        questions = load_gold(gold)
    except GoldFileError as error:
        raise fail(error, EXIT_BAD_INPUT) from error
    qa = load_or_exit(QAService.load, ctx.obj)
    try:
        result = evaluate(qa, questions, gold, out, chosen, top_k=top_k)
    except OSError as error:
        raise fail(ValueError(f"결과를 쓸 수 없습니다: {error}"), EXIT_UNUSABLE) from error
    for m in result.metrics:
        figures = "  ".join(
            f"{title} {'n/a' if getattr(m, name) is None else format(getattr(m, name), '.3f')}"
            for name, title in RETRIEVAL_COLUMNS
        )
        if m.answer_containment is not None:
            figures += f"  containment {m.answer_containment:.3f}  p50 {m.latency_p50_ms:.0f} ms"
        console.print(f"[bold]{escape(m.mode)}[/bold]  {figures}", soft_wrap=True)
    console.print(f"질문 {len(questions)}개, {result.elapsed_seconds:.0f}초. 결과: {out}/report.md")


bench_app = typer.Typer(
    help="성능 측정: 서비스 전체(기본), 임베딩 백엔드 비교(backends).", no_args_is_help=False, add_completion=False
)


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="결과 폴더 (bench.json, bench.md, bench.png)")] = Path("eval/results"),
    gold: Annotated[Path, typer.Option("--gold", help="질문을 만들 골드 파일")] = Path("eval/gold/qa.jsonl"),
    questions_per_phase: Annotated[int, typer.Option("--questions", help="지연 시간을 잴 질문 수 (단계마다)")] = 200,
    rss_requests: Annotated[int, typer.Option("--rss-requests", help="메모리를 볼 요청 수")] = 10_000,
    load_seconds: Annotated[float, typer.Option("--load-seconds", help="동시 요청 측정 한 번의 최대 시간")] = 60.0,
    chat_users: Annotated[int, typer.Option("--chat-users", help="동시에 묻는 채팅 사용자 수")] = 16,
    serve_command: Annotated[Optional[str], typer.Option("--serve-command", help="다른 서버 명령과 비교할 때 (기본: 이 bookqa serve)")] = None,
) -> None:
    """Measure the service as users meet it: every figure against plain float32 sentence-transformers embedding."""
    if ctx.invoked_subcommand is not None:
        return
    from eval.bench import BenchConfig, run_bench, write_results
    from eval.gold import GoldFileError, load_gold
    from indexer.engine import ensure_index

    settings = ctx.obj
    try:
        questions = load_gold(gold)
    except GoldFileError as error:
        raise fail(error, EXIT_BAD_INPUT) from error
    load_or_exit(ensure_index, settings)
    config = BenchConfig(
        encode_questions=questions_per_phase,
        ask_questions=questions_per_phase,
        http_questions=questions_per_phase,
        rss_requests=rss_requests,
        load_seconds=load_seconds,
        chat_users=chat_users,
        serve_command=serve_command,
    )
    result = run_bench(settings, questions, config, log=lambda message: console.print(f"[dim]{escape(message)}[/dim]"))
    result.setup = {
        "backend": f"{settings.backend}/{settings.precision}",
        "model": settings.model,
        "cpus": os.cpu_count(),
        "gold": str(gold),
    }
    paths = write_results(out, result)
    console.print(paths[1].read_text(encoding="utf-8"), soft_wrap=True)
    console.print(f"결과: {', '.join(str(p) for p in paths)}")


@bench_app.command("backends")
def bench_backends(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="결과 폴더 (backends.json, backends.md)")] = Path("eval/results"),
    gold: Annotated[Path, typer.Option("--gold", help="골드 파일")] = Path("eval/gold/qa.jsonl"),
) -> None:
    """Compare the embedder's backends (torch, OpenVINO, ONNX Runtime; fp32 and int8) on this machine."""
    from eval.backends import compare_backends, write_backends
    from eval.gold import GoldFileError, load_gold
    from indexer.engine import SearchEngine

    try:
        questions = load_gold(gold)
    except GoldFileError as error:
        raise fail(error, EXIT_BAD_INPUT) from error
    engine = load_or_exit(SearchEngine.load, ctx.obj)
    chunks = list(engine.chunks())
    del engine
    results = compare_backends(ctx.obj, questions, chunks)
    path = write_backends(out, results)
    console.print(path.read_text(encoding="utf-8"), soft_wrap=True)
