"""Reader feedback: recent answers remembered by id, 👍/👎 with an optional comment, stored in SQLite.

Every answer the API or the chat gives is remembered with an `answer_id` so feedback can name it:
at most `feedback_keep_answers` answers (10,000) for at most `feedback_answer_days` days (7);
older ones are pruned. A feedback row copies the question, answer, citations, mode and index
version, so it outlives the answer it rates. SQLite in WAL mode with a busy timeout lets several
threads and processes write at once without losing a row.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from indexer.settings import SearchMode
from service.qa import AskResult, QAService, Turn

log = logging.getLogger(__name__)

Rating = Literal["up", "down"]
# Pruning runs once per this many remembered answers (per process), keeping the table near its bound.
PRUNE_EVERY = 100
BUSY_TIMEOUT_SECONDS = 30.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    answer_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    channel TEXT NOT NULL,
    question TEXT NOT NULL,
    history TEXT NOT NULL,
    answer TEXT NOT NULL,
    abstained INTEGER NOT NULL,
    answer_mode TEXT NOT NULL,
    citations TEXT NOT NULL,
    index_version TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_created ON answers (created_at);
CREATE TABLE IF NOT EXISTS feedback (
    feedback_id INTEGER PRIMARY KEY AUTOINCREMENT,
    answer_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    channel TEXT NOT NULL,
    rating TEXT NOT NULL CHECK (rating IN ('up', 'down')),
    comment TEXT,
    question TEXT NOT NULL,
    history TEXT NOT NULL,
    answer TEXT NOT NULL,
    abstained INTEGER NOT NULL,
    answer_mode TEXT NOT NULL,
    citations TEXT NOT NULL,
    index_version TEXT NOT NULL,
    answered_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_answer ON feedback (answer_id, feedback_id);
"""


class UnknownAnswerError(LookupError):
    """Feedback names an answer this service never gave, or one pruned since."""


@dataclass(frozen=True)
class FeedbackReceipt:
    feedback_id: int
    answer_id: str
    rating: Rating


@dataclass(frozen=True)
class FeedbackRecord:
    """One rated answer, as its latest rating left it, with every comment given on it."""

    answer_id: str
    rating: Rating
    comments: tuple[str, ...]
    question: str
    history: list[dict[str, str]]
    answer: str
    abstained: bool
    answer_mode: str
    citations: list[dict[str, Any]]
    index_version: str
    answered_at: float
    rated_at: float


