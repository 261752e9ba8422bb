"""The evaluator's commands of the `bookqa` command line: `eval`, and the `bench` group (`bench scale`).

It reaches `bookqa` through the `bookqa.commands` entry points in pyproject.toml, so the CLI
root needs no import of this package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from indexer.commands import EXIT_BAD_INPUT, EXIT_UNUSABLE, console, fail, load_or_exit

if TYPE_CHECKING:
    from eval.gold import GoldQuestion
    from indexer.engine import SearchEngine
    from indexer.settings import Settings


def gold_or_exit(path: Path) -> list[GoldQuestion]:
    """The gold file's questions, or exit 2 with the file's problem in Korean."""
    from eval.gold import GoldFileError, load_gold

    try:
        return load_gold(path)
    except GoldFileError as error:
        raise fail(error, EXIT_BAD_INPUT) from error


def faiss_engine_or_exit(settings: Settings) -> tuple[Settings, SearchEngine]:
    """The book's FAISS index, built if needed, and its engine (the benches compare other stores against it)."""
    from indexer.engine import SearchEngine, ensure_index

    settings = settings.model_copy(update={"store": "faiss"})
    load_or_exit(ensure_index, settings)
    return settings, load_or_exit(SearchEngine.load, settings)


def evaluate_gold(
    ctx: typer.Context,
    gold: Annotated[Path, typer.Option("--gold", help="골드 질문 파일 (JSONL)")],
    out: Annotated[Path, typer.Option("--out", help="결과 폴더 (run.jsonl, metrics.json, report.md, report.png)")],
    modes: Annotated[str, typer.Option("--modes", help="쉼표로 구분한 검색 방식")] = "hybrid,dense,bm25",
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="검색 지표에 쓸 구절 수 (10 이상)")] = 10,
    baseline: Annotated[
        Path | None,
        typer.Option("--baseline", help="비교할 이전 metrics.json (기본: 결과 폴더의 baseline.json이 있으면 그것)"),
    ] = None,
) -> None:
    """Evaluate retrieval and answers on a gold question file, for every mode; writes a report and a chart."""
    from eval.evaluate import BASELINE_FILE, evaluate
    from eval.report import RETRIEVAL_COLUMNS, read_baseline
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
    questions = gold_or_exit(gold)
    if baseline is None and (out / BASELINE_FILE).is_file():
        baseline = out / BASELINE_FILE
    if baseline is not None:
        try:
            read_baseline(baseline)
        except ValueError as error:
            raise fail(error, EXIT_BAD_INPUT) from error
    qa = load_or_exit(QAService.load, ctx.obj)
    try:
        result = evaluate(qa, questions, gold, out, chosen, top_k=top_k, baseline=baseline)
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


# `bookqa bench`: the service as users meet it; its subcommands measure one thing each.
bench = typer.Typer(
    help="성능 측정: 서비스 전체(기본), 임베딩 백엔드 비교(backends), 합성 서가의 검색 규모(scale), FAISS와 Milvus(stores).",
    no_args_is_help=False,
    add_completion=False,
)


@bench.callback(invoke_without_command=True)
def bench_service(
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
    from indexer.engine import ensure_index

    settings = ctx.obj
    questions = gold_or_exit(gold)
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


@bench.command("backends")
def bench_backends(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="결과 폴더 (backends.json, backends.md)")] = Path("eval/results"),
    gold: Annotated[Path, typer.Option("--gold", help="골드 파일")] = Path("eval/gold/qa.jsonl"),
) -> None:
    """Compare the embedder's backends (torch, OpenVINO, ONNX Runtime; fp32 and int8) on this machine."""
    from eval.backends import compare_backends, write_backends
    from indexer.engine import SearchEngine

    questions = gold_or_exit(gold)
    engine = load_or_exit(SearchEngine.load, ctx.obj)
    chunks = list(engine.chunks())
    del engine
    results = compare_backends(ctx.obj, questions, chunks)
    path = write_backends(out, results)
    console.print(path.read_text(encoding="utf-8"), soft_wrap=True)


def parse_sizes(text: str) -> list[int]:
    """`10k,100k,1M` or `10000,100000` → chunk counts (BadParameter on anything else)."""
    sizes = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        factor = {"k": 1_000, "m": 1_000_000}.get(part[-1], 1)
        number = part[:-1] if factor > 1 else part
        if not number.isdigit() or int(number) * factor < 1:
            raise typer.BadParameter(f"청크 수가 아닙니다: {part!r} (예: 10k,100k,1M)")
        sizes.append(int(number) * factor)
    if not sizes:
        raise typer.BadParameter("청크 수를 하나 이상 주세요 (예: 10k,100k,1M)")
    return sizes


