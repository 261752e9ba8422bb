"""Answers from retrieved passages: extractive by default, with exact sentence citations.

The extractive answerer picks the sentences of the retrieved passages that best match the
question (embedding cosine plus Kiwi morpheme overlap), keeps a few, in book order, each with a
`[n]` marker whose citation quotes exactly that sentence. It abstains when even the best
sentence of the whole book matches the question too weakly (threshold calibrated on the gold set).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from indexer.engine import SearchEngine, SentenceMatch
from indexer.retrieval import Passage

ABSTAIN_MESSAGE = "책에서 이 질문에 대한 내용을 찾지 못했습니다. 이 책은 이 주제를 다루지 않는 것 같습니다."
# Sentence score = cosine + LEXICAL_WEIGHT * share of the question's morphemes in the sentence.
LEXICAL_WEIGHT = 0.1
# Further sentences join the answer only when scoring within this margin of the best one.
ANSWER_MARGIN = 0.02
MAX_ANSWER_SENTENCES = 3
# Abstain when the best sentence score is below this; calibrated on eval/gold (see README).
ABSTAIN_THRESHOLD = 0.90
# Headings and fragments are not answers.
MIN_SENTENCE_CHARS = 12


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


@dataclass
class Answer:
    """An answer with its citations and the passages it was drawn from."""

    answer: str
    abstained: bool
    citations: list[Citation]
    passages: list[Passage]
    confidence: float
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ScoredSentence:
    """A sentence of a retrieved passage with its match score against the question."""

    sentence: SentenceMatch
    score: float

    def citation(self, number: int) -> Citation:
        """This sentence as the citation of marker `number`."""
        s = self.sentence
        return Citation(number, s.chunk_id, s.doc, s.section, s.start, s.end, s.text, page=s.page)


def score_sentences(engine: SearchEngine, question: str, passages: list[Passage]) -> list[ScoredSentence]:
    """Every distinct sentence of the passages with its score, best first."""
    query_terms = set(engine.query_terms(question))
    seen: set[tuple[str, int, int]] = set()
    scored: list[ScoredSentence] = []
    for match in engine.sentence_matches(question, [passage.chunk_id for passage in passages]):
        key = (match.doc, match.start, match.end)
        if key in seen or len(match.text) < MIN_SENTENCE_CHARS or match.text in match.heading_path:
            continue
        seen.add(key)
        overlap = len(query_terms & set(match.terms)) / len(query_terms) if query_terms else 0.0
        scored.append(ScoredSentence(match, match.cosine + LEXICAL_WEIGHT * overlap))
    scored.sort(key=lambda s: -s.score)
    return scored


def extractive_answer(
    engine: SearchEngine, question: str, passages: list[Passage], abstain_threshold: float = ABSTAIN_THRESHOLD
) -> Answer:
    """The best-matching sentences of `passages` as a cited answer, or an abstention."""
    scored = score_sentences(engine, question, passages)
    confidence = scored[0].score if scored else 0.0
    if not scored or confidence < abstain_threshold:
        return Answer(ABSTAIN_MESSAGE, True, [], passages, confidence)
    chosen = [s for s in scored if s.score >= confidence - ANSWER_MARGIN][:MAX_ANSWER_SENTENCES]
    chosen.sort(key=lambda s: (s.sentence.doc, s.sentence.start))
    citations = [scored_sentence.citation(number) for number, scored_sentence in enumerate(chosen, start=1)]
    answer = " ".join(f"{citation.quote} [{citation.id}]" for citation in citations)
    return Answer(answer, False, citations, passages, confidence)


def stream_pieces(answer: str) -> list[str]:
    """The answer cut into words with their trailing space, the units streamed to the API and the chat."""
    return re.findall(r"\S+\s*", answer) or [answer]
