"""One evaluation end to end: gold file in, run.jsonl, metrics.json, report.md and report.png out.

The CLI's `bookqa eval` is a thin wrapper around `evaluate`, which tests can also call directly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from eval.gold import GoldQuestion
from eval.report import ReportContext, read_baseline, write_metrics_json, write_report_md, write_report_png
from eval.runner import ANSWER_TOP_K, run_all, write_runs
from eval.scoring import ModeMetrics, grouped_metrics, score_runs, unfindable_questions
from indexer.settings import SearchMode
from service.qa import QAService

RUN_FILE, METRICS_FILE, REPORT_MD, REPORT_PNG = "run.jsonl", "metrics.json", "report.md", "report.png"
# An earlier metrics.json in the output folder under this name is shown as "before" beside the new figures.
BASELINE_FILE = "baseline.json"
# Answers are broken down by split, kind, language and style in the mode `/v1/ask` uses by default.
BREAKDOWN_MODE = "hybrid"


@dataclass(frozen=True)
class EvaluationResult:
    """The figures of every mode and where they were written."""

    metrics: list[ModeMetrics]
    out_dir: Path
    elapsed_seconds: float
    unfindable_question_ids: list[str]


def index_summary(qa: QAService) -> dict[str, object]:
    """Model and index settings from the loaded index's manifest (and the fusion settings), for the report."""
    manifest = qa.engine.manifest
    settings = qa.engine.settings
    return {
        "model": manifest.model.name,
        "embedding_dim": manifest.model.dim,
        "chunk_tokens": manifest.chunking.chunk_tokens,
        "overlap_sentences": manifest.chunking.overlap_sentences,
        "chunker_version": manifest.chunking.chunker_version,
        "analyzer_version": manifest.chunking.analyzer_version,
        "n_chunks": manifest.n_chunks,
        "index_created_at": manifest.created_at,
        "corpus": sorted(manifest.corpus),
        "fusion": settings.fusion,
        "dense_weight": settings.dense_weight,
        "answer_mode": "generative" if qa.llm is not None else "extractive",
        "libraries": manifest.libraries,
    }


def evaluate(
    qa: QAService,
    gold: Sequence[GoldQuestion],
    gold_path: Path,
    out_dir: Path,
    modes: Sequence[SearchMode],
    top_k: int = 10,
    show_progress: bool = True,
    baseline: Path | None = None,
) -> EvaluationResult:
    """Run the gold questions through `qa` in every mode, score them and write the four output files.

    The caller loads and validates the gold file (so a bad one fails before the model loads); `gold_path` is recorded.
    `baseline` is an earlier metrics.json to compare with (default: `baseline.json` in `out_dir` when there is one).
    """
    baseline = baseline or (out_dir / BASELINE_FILE if (out_dir / BASELINE_FILE).is_file() else None)
    before = read_baseline(baseline) if baseline else {}
    started = time.perf_counter()
    runs = run_all(qa, gold, modes, top_k, show_progress=show_progress)
    chunks = list(qa.engine.chunks())
    metrics = score_runs(runs, gold, chunks, qa.engine.analyzer.content_morphemes)
    elapsed = round(time.perf_counter() - started, 1)
    unfindable = unfindable_questions(gold, chunks)
    context = ReportContext(
        gold_path=str(gold_path),
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        top_k=top_k,
        answer_top_k=ANSWER_TOP_K,
        elapsed_seconds=elapsed,
        index=index_summary(qa),
        unfindable_question_ids=unfindable,
        groups_mode=BREAKDOWN_MODE if BREAKDOWN_MODE in modes else None,
        groups=grouped_metrics(runs, gold, BREAKDOWN_MODE) if BREAKDOWN_MODE in modes else {},
        baseline=before,
        baseline_label=_baseline_label(baseline) if baseline else "",
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_runs(out_dir / RUN_FILE, runs)
    write_metrics_json(out_dir / METRICS_FILE, metrics, context)
    write_report_md(out_dir / REPORT_MD, metrics, context)
    write_report_png(out_dir / REPORT_PNG, metrics, context)
    return EvaluationResult(metrics, out_dir, elapsed, unfindable)


def _baseline_label(path: Path) -> str:
    """Where the "before" figures come from, as the report names them."""
    import json

    payload = json.loads(path.read_text(encoding="utf-8"))
    return payload.get("label") or f"`{path}` ({payload.get('created_at', 'undated')})"