@bench.command("scale")
def bench_scale(
    ctx: typer.Context,
    chunks: Annotated[str, typer.Option("--chunks", help="합성 서가의 청크 수, 쉼표로 (예: 10k,100k,1M)")] = "10k,100k,1M",
    gold: Annotated[Path, typer.Option("--gold", help="질문으로 쓸 골드 파일")] = Path("eval/gold/qa.jsonl"),
    work_dir: Annotated[Path, typer.Option("--work-dir", help="합성 색인을 만들 폴더")] = Path(".bookqa/bench-scale"),
    embed_max: Annotated[int, typer.Option("--embed-max", help="이 크기까지는 청크 벡터를 실제 모델로 만듭니다")] = 10_000,
    approximate: Annotated[str, typer.Option("--approximate", help="근사 색인: ivf (기본) 또는 hnsw")] = "ivf",
    max_minutes: Annotated[float, typer.Option("--max-minutes", help="전체 시간 한도(분); 넘으면 남은 크기는 건너뜁니다")] = 90.0,
    keep: Annotated[bool, typer.Option("--keep", help="합성 색인을 지우지 않습니다")] = False,
) -> None:
    """Build synthetic libraries of N chunks and print one JSON line per size: build time, size, memory, latency, recall."""
    import json
    import time

    from eval.bench_scale import run_scale

    sizes = parse_sizes(chunks)
    if approximate not in ("hnsw", "ivf"):
        raise fail(ValueError(f"--approximate는 hnsw 또는 ivf입니다: {approximate}"), EXIT_BAD_INPUT)
    questions = [q.question for q in gold_or_exit(gold)]
    settings, engine = faiss_engine_or_exit(ctx.obj)
    deadline = time.monotonic() + max_minutes * 60
    for figures in run_scale(
        engine, sizes, work_dir, questions, embed_max, approximate, settings.exact_max_chunks, keep, deadline
    ):
        typer.echo(json.dumps(figures, ensure_ascii=False))


@bench.command("stores")
def bench_stores(
    ctx: typer.Context,
    gold: Annotated[Path, typer.Option("--gold", help="골드 질문 파일")] = Path("eval/gold/qa.jsonl"),
) -> None:
    """The gold set's retrieval through the FAISS store and through Milvus Lite: one JSON line per variant."""
    import json

    from eval.bench_stores import compare_stores

    questions = gold_or_exit(gold)
    settings, engine = faiss_engine_or_exit(ctx.obj)
    for figures in compare_stores(settings, engine, questions):
        typer.echo(json.dumps(figures, ensure_ascii=False))


def fit_abstention(
    ctx: typer.Context,
    gold: Annotated[
        Optional[list[Path]],
        typer.Option("--gold", help="골드 질문 파일 (JSONL, 여러 번 줄 수 있음); dev 부분으로만 학습합니다"),
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="모델 파일 (기본: service/abstention_model.json)")] = None,
    ablation: Annotated[
        Optional[Path], typer.Option("--ablation", help="신호 그룹별 제거 실험 결과(test 부분)를 쓸 Markdown 파일")
    ] = None,
) -> None:
    """Refit the abstention model on the gold set's dev part (and optionally write the signal ablation).

    By default it learns from the dev part of `eval/gold/qa.jsonl` and from `eval/gold/train.jsonl`, which is
    dev only; the ablation reads the test part."""
    from eval.fit_abstention import FIT_GOLD_FILES
    from eval.fit_abstention import ablation as run_ablation
    from eval.fit_abstention import ablation_markdown, fit_on_gold, write_model
    from service.abstention import MODEL_PATH
    from service.qa import QAService

    paths = list(gold or FIT_GOLD_FILES)
    questions = [q for path in paths for q in gold_or_exit(path)]
    qa = load_or_exit(QAService.load, ctx.obj)
    model = fit_on_gold(qa, questions, paths)
    target = out or MODEL_PATH
    try:
        write_model(target, model)
        if ablation is not None:
            ablation.write_text(ablation_markdown(run_ablation(qa, questions)), encoding="utf-8")
    except OSError as error:
        raise fail(ValueError(f"결과를 쓸 수 없습니다: {error}"), EXIT_UNUSABLE) from error
    console.print(
        f"답변 판단 모델: dev 질문 {model.fitted_on['questions']}개로 학습, 문턱값 {model.threshold:.2f} → {target}"
    )
    if ablation is not None:
        console.print(f"신호 제거 실험: {ablation}")
