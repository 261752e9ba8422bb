"""The question-answering pipeline: conversation-aware retrieval, then an answer with citations.

`QAService.ask` is the one path the HTTP API, the CLI, the chat UI and the evaluator all use.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from indexer.engine import QueryError, SearchEngine, SearchRequest
from indexer.facts import Token
from indexer.retrieval import Passage
from indexer.settings import SearchMode, Settings
from service.answer import ABSTAIN_MESSAGE, Answer, Citation, ExtractiveAnswerer, citation_for_marker
from service.evidence import Evidence
from service.llm import NOT_FOUND_REPLY, LLMAnswerer, LLMError, clean_markers

log = logging.getLogger(__name__)
# How many earlier user turns join the question for retrieval ("그건 언제부터?" needs its topic).
HISTORY_TURNS_FOR_RETRIEVAL = 2
MAX_HISTORY_TURNS = 20


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


def retrieval_query(question: str, history: list[Turn], follow_up: bool = True) -> str:
    """The question preceded by the last user turns when it is a follow-up, so it keeps its subject."""
    earlier = [turn.content.strip() for turn in history if turn.role == "user" and turn.content.strip()]
    if not follow_up:
        return question.strip()
    return "\n".join([*earlier[-HISTORY_TURNS_FOR_RETRIEVAL:], question.strip()])


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
            llm = LLMAnswerer(settings.llm_base_url, settings.llm_model, settings.llm_api_key, settings.llm_timeout)
        return cls(SearchEngine.load(settings), llm)

    def _retrieve(
        self, question: str, top_k: int, mode: SearchMode, history: list[Turn] | None
    ) -> tuple[SearchRequest, list[Turn], str, list[Passage]]:
        history = list(history or [])
        if len(history) > MAX_HISTORY_TURNS:
            history = history[-MAX_HISTORY_TURNS:]
        request = SearchRequest(query=question, top_k=top_k, mode=mode)  # validates
        follow_up = bool(history) and is_follow_up(request.query, self.engine.query_tokens(request.query.strip()))
        query = retrieval_query(request.query, history, follow_up)
        passages = self.engine.search(query[-4000:], top_k=request.top_k, mode=request.mode)
        return request, history, query, passages

    def evidence(
        self, question: str, top_k: int = 5, mode: SearchMode = "hybrid", history: list[Turn] | None = None
    ) -> Evidence:
        """What `ask` decides on for this question: its candidates, quote and signals (for fitting the model)."""
        request, _, query, passages = self._retrieve(question, top_k, mode, history)
        return self.answerer.evidence(request.query, query, passages)

    def ask(self, question: str, top_k: int = 5, mode: SearchMode = "hybrid", history: list[Turn] | None = None) -> AskResult:
        """Answer `question` from the book; raises QueryError for unusable input."""
        started = time.perf_counter()
        request, history, query, passages = self._retrieve(question, top_k, mode, history)
        retrieved = time.perf_counter()
        extractive = self.answerer.answer(request.query, query, passages)
        result = self._from_answer(extractive)
        if self.llm is not None and not extractive.abstained:
            result = self._generate(request.query, query, passages, history, result)
        finished = time.perf_counter()
        result.timings_ms = {
            "retrieve": round((retrieved - started) * 1000, 2),
            "answer": round((finished - retrieved) * 1000, 2),
            "total": round((finished - started) * 1000, 2),
        }
        return result

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
        except LLMError as error:
            log.warning("LLM failed, using the extractive answer: %s", error)
            fallback.notes.append(f"생성형 답변 실패로 발췌 답변을 보여줍니다: {error}")
            fallback.llm_fallback = True
            return fallback
        if NOT_FOUND_REPLY in raw:
            return AskResult(
                ABSTAIN_MESSAGE, True, [], passages, {}, "generative", confidence=fallback.confidence,
                answer_type=fallback.answer_type,
            )
        text, used = clean_markers(raw, len(passages))
        if not used:
            fallback.notes.append("생성형 답변에 근거 표시가 없어 발췌 답변을 보여줍니다.")
            fallback.llm_fallback = True
            return fallback
        citations = [citation_for_marker(self.engine, passages[number - 1], number, query) for number in used]
        return AskResult(
            text, False, citations, passages, {}, "generative", confidence=fallback.confidence,
            answer_type=fallback.answer_type,
        )


def validate_history(raw: list[dict[str, str]]) -> list[Turn]:
    """Turns from plain dicts (for the CLI); the API validates with pydantic instead."""
    turns = []
    for item in raw:
        if item.get("role") not in ("user", "assistant") or not isinstance(item.get("content"), str):
            raise QueryError("history 항목은 role(user/assistant)과 content(문자열)가 필요합니다.")
        turns.append(Turn(item["role"], item["content"]))
    return turns
