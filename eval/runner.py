"""Run the gold questions through the service's own code path, once per mode, and record everything.

The answer comes from `QAService.ask` with the API's default top_k, so the evaluation measures what users get.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from eval.gold import GoldQuestion
from eval.reference import REFERENCE_MODE, WhitespaceBM25
from indexer.retrieval import Passage
from indexer.settings import SearchMode
from service.qa import QAService

# The API's default top_k: the answer is built from this many passages, as for a user.
ANSWER_TOP_K = 5


@dataclass(frozen=True)
class RankedPassage:
    """One retrieved passage as recorded in run.jsonl; `text` is exactly `document[start:end]`."""

    chunk_id: str
    doc: str
    start: int
    end: int
    text: str
    score: float

    @classmethod
    def from_passage(cls, passage: Passage) -> RankedPassage:
        return cls(passage.chunk_id, passage.doc, passage.start, passage.end, passage.text, passage.score)


@dataclass
class QuestionRun:
    """One question in one mode: the ranked passages and, for the service's modes, the answer and its latency.

    The reference mode has no answer: `answer`, `abstained` and `latency_ms` are None there.
    """

    id: str
    mode: str
    question: str
    passages: list[RankedPassage]
    answer: str | None = None
    abstained: bool | None = None
    citations: list[dict[str, object]] = field(default_factory=list)
    latency_ms: float | None = None
    # What the service read the question as asking for (service.question), for reading failures by kind.
    answer_type: str | None = None


def run_question(qa: QAService, question: GoldQuestion, mode: SearchMode, top_k: int) -> QuestionRun:
    """Ask one question as the API does (timed), then fetch the deeper ranking for retrieval metrics.

    The query-vector cache is emptied first so every timed call pays for embedding, like a new user question.
    """
    qa.engine.clear_caches()
    started = time.perf_counter()
    result = qa.ask(question.question, top_k=ANSWER_TOP_K, mode=mode)
    latency_ms = (time.perf_counter() - started) * 1000
    ranked = qa.engine.search(question.question, top_k=top_k, mode=mode)
    return QuestionRun(
        id=question.id,
        mode=mode,
        question=question.question,
        passages=[RankedPassage.from_passage(p) for p in ranked],
        answer=result.answer,
        abstained=result.abstained,
        citations=[asdict(citation) for citation in result.citations],
        latency_ms=round(latency_ms, 3),
        answer_type=result.answer_type,
    )


def run_reference(reference: WhitespaceBM25, question: GoldQuestion, top_k: int) -> QuestionRun:
    """The whitespace-BM25 ranking of one question (retrieval only, no answer)."""
    passages = reference.search(question.question, top_k)
    return QuestionRun(
        id=question.id,
        mode=REFERENCE_MODE,
        question=question.question,
        passages=[RankedPassage.from_passage(p) for p in passages],
    )


def run_all(
    qa: QAService,
    gold: Sequence[GoldQuestion],
    modes: Sequence[SearchMode],
    top_k: int,
    show_progress: bool = True,
) -> list[QuestionRun]:
    """Every gold question in every mode, then in the whitespace-BM25 reference, with a progress bar.

    Modes alternate per question (after one untimed warm-up ask each), so a slow spell of the machine
    does not land on one mode's latency. The reference indexes the loaded index's own chunks.
    """
    for mode in modes:
        if gold:
            qa.ask(gold[0].question, top_k=ANSWER_TOP_K, mode=mode)  # first calls pay one-off setup costs
    service_runs: dict[str, list[QuestionRun]] = {mode: [] for mode in modes}
    reference_runs: list[QuestionRun] = []
    reference = WhitespaceBM25(list(qa.engine.chunks()))
    with tqdm(total=len(gold), file=sys.stderr, disable=not show_progress, unit="q", desc="eval") as bar:
        for question in gold:
            for mode in modes:
                service_runs[mode].append(run_question(qa, question, mode, top_k))
            reference_runs.append(run_reference(reference, question, top_k))
            bar.update()
    return [run for mode in modes for run in service_runs[mode]] + reference_runs


def write_runs(path: Path, runs: Sequence[QuestionRun]) -> None:
    """run.jsonl: one JSON object per question and mode, for reading single failures after the fact."""
    with path.open("w", encoding="utf-8") as out:
        for run in runs:
            out.write(json.dumps(asdict(run), ensure_ascii=False) + "\n")
