"""Whether a generated answer's citations support what it says, before it is served.

A generated answer is cut into claims, each the text before its `[n]` markers. For each marker,
the passage it names must hold a sentence close to the claim: cosine of the claim (embedded as a
query) with the sentence's vector, plus SUPPORT_LEXICAL_WEIGHT × the share of the claim's Kiwi
morphemes found in the sentence. Both constants are fitted on the dev part of the gold set by
`eval/support.py`, which reports them on the held-out part. A claim without a marker, a marker
naming no passage or a score under the threshold fails the answer, which then falls back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from indexer.engine import SearchEngine, SentenceMatch
from indexer.retrieval import Passage
from service.answer import Citation

# Fitted on the dev part of eval/gold/qa.jsonl (python -m eval.support); see the README for the held-out figures.
SUPPORT_LEXICAL_WEIGHT = 0.4
SUPPORT_THRESHOLD = 1.0031
# Headings and fragments support nothing.
MIN_SUPPORT_SENTENCE_CHARS = 12
_MARKERS = re.compile(r"((?:\s*\[\d{1,3}\])+)[.!?。]?")
_NUMBER = re.compile(r"\d{1,3}")
_WORDS = re.compile(r"\w")


@dataclass(frozen=True)
class Claim:
    """A stretch of a generated answer and the passage numbers its markers name (none: uncited)."""

    text: str
    markers: tuple[int, ...]


@dataclass(frozen=True)
class Support:
    """The sentence of a passage that best supports a claim, and how well."""

    sentence: SentenceMatch
    score: float


@dataclass
class Grounding:
    """What checking a generated answer found: one citation per marker, and the claims that failed."""

    citations: list[Citation]
    failures: list[str]

    @property
    def supported(self) -> bool:
        return not self.failures


def split_claims(text: str) -> list[Claim]:
    """The claims of an answer: each run of text up to a group of markers; trailing words form an uncited claim."""
    claims = []
    position = 0
    for match in _MARKERS.finditer(text):
        claim = text[position : match.start()].strip()
        markers = tuple(dict.fromkeys(int(number) for number in _NUMBER.findall(match.group(1))))
        if claim:
            claims.append(Claim(claim, markers))
        elif claims:  # markers right after markers ("… [1]. [2]") extend the claim before
            claims[-1] = Claim(claims[-1].text, tuple(dict.fromkeys(claims[-1].markers + markers)))
        position = match.end()
    rest = text[position:].strip()
    if _WORDS.search(rest):
        claims.append(Claim(rest, ()))
    return claims


def support_features(engine: SearchEngine, claim: str, passage: Passage) -> list[tuple[SentenceMatch, float]]:
    """The quotable sentences of `passage` (with their cosine to `claim`) and the share of the claim's morphemes in each."""
    terms = set(engine.query_terms(claim))
    return [
        (sentence, len(terms & set(sentence.terms)) / len(terms) if terms else 0.0)
        for sentence in engine.sentence_matches(claim, [passage.chunk_id])
        if len(sentence.text) >= MIN_SUPPORT_SENTENCE_CHARS and sentence.text not in sentence.heading_path
    ]


def claim_support(
    engine: SearchEngine, claim: str, passage: Passage, lexical_weight: float = SUPPORT_LEXICAL_WEIGHT
) -> Support | None:
    """The sentence of `passage` that best supports `claim` (None when the passage has no sentence to quote)."""
    scored = [
        Support(sentence, sentence.cosine + lexical_weight * overlap)
        for sentence, overlap in support_features(engine, claim, passage)
    ]
    return max(scored, key=lambda support: support.score, default=None)


def check_generated_answer(
    engine: SearchEngine, text: str, passages: list[Passage], threshold: float = SUPPORT_THRESHOLD
) -> Grounding:
    """Check every claim of a generated answer against the passages its markers name."""
    best: dict[int, Support] = {}
    failures = []
    for claim in split_claims(text):
        if not claim.markers:
            failures.append(f"근거 표시가 없는 문장: “{_short(claim.text)}”")
        for marker in claim.markers:
            if not 1 <= marker <= len(passages):
                failures.append(f"[{marker}]은(는) 없는 발췌문을 가리킵니다")
                continue
            support = claim_support(engine, claim.text, passages[marker - 1])
            if support is None or support.score < threshold:
                failures.append(f"[{marker}]의 발췌문이 “{_short(claim.text)}”을(를) 뒷받침하지 않습니다")
            elif marker not in best or support.score > best[marker].score:
                best[marker] = support
    if not best and not failures:
        failures.append("근거 표시가 없습니다")
    citations = [_citation(marker, best[marker].sentence) for marker in sorted(best)]
    return Grounding(citations, failures)


def _citation(marker: int, sentence: SentenceMatch) -> Citation:
    return Citation(
        marker, sentence.chunk_id, sentence.doc, sentence.section, sentence.start, sentence.end, sentence.text, page=sentence.page
    )


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
