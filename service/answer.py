"""Answers from retrieved passages: extractive by default, with exact sentence citations.

The extractive answerer quotes the sentence of the retrieved passages that best answers the question
(service.evidence: embedding cosine, Kiwi morpheme overlap, the asked kind of answer), leads with the
fact that answers it (a date, a number, a name), and marks that fact's offsets in the citation. Whether
to answer at all is the abstention model's decision (service.abstention), fitted on the gold set's dev
part; when the book names the subject but not the asked fact, the answer says so and cites what it says.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field

from indexer.engine import SearchEngine
from indexer.retrieval import Passage
from service.abstention import AbstentionModel, load_model
from service.evidence import BookVocabulary, Candidate, Evidence, answer_span, gather_evidence
from service.neighbours import ReferenceQuestions
from service.question import CHECKABLE, MISSING_PHRASE

log = logging.getLogger(__name__)
ABSTAIN_MESSAGE = "책에서 이 질문에 대한 내용을 찾지 못했습니다. 이 책은 이 주제를 다루지 않는 것 같습니다."
# Nouns that only say what kind of thing is asked for ("어느 나라", "몇 곳") or how ("처음", "전면", "최소":
# "‘처음’의 시기는 나오지 않습니다" names no fact), never what it is about.
GENERIC_NOUNS = frozenset(
    """
    나라 도시 지역 국가 곳 기관 사람 인물 연도 시기 비율 금액 숫자 수 해 이름 종류 정도
    처음 최초 전면 구체 최소 최대 최고 대략 보통 실제 정확 당시 현재 지금 요즘 가장 대체
    """.split()
)
# A lead longer than this share of its sentence would only repeat the quote.
MAX_LEAD_SHARE = 0.8


@dataclass(frozen=True)
class Citation:
    """One `[id]` marker of an answer: `document[start:end] == quote`."""

    id: int
    chunk_id: str
    doc: str
    section: str
    start: int
    end: int
    quote: str
    # The page the quote is on: a PDF's page label, an EPUB/DOCX chapter title; None for plain text.
    page: str | None = None
    # The fact inside the quote that answers the question (document offsets within [start:end]), if any.
    answer_start: int | None = None
    answer_end: int | None = None


@dataclass
class Answer:
    """An answer with its citations and the passages it was drawn from."""

    answer: str
    abstained: bool
    citations: list[Citation]
    passages: list[Passage]
    confidence: float
    notes: list[str] = field(default_factory=list)
    # What the question asks for (date, percent, place, name, definition, reason…), see service.question.
    answer_type: str | None = None


def topic_particle(word: str) -> str:
    """은 after a final consonant, 는 after a vowel (and after anything not Hangul)."""
    last = word.rstrip("’'\" ")[-1:] or "가"
    if "가" <= last <= "힣":
        return "은" if (ord(last) - ord("가")) % 28 else "는"
    return "는"


class ExtractiveAnswerer:
    """Quotes the book or declines: evidence from service.evidence, the decision from the abstention model.

    Holds the book's vocabulary (built once from the index, lazily) and the fitted model; one per service.
    """

    def __init__(self, engine: SearchEngine, model: AbstentionModel | None = None) -> None:
        self.engine = engine
        self._model = model
        self._vocabulary: BookVocabulary | None = None
        self._references: ReferenceQuestions | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> AbstentionModel:
        """The fitted model (loaded on first use, so evidence can be gathered to fit one before it exists)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = load_model()
                    warn_if_fitted_for_another_model(self._model, self.engine)
        return self._model

    @property
    def vocabulary(self) -> BookVocabulary:
        if self._vocabulary is None:
            with self._lock:
                if self._vocabulary is None:
                    self._vocabulary = BookVocabulary(self.engine)
        return self._vocabulary

    def references(self) -> ReferenceQuestions | None:
        """The off-topic gate's reference questions with their vectors (embedded or read from cache on first use)."""
        gate = self.model.off_topic_gate
        if gate is None:
            return None
        if self._references is None:
            with self._lock:
                if self._references is None:
                    self._references = ReferenceQuestions(
                        gate.off_topic,
                        gate.answerable,
                        self.engine.embedder.encode_queries,
                        self.engine.settings.cache_dir,
                        model_key(self.engine),
                    )
        return self._references

    def off_topic_likeness(self, question: str, query: str) -> float | None:
        """How much more the question looks like an off-topic reference question than an answerable one."""
        references = self.references()
        if references is None:
            return None
        return references.likeness(self.engine.embed_query(query)[0], own_texts=(question, query))

    def evidence(self, question: str, query: str, passages: list[Passage]) -> Evidence:
        """The candidates, the quote and the signals for a question (what the model decides on)."""
        return gather_evidence(self.engine, self.vocabulary, question, query, passages)

    def answer(self, question: str, query: str, passages: list[Passage]) -> Answer:
        """A cited answer to `question`, or a cited "the book says X but not this", or a plain abstention."""
        evidence = self.evidence(question, query, passages)
        probability = self.model.probability(evidence.features)
        answer_type = evidence.frame.answer_type
        gate = self.model.off_topic_gate
        likeness = self.off_topic_likeness(question, query)
        if gate is not None and likeness is not None and gate.declines(likeness):
            # Off-topic: nothing of the book is near enough to cite, and no confidence in any quote.
            return Answer(ABSTAIN_MESSAGE, True, [], passages, 0.0, answer_type=answer_type)
        if not evidence.quote or probability < self.model.threshold:
            text, citations = self._decline(evidence)
            return Answer(text, True, citations, passages, probability, answer_type=answer_type)
        text, citations = self._compose(evidence)
        return Answer(text, False, citations, passages, probability, answer_type=answer_type)

    def _citation(self, number: int, candidate: Candidate, evidence: Evidence) -> Citation:
        s = candidate.sentence
        wanted = evidence.frame.answer_type in CHECKABLE
        span = answer_span(candidate, evidence.frame, self.vocabulary) if wanted else None
        start, end = span if span else (None, None)
        return Citation(
            number, s.chunk_id, s.doc, s.section, s.start, s.end, s.text, page=s.page, answer_start=start, answer_end=end
        )

    def _compose(self, evidence: Evidence) -> tuple[str, list[Citation]]:
        chosen = sorted([*evidence.quote, *evidence.extra], key=lambda c: (c.sentence.doc, c.sentence.start))
        citations = [self._citation(number, c, evidence) for number, c in enumerate(chosen, start=1)]
        # The lead is the fact of the best sentence (or of the sentence it introduces).
        lead = None
        for candidate in evidence.quote:
            citation = next(c for c in citations if (c.doc, c.start, c.end) == candidate.key)
            if citation.answer_start is not None and citation.answer_end is not None:
                span = citation.quote[citation.answer_start - citation.start : citation.answer_end - citation.start]
                if len(span) <= MAX_LEAD_SHARE * len(citation.quote):
                    lead = span.strip()
                break
        body = " ".join(f"{c.quote} [{c.id}]" for c in citations)
        return (f"{lead} — {body}" if lead else body), citations

    def _decline(self, evidence: Evidence) -> tuple[str, list[Citation]]:
        """Near-topic: name what the book covers and what it does not, citing its closest sentences.

        The asked fact's head is the question's last noun ("마이페이먼트 수수료율은 몇 퍼센트": 수수료); the
        subject is what else of the question the quote covers. With nothing covered, a plain abstention.
        """
        if not evidence.quote or not evidence.covered_nouns:
            return ABSTAIN_MESSAGE, []
        frame = evidence.frame
        # English words are not repeated in a Korean answer.
        specific = [noun for noun in frame.nouns if noun not in GENERIC_NOUNS]
        target = specific[-1] if frame.lang == "ko" and specific else None
        subjects = [noun for noun in evidence.covered_nouns if noun != target][:2] or list(evidence.covered_nouns[:1])
        kind = MISSING_PHRASE.get(frame.answer_type)
        if frame.expansions:
            missing = f"‘{frame.expansions[0]}’의 풀네임"
        elif kind and target and target not in subjects:
            missing = f"‘{target}’의 {kind}"
        elif kind:
            missing = f"질문하신 {kind}"
        elif target and target not in evidence.covered_nouns:
            missing = f"‘{target}’에 대한 내용"
        else:
            missing = "질문하신 내용"
        subject = ", ".join(f"‘{noun}’" for noun in subjects)
        quoted = sorted(evidence.quote, key=lambda c: (c.sentence.doc, c.sentence.start))
        citations = [
            Citation(
                n, c.sentence.chunk_id, c.sentence.doc, c.sentence.section, c.sentence.start, c.sentence.end,
                c.sentence.text, page=c.sentence.page,
            )
            for n, c in enumerate(quoted, start=1)
        ]
        text = (
            f"책은 {subject}에 대해서는 다루지만, {missing}{topic_particle(missing)} 나오지 않습니다. 책에서 가장 가까운 내용: "
            + " ".join(f"{c.quote} [{c.id}]" for c in citations)
        )
        return text, citations



def warn_if_fitted_for_another_model(model: AbstentionModel, engine: SearchEngine) -> bool:
    """Log a warning when the decision was fitted on another embedding model's cosines (True if so).

    Its thresholds are cosines of that model; another model answers, but its declines are uncalibrated.
    """
    fitted = model.fitted_on.get("model")
    running = engine.manifest.model.name
    if fitted and fitted != running:
        log.warning(
            "답변 판단 모델은 %s 임베딩으로 학습되었는데 지금 모델은 %s입니다. 답변/거절 판단이 맞지 않을 수 있습니다: "
            "`bookqa fit-abstention`으로 다시 학습하세요.",
            fitted,
            running,
        )
        return True
    return False


def model_key(engine: SearchEngine) -> str:
    """What makes query vectors comparable: the model, its backend, precision and prompt, and its probe."""
    model = engine.manifest.model
    probe = ",".join(f"{x:.3f}" for x in model.probe[:16])
    return f"{model.name}|{model.backend}|{model.precision}|{model.query_prompt}|{probe}"


def stream_pieces(answer: str) -> list[str]:
    """The answer cut into words with their trailing space, the units streamed to the API and the chat."""
    return re.findall(r"\S+\s*", answer) or [answer]
