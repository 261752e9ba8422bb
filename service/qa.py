"""The question-answering pipeline: conversation-aware retrieval, then an answer with citations.

`QAService.ask` is the one path the HTTP API, the CLI, the chat UI and the evaluator all use.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

from indexer.engine import MAX_QUERY_CHARS, QueryError, SearchEngine, SearchRequest
from indexer.facts import Token
from indexer.retrieval import Passage
from indexer.settings import SearchMode, Settings
from service.answer import ABSTAIN_MESSAGE, Answer, Citation, ExtractiveAnswerer
from service.evidence import Evidence
from service.grounding import check_generated_answer
from service.llm import NOT_FOUND_REPLY, LLMAnswerer, LLMError, clean_markers

log = logging.getLogger(__name__)
# How many earlier user turns join the question for retrieval ("그건 언제부터?" needs its topic).
HISTORY_TURNS_FOR_RETRIEVAL = 2
# Earlier messages a conversation keeps for answering; older ones are dropped, not refused.
MAX_HISTORY_TURNS = 20
# What the API accepts as `history`: the question's own limit (MAX_QUERY_CHARS) does not apply to it.
MAX_HISTORY_MESSAGES = 50
MAX_HISTORY_MESSAGE_CHARS = 4000
# An earlier turn shorter than this after trimming adds noise, not a topic.
MIN_HISTORY_CONTEXT_CHARS = 8


@dataclass(frozen=True)
class Turn:
    """One earlier message of the conversation."""

    role: str
    content: str


@dataclass
class AskResult:
    """Everything `/v1/ask` returns."""

    answer: str
    abstained: bool
    citations: list[Citation]
    passages: list[Passage]
    timings_ms: dict[str, float]
    answer_mode: str = "extractive"
    notes: list[str] = field(default_factory=list)
    confidence: float = 0.0
    # A generative answer was asked for but the extractive one is given (LLM timeout, error, no markers).
    llm_fallback: bool = False
    # What the question asks for (date, percent, place, name, definition, reason…), see service.question.
    answer_type: str | None = None


# Words that point back at an earlier turn ("그건 언제부터?", "그 회사는?", "what does it cost?").
_ANAPHORA = re.compile(
    r"(?:그|이|저)\s?(?:거|건|게|걸|것|곳|때|분|사람|회사|서비스|기술|제도|사업|방식)|거기|그럼|그러면|그렇다면|그래서|"
    r"\b(?:it|its|that|this|they|them|those|these|there)\b",
    re.IGNORECASE,
)


def is_follow_up(question: str, tokens: Sequence[Token]) -> bool:
    """Whether a question leans on the conversation: it points back ("그건", "it") or names nothing itself.

    A question with its own subject ("김치찌개 끓이는 법") after one about 마이데이터 is a new topic, and
    is retrieved and judged on its own words.
    """
    if _ANAPHORA.search(question):
        return True
    return not any(token.tag in ("NNG", "NNP", "SL", "SH") for token in tokens)


def retrieval_query(question: str, history: list[Turn], follow_up: bool = True, limit: int = MAX_QUERY_CHARS) -> str:
    """The question preceded by the last user turns when it is a follow-up, so it keeps its subject.

    The question is kept whole; earlier turns fill what is left of `limit`, newest first, the
    oldest one kept cut to its end: a long conversation is trimmed, never refused.
    """
    question = question.strip()
    if not follow_up:
        return question
    earlier = [turn.content.strip() for turn in history if turn.role == "user" and turn.content.strip()]
    kept: list[str] = []
    room = limit - len(question)
    for content in reversed(earlier[-HISTORY_TURNS_FOR_RETRIEVAL:]):
        room -= 1  # the line break before the next part
        if room < MIN_HISTORY_CONTEXT_CHARS:
            break
        piece = content if len(content) <= room else content[-room:].lstrip()
        kept.insert(0, piece)
        room -= len(piece)
    return "\n".join([*kept, question])


class QAService:
    """Owns the search engine and the optional LLM; answers questions."""

    def __init__(
        self, engine: SearchEngine, llm: LLMAnswerer | None = None, answerer: ExtractiveAnswerer | None = None
    ) -> None:
        self.engine = engine
        self.llm = llm
        # The one answer-or-decline decision of every caller (API, chat, CLI, evaluation).
        self.answerer = answerer or ExtractiveAnswerer(engine)

    @classmethod
    def load(cls, settings: Settings) -> QAService:
        """Load model and index once (and the LLM client when configured)."""
        llm = None
        if settings.llm_base_url:
            llm = LLMAnswerer(
                settings.llm_base_url, settings.llm_model, settings.llm_api_key.get_secret_value(), settings.llm_timeout
            )
        return cls(SearchEngine.load(settings), llm)

    def _retrieve(
        self,
        question: str,
        top_k: int,
        mode: SearchMode,
        history: list[Turn] | None,
        docs: Collection[str] | None = None,
    ) -> tuple[SearchRequest, list[Turn], str, list[Passage]]:
        # validates the question alone
        request = SearchRequest(query=question, top_k=top_k, mode=mode, docs=None if docs is None else tuple(docs))
        history = usable_history(history or [])
        follow_up = bool(history) and is_follow_up(request.query, self.engine.query_tokens(request.query.strip()))
        query = retrieval_query(request.query, history, follow_up)
        passages = self.engine.search(query, top_k=request.top_k, mode=request.mode, docs=request.docs)
        return request, history, query, passages

    def evidence(
        self,
        question: str,
        top_k: int = 5,
        mode: SearchMode = "hybrid",
        history: list[Turn] | None = None,
        docs: Collection[str] | None = None,
    ) -> Evidence:
        """What `ask` decides on for this question: its candidates, quote and signals (for fitting the model)."""
        request, _, query, passages = self._retrieve(question, top_k, mode, history, docs)
        return self.answerer.evidence(request.query, query, passages)

    def ask(
        self,
        question: str,
        top_k: int = 5,
        mode: SearchMode = "hybrid",
        history: list[Turn] | None = None,
        docs: Collection[str] | None = None,
    ) -> AskResult:
        """Answer `question` from the library (or only `docs`); raises QueryError for unusable input."""
        for item in self.ask_stream(question, top_k, mode, history, docs):
            if isinstance(item, AskResult):
                return item
        raise AssertionError("ask_stream ended without a result")

    def ask_stream(
        self,
        question: str,
        top_k: int = 5,
        mode: SearchMode = "hybrid",
        history: list[Turn] | None = None,
        docs: Collection[str] | None = None,
    ) -> Iterator[str | AskResult]:
        """The answer's text as soon as it is final, then the whole `AskResult`.

        An extractive answer exists at once. A generated one is given only once every claim is
        checked against the passage it cites, so no unverified text reaches a reader; callers
        stream the text in pieces. Raises QueryError on the first step for unusable input.
        """
        started = time.perf_counter()
        request, history, query, passages = self._retrieve(question, top_k, mode, history, docs)
        retrieved = time.perf_counter()
        extractive = self.answerer.answer(request.query, query, passages)
        result = self._from_answer(extractive)
        if self.llm is not None and not extractive.abstained:
            result = self._generate(request.query, query, passages, history, result)
        yield result.answer
        finished = time.perf_counter()
        result.timings_ms = {
            "retrieve": round((retrieved - started) * 1000, 2),
            "answer": round((finished - retrieved) * 1000, 2),
            "total": round((finished - started) * 1000, 2),
        }
        yield result

    def _from_answer(self, answer: Answer) -> AskResult:
        return AskResult(
            answer=answer.answer,
            abstained=answer.abstained,
            citations=answer.citations,
            passages=answer.passages,
            timings_ms={},
            confidence=round(answer.confidence, 4),
            answer_type=answer.answer_type,
        )

    def _generate(
        self, question: str, query: str, passages: list[Passage], history: list[Turn], fallback: AskResult
    ) -> AskResult:
        assert self.llm is not None
        turns = [{"role": turn.role, "content": turn.content} for turn in history]
        try:
            raw = self.llm.generate(question, passages, turns)
        except LLMError as error:  # its message is already free of the key
            log.warning("LLM failed, using the extractive answer: %s", error)
            fallback.notes.append(f"생성형 답변 실패로 발췌 답변을 보여줍니다: {error}")
            fallback.llm_fallback = True
            return fallback
        if NOT_FOUND_REPLY in raw:
            return AskResult(
                ABSTAIN_MESSAGE, True, [], passages, {}, "generative", confidence=fallback.confidence,
                answer_type=fallback.answer_type,
            )
        # Served only if every claim is supported by the passage it cites (an instruction hidden in a
        # passage can make a model cite anything).
        grounding = check_generated_answer(self.engine, raw, passages)
        if not grounding.supported:
            log.info("generated answer not supported by its citations: %s", "; ".join(grounding.failures))
            fallback.notes.append(
                "생성형 답변의 인용이 내용을 뒷받침하지 않아 발췌 답변을 보여줍니다: "
                + self.llm.mask("; ".join(grounding.failures[:3]))
            )
            fallback.llm_fallback = True
            return fallback
        text, _ = clean_markers(raw, len(passages))
        return AskResult(
            text, False, grounding.citations, passages, {}, "generative", confidence=fallback.confidence,
            answer_type=fallback.answer_type,
        )


def usable_history(history: list[Turn]) -> list[Turn]:
    """The last MAX_HISTORY_TURNS messages, each cut to MAX_HISTORY_MESSAGE_CHARS and made encodable.

    The API refuses longer histories with a clear message; the chat and the CLI pass their own,
    which are trimmed here rather than refused.
    """
    return [
        Turn(turn.role, _encodable(turn.content[-MAX_HISTORY_MESSAGE_CHARS:])) for turn in history[-MAX_HISTORY_TURNS:]
    ]


def _encodable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def validate_history(raw: list[dict[str, str]]) -> list[Turn]:
    """Turns from plain dicts (for the CLI); the API validates with pydantic instead."""
    turns = []
    for item in raw:
        if item.get("role") not in ("user", "assistant") or not isinstance(item.get("content"), str):
            raise QueryError("history 항목은 role(user/assistant)과 content(문자열)가 필요합니다.")
        turns.append(Turn(item["role"], item["content"]))
    return turns