class FeedbackStore:
    """The answers and feedback database (SQLite, WAL); safe to share between threads and processes."""

    def __init__(self, path: Path, keep_answers: int = 10_000, answer_days: float = 7.0) -> None:
        self.path = path
        self.keep_answers = keep_answers
        self.answer_seconds = answer_days * 86_400
        self._remembered = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)

    @contextmanager
    def _connect(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        # A connection per thread, kept open: none is shared between threads, and closing the last
        # connection of a WAL database checkpoints it with an fsync, which cost ~20 ms per answer
        # when each write opened its own. Each write is one transaction that waits (busy timeout)
        # rather than fails while another thread or process writes.
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
            self._local.connection = connection
            self._local.durable = None
        if self._local.durable != durable:  # a PRAGMA per write was ~3 % of a busy server's time
            connection.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._local.durable = durable
        yield connection

    def remember(
        self, question: str, history: Sequence[Turn], result: AskResult, index_version: str, channel: str
    ) -> str:
        """Keep an answer so feedback can name it; returns its new `answer_id`."""
        answer_id = uuid.uuid4().hex
        row = (
            answer_id,
            time.time(),
            channel,
            question,
            json.dumps([{"role": t.role, "content": t.content} for t in history], ensure_ascii=False),
            result.answer,
            int(result.abstained),
            result.answer_mode,
            json.dumps([asdict(c) for c in result.citations], ensure_ascii=False),
            index_version,
        )
        with self._connect() as connection:
            connection.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        with self._lock:
            self._remembered += 1
            due = self._remembered % PRUNE_EVERY == 0
        if due:
            self.prune()
        return answer_id

    def prune(self) -> int:
        """Forget answers past their age or beyond the newest `keep_answers`; returns how many went."""
        cutoff = time.time() - self.answer_seconds
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            removed = connection.execute("DELETE FROM answers WHERE created_at < ?", (cutoff,)).rowcount
            removed += connection.execute(
                "DELETE FROM answers WHERE answer_id IN "
                "(SELECT answer_id FROM answers ORDER BY created_at DESC LIMIT -1 OFFSET ?)",
                (self.keep_answers,),
            ).rowcount
            connection.execute("COMMIT")
        return removed

    def add_feedback(self, answer_id: str, rating: Rating, comment: str | None, channel: str) -> FeedbackReceipt:
        """Store a rating (and comment) of a remembered answer; UnknownAnswerError if there is none."""
        comment = (comment or "").strip() or None
        with self._connect(durable=True) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                answer = connection.execute(
                    "SELECT question, history, answer, abstained, answer_mode, citations, index_version, created_at "
                    "FROM answers WHERE answer_id = ?",
                    (answer_id,),
                ).fetchone()
                if answer is None:
                    raise UnknownAnswerError(answer_id)
                cursor = connection.execute(
                    "INSERT INTO feedback (answer_id, created_at, channel, rating, comment, question, history, answer, "
                    "abstained, answer_mode, citations, index_version, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (answer_id, time.time(), channel, rating, comment, *answer),
                )
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        return FeedbackReceipt(int(cursor.lastrowid or 0), answer_id, rating)

    def count(self, table: Literal["answers", "feedback"]) -> int:
        with self._connect() as connection:
            return int(connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def rated(self, rating: Rating | None = None) -> list[FeedbackRecord]:
        """Every rated answer with its latest rating (optionally only those rated `rating`), oldest first."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT answer_id, rating, comment, question, history, answer, abstained, answer_mode, citations, "
                "index_version, answered_at, created_at FROM feedback ORDER BY feedback_id"
            ).fetchall()
        latest: dict[str, tuple] = {}
        comments: dict[str, list[str]] = {}
        for row in rows:
            latest.pop(row[0], None)
            latest[row[0]] = row
            if row[2]:
                comments.setdefault(row[0], []).append(row[2])
        records = [
            FeedbackRecord(
                answer_id=row[0],
                rating=row[1],
                comments=tuple(comments.get(row[0], [])),
                question=row[3],
                history=json.loads(row[4]),
                answer=row[5],
                abstained=bool(row[6]),
                answer_mode=row[7],
                citations=json.loads(row[8]),
                index_version=row[9],
                answered_at=row[10],
                rated_at=row[11],
            )
            for row in latest.values()
        ]
        return [record for record in records if rating is None or record.rating == rating]


def gold_candidate(record: FeedbackRecord) -> dict[str, Any]:
    """A 👎 answer as a line of the gold-set format, to be reviewed into `eval/gold`.

    `answerable` is null (unknown until someone reviews it: the gold loader refuses it until then),
    `answers` empty, and the answer's quotes are the candidate `evidence`; what the reader saw is
    kept under `review`.
    """
    return {
        "id": f"feedback-{record.answer_id[:12]}",
        "question": record.question,
        "answers": [],
        "evidence": [citation["quote"] for citation in record.citations],
        "answerable": None,
        "kind": "feedback",
        "review": {
            "answer_id": record.answer_id,
            "rating": record.rating,
            "comments": list(record.comments),
            "answer": record.answer,
            "abstained": record.abstained,
            "answer_mode": record.answer_mode,
            "citations": record.citations,
            "history": record.history,
            "index_version": record.index_version,
            "answered_at": _iso(record.answered_at),
            "rated_at": _iso(record.rated_at),
        },
    }


def _iso(timestamp: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def export_thumbs_down(store: FeedbackStore, out: Path) -> int:
    """Write every answer whose latest rating is 👎 to `out` as gold-format JSONL; returns how many."""
    records = store.rated("down")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(gold_candidate(record), ensure_ascii=False) + "\n")
    return len(records)


class AnswerObserver(Protocol):
    def observe_answer(self, answer_mode: str, abstained: bool, llm_fallback: bool, channel: str) -> None: ...

    def observe_feedback(self, rating: str) -> None: ...


@dataclass(frozen=True)
class Answered:
    """The last item of `AnswerTracker.ask_stream`: the whole result and its `answer_id`."""

    result: AskResult
    answer_id: str | None


class AnswerTracker:
    """What every channel (API, stream, OpenAI-compatible, chat) does with an answer: count it and remember it."""

    def __init__(self, store: FeedbackStore | None, observer: AnswerObserver | None, index_version: Any) -> None:
        self.store = store
        self.observer = observer
        self._index_version = index_version

    def ask(
        self, qa: QAService, question: str, top_k: int, mode: SearchMode, history: list[Turn], channel: str,
        docs: Sequence[str] | None = None,
    ) -> tuple[AskResult, str | None]:
        """`qa.ask`, then `answered`: one call, so the API hands a request to a worker thread once, not twice."""
        result = qa.ask(question, top_k, mode, history, docs)
        return result, self.answered(question, history, result, channel)

    def ask_stream(
        self, qa: QAService, question: str, top_k: int, mode: SearchMode, history: list[Turn], channel: str,
        docs: Sequence[str] | None = None,
    ) -> Iterator[str | Answered]:
        """`qa.ask_stream`'s text pieces as they come, then `Answered` once the result is counted and remembered."""
        for item in qa.ask_stream(question, top_k, mode, history, docs):
            if isinstance(item, AskResult):
                yield Answered(item, self.answered(question, history, item, channel))
            else:
                yield item

    def answered(self, question: str, history: Sequence[Turn], result: AskResult, channel: str) -> str | None:
        """Count the answer in the metrics and remember it; its `answer_id` (None when feedback is off)."""
        if self.observer is not None:
            self.observer.observe_answer(result.answer_mode, result.abstained, result.llm_fallback, channel)
        if self.store is None:
            return None
        try:
            return self.store.remember(question, history, result, self._index_version(), channel)
        except sqlite3.Error as error:
            # A full disk or a long-locked database costs this answer its feedback, never the answer.
            log.warning("answer not remembered for feedback: %s", error)
            return None

    def feedback(self, answer_id: str, rating: Rating, comment: str | None, channel: str) -> FeedbackReceipt:
        """Store feedback on a remembered answer (UnknownAnswerError when there is none)."""
        if self.store is None:
            raise UnknownAnswerError(answer_id)
        receipt = self.store.add_feedback(answer_id, rating, comment, channel)
        if self.observer is not None:
            self.observer.observe_feedback(rating)
        return receipt


def index_version(manifest: Any) -> str:
    """A short id of an index build: when it was built and a hash of what from (model, corpus, chunking)."""
    import hashlib

    basis = json.dumps(
        {"model": manifest.model.name, "corpus": manifest.corpus, "chunking": manifest.chunking.model_dump(), "format": manifest.format_version},
        sort_keys=True,
    )
    return f"{manifest.created_at}#{hashlib.sha256(basis.encode()).hexdigest()[:12]}"
