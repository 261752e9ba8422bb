"""Answers from retrieved passages: extractive by default, with exact sentence citations.

The extractive answerer picks the sentences of the retrieved passages that best match the
question (embedding cosine plus Kiwi morpheme overlap), keeps a few, in book order, each with a
`[n]` marker whose citation quotes exactly that sentence. It abstains when even the best
sentence of the whole book matches the question too weakly (threshold calibrated on the gold set).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from indexer.engine import SearchEngine
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

    chunk_index: int
    start: int
    end: int
    score: float


def score_sentences(engine: SearchEngine, question: str, passages: list[Passage]) -> list[ScoredSentence]:
    """Every distinct sentence of the passages with its score, best first."""
    retriever = engine.retriever
    vector = retriever.query_vector(question)[0]
    cosines = retriever.sentence_scores(vector)
    query_terms = set(engine.analyzer.content_morphemes(question))
    seen: set[tuple[str, int, int]] = set()
    scored: list[ScoredSentence] = []
    for passage in passages:
        position = retriever.chunk_position[passage.chunk_id]
        chunk = engine.index.chunks[position]
        headings = set(chunk.heading_path)
        for offset, (start, end) in enumerate(chunk.sentences):
            key = (chunk.doc, start, end)
            text = engine.document_text(chunk.doc)[start:end]
            if key in seen or len(text) < MIN_SENTENCE_CHARS or text in headings:
                continue
            seen.add(key)
            overlap = 0.0
            if query_terms:
                overlap = len(query_terms & set(engine.analyzer.content_morphemes(text))) / len(query_terms)
            score = float(cosines[retriever.first_sentence_row[position] + offset]) + LEXICAL_WEIGHT * overlap
            scored.append(ScoredSentence(position, start, end, score))
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
    chosen.sort(key=lambda s: (engine.index.chunks[s.chunk_index].doc, s.start))
    citations = []
    parts = []
    for number, sentence in enumerate(chosen, start=1):
        chunk = engine.index.chunks[sentence.chunk_index]
        quote = engine.document_text(chunk.doc)[sentence.start : sentence.end]
        citations.append(Citation(number, chunk.chunk_id, chunk.doc, chunk.section, sentence.start, sentence.end, quote))
        parts.append(f"{quote} [{number}]")
    return Answer(" ".join(parts), False, citations, passages, confidence)


def citation_for_marker(
    engine: SearchEngine, passage: Passage, marker: int, question: str
) -> Citation:
    """A citation quoting the sentence of `passage` that best matches `question`.

    Used for generated answers, whose markers point at whole passages: the quote is narrowed to
    one sentence so a reader lands on the exact line.
    """
    best = score_sentences(engine, question, [passage])
    if best:
        start, end = best[0].start, best[0].end
    else:
        start, end = passage.start, passage.end
    quote = engine.document_text(passage.doc)[start:end]
    return Citation(marker, passage.chunk_id, passage.doc, passage.section, start, end, quote)


def stream_pieces(answer: str) -> list[str]:
    """The answer cut into words with their trailing space, the units streamed to the API and the chat."""
    return re.findall(r"\S+\s*", answer) or [answer]
