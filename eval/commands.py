"""The evaluator's command of the `bookqa` command line: `eval`.

It reaches `bookqa` through the `bookqa.commands` entry points in pyproject.toml, so the CLI
root needs no import of this package.
"""

from __future__ import annotations

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
    baseline: Annotated[
        Path | None,
        typer.Option("--baseline", help="비교할 이전 metrics.json (기본: 결과 폴더의 baseline.json이 있으면 그것)"),
    ] = None,
) -> None:
    """Evaluate retrieval and answers on a gold question file, for every mode; writes a report and a chart."""
    from eval.evaluate import BASELINE_FILE, evaluate
    from eval.gold import GoldFileError, load_gold
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
    try:
        questions = load_gold(gold)
    except GoldFileError as error:
        raise fail(error, EXIT_BAD_INPUT) from error
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


def fit_abstention(
    ctx: typer.Context,
    gold: Annotated[Path, typer.Option("--gold", help="골드 질문 파일 (JSONL); dev 부분으로만 학습합니다")] = Path(
        "eval/gold/qa.jsonl"
    ),
    out: Annotated[Optional[Path], typer.Option("--out", help="모델 파일 (기본: service/abstention_model.json)")] = None,
    ablation: Annotated[
        Optional[Path], typer.Option("--ablation", help="신호 그룹별 제거 실험 결과(test 부분)를 쓸 Markdown 파일")
    ] = None,
) -> None:
    """Refit the abstention model on the gold set's dev part (and optionally write the signal ablation)."""
    from eval.fit_abstention import ablation as run_ablation
    from eval.fit_abstention import ablation_markdown, fit_on_gold, write_model
    from eval.gold import GoldFileError, load_gold
    from service.abstention import MODEL_PATH
    from service.qa import QAService

    try:
        questions = load_gold(gold)
    except GoldFileError as error:
        raise fail(error, EXIT_BAD_INPUT) from error
    qa = load_or_exit(QAService.load, ctx.obj)
    model = fit_on_gold(qa, questions, gold)
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
