"""Evidence for an answer: the candidate sentences of the retrieved passages, the chosen quote and its signals.

Every sentence of the retrieved passages (headings and table-of-contents lines too: titles in this book
carry facts the body never repeats) is scored against the question; the best becomes the quote. The
signals the abstention model weighs are measured on it: how well it matches, by how much it beats the
next, whether it holds the kind of answer the question wants, how much of the question's key content
it and its heading cover, whether the book has the question's words at all, the question's language.
Nothing here runs Kiwi over the book: sentence morphemes and fact spans come from the index.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from indexer.engine import SearchEngine, SentenceMatch
from indexer.facts import PLACES, FactSpan
from indexer.retrieval import Passage
from service.question import BOOK_PART, EXPANSION_ASKED, SATISFIED_BY, QuestionFrame, frame_question

# Sentence score = cosine + LEXICAL_WEIGHT * share of the question's morphemes in the sentence
# (+ NEAR_WORD_WEIGHT * how near it comes to the question's words no passage has, + TYPE_WEIGHT when it
# holds the asked kind of answer, + the wording bonuses below when the question asks for an acronym's
# expansion, a comparison or a term); weights chosen on the dev part of the gold set.
LEXICAL_WEIGHT = 0.1
TYPE_WEIGHT = 0.02
# A question's word no retrieved sentence has counts, in each sentence, by the cosine of the nearest form
# the sentence has among the word's neighbours in Kiwi's language model (앞날 → 장래, 닮다 → 유사): paraphrases
# use the reader's words, not the book's. On dev, best sentence holding the answer 0.741 → 0.755 (0.02,
# 0.03) → 0.769 (0.05, 0.07) → 0.762 (0.1); looking up every word of the question instead of only those
# the passages lack gives the same 0.769 at 2.4 times the lookups.
NEAR_WORD_WEIGHT = 0.05
# Added to a sentence that spells out the acronym a question asks to expand ("What does IaaS stand for?",
# "CPS는 무엇의 약자?"): `IaaS(Infrastructure as a Service)` answers it where `IaaS는 … 서비스이다` does not.
# 0.05 and 0.1 contain the same dev answers (one more than without); 0.1, as a sentence that does not
# spell the acronym out cannot answer at all (it also carries "SaaS는 뭐의 줄임말이야?", not in the gold set).
EXPANSION_WEIGHT = 0.1
# Added to a sentence that draws a comparison (처럼, 같이, 비유…) when the question asks what something is
# likened to ("클라우드 요금 방식은 무엇에 비유되나요?": "…전기, 수도와 같이, 클라우드는…"). On dev, with the
# model refitted each time: 0.02 one more answer, 0.05 and 0.1 two more and one false abstention fewer.
SIMILE_WEIGHT = 0.05
_SIMILE_ASKED = re.compile(r"비유|처럼|빗대|compared? to|likened|metaphor", re.IGNORECASE)
_SIMILE = re.compile(r"비유|처럼|같이|와\s?같은|과\s?같은|마치")
# Added to a sentence that defines a term the question does not name ("PaaS는 운영 체제와 … 도구까지
# 제공하는 서비스다") when the question describes something and asks what it is called or which kind it is
# ("프로그램 만드는 도구와 운영체제까지 빌려주는 클라우드 종류는?"). On dev, model refitted: 0.02 two more
# answers; 0.05 the same answers and one near-topic question less declined; 0.1 one answer fewer.
TERM_WEIGHT = 0.02
_TERM_ASKED = re.compile(
    r"종류|유형|뭐라고\s*(?:해|불러|부르|하)|무엇이라고|뭐라\s*(?:해|불러)|라고\s*(?:불|부르)|"
    r"(?:방식|형태)의\s*\S+(?:은|는)\s*\??\s*$|what is (?:it|this) called|which type|what kind of",
    re.IGNORECASE,
)
_TERM_DEFINED = re.compile(r"^\s*[‘'\"]?([A-Za-z][A-Za-z0-9\-]*|[가-힣]{2,10})[’'\"]?(?:\([^)]*\))?(?:은|는|이란|란)\s")
# Added to a line that carries the label a question names ("1부의 ISSUE 8은 어떤 기술을 다루나?": the
# "ISSUE 8_디지털 트윈: …" line, not ISSUE 1's, whose words are closer to the question's). On dev, model
# refitted: 0.05 and 0.1 the same answers, one near-topic question more declined than without.
LABEL_WEIGHT = 0.1
_LABEL = re.compile(r"\b(trend|issue|part)\s*(\d+)(?!\d)", re.IGNORECASE)
# A label named by its place: "the first 2023 trend", "the second part", "첫 번째 이슈", "두 번째 파트".
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "첫": 1, "두": 2, "세": 3, "네": 4, "다섯": 5, "여섯": 6, "일곱": 7, "여덟": 8,
    "아홉": 9, "열": 10,
}
_ORDINAL_LABEL = re.compile(
    r"\b(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth)\s+(?:\d{4}\s+)?(trend|issue|part)\b|"
    r"(첫|두|세|네|다섯|여섯|일곱|여덟|아홉|열)\s*번째\s*(트렌드|이슈|파트)",
    re.IGNORECASE,
)
_LABEL_WORDS = {"트렌드": "trend", "이슈": "issue", "파트": "part"}
# The book's introduction is headed "들어가며_ …", its closing "나가며"; a reader may call them otherwise.
_SECTIONS = (
    (re.compile(r"들어가며|머리말|서문|\b(?:introduction|preface|foreword|prologue)\b", re.IGNORECASE), "들어가며"),
    (re.compile(r"나가며|맺음말|\b(?:epilogue|afterword|closing chapter)\b", re.IGNORECASE), "나가며"),
)


def named_labels(question: str) -> list[tuple[str, int | str]]:
    """The TREND, ISSUE or part labels a question names, by number or by place ("the first 2023 trend": trend 1),
    and the book's introduction or closing when its title is asked ("the title of the book's introduction":
    들어가며)."""
    labels = [(kind.lower(), int(number)) for kind, number in _LABEL.findall(question)]
    for match in _ORDINAL_LABEL.finditer(question):
        ordinal, kind = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        labels.append((_LABEL_WORDS.get(kind, kind.lower()), _ORDINALS[ordinal.lower()]))
    # Only its title: "서문은 … 무엇을 해야 한다고 말하나요?" asks what the introduction says, not its heading.
    if _TITLE_ASKED.search(question):
        labels += [("section", heading) for pattern, heading in _SECTIONS if pattern.search(question)]
    return labels


def _label_line(kind: str, number: int | str) -> re.Pattern[str]:
    """A line carrying the label: "TREND 1 …", "ISSUE 8_…", a part as "Part 2" or "2부", a section by its
    heading ("들어가며_ …")."""
    if kind == "section":
        return re.compile(rf"^\s*{number}")
    if kind == "part":
        return re.compile(rf"\bpart\s*{number}(?!\d)|(?<!\d){number}\s*부", re.IGNORECASE)
    return re.compile(rf"\b{kind}\s*{number}(?!\d)", re.IGNORECASE)
# A comparison asked ("X와 Y의 차이는?", "X는 Y와 달리", "How does X differ from Y?"; not "다른 업종보다") is
# answered by each side: the best sentence whose topic is a compared subject joins when within SIDE_MARGIN of
# the best. On dev, answers holding the gold answer 0.852 -> 0.861 (0.05) -> 0.864 (0.1), at 1.53 -> 1.57
# sentences an answer; the decision is unchanged (it is made on the quote).
_COMPARISON_ASKED = re.compile(
    r"차이|다른\s*(?:가|지|점|데|건|거)|다르|다를|비교|달리|반면|\bvs\b|differ|compared|versus|unlike", re.IGNORECASE
)
SIDE_MARGIN = 0.1
# Added to a heading or table-of-contents line when the question asks about a title or the contents ("클라우드
# 장의 첫 절 제목은…", "According to the first 2023 trend title…"). On dev, model refitted: 0.03 two more answers
# holding the gold answer and out-of-fold near-topic recall 0.867 -> 0.877 at false abstentions 0.028 -> 0.026;
# 0.05 the same answers, 0.1 one fewer. (On the first 214 dev questions it had traded one for another.)
TITLE_WEIGHT = 0.03
_TITLE_ASKED = re.compile(r"제목|목차|\btitle|contents page|table of contents|\bheading", re.IGNORECASE)
# Lines shorter than this ("차례", a lone label) are neither answers nor evidence.
MIN_SENTENCE_CHARS = 4
# The next sentence of the best one's paragraph joins the quote when scoring within this margin of it
# (the best often introduces what the next one says); other sentences join within ANSWER_MARGIN.
# Chosen on the dev part: the most answers containing the gold answer at no more than 2 sentences on average.
FOLLOWER_MARGIN = 0.1
ANSWER_MARGIN = 0.01
MAX_ANSWER_SENTENCES = 3
# A why or how question's best sentence often states what is asked about ("초창기 스타트업에게 클라우드는 큰
# 기회로 작용했다") and the next one explains it: its follower always joins. On dev, containment 0.837 →
# 0.844 (why/how 0.750 → 0.800) at 1.50 → 1.55 sentences an answer; requiring the best sentence to hold
# half the question's words first gives the same.
EXPLAINED_BY_FOLLOWER = frozenset({"reason", "manner"})
# The signals of a decision, in the order the abstention model's coefficients are stored.
FEATURES = (
    "score",
    "cosine",
    "margin",
    "spread",
    "typed",
    "type_missing",
    "name_missing",
    "coverage",
    "book_term_coverage",
    "subject_missing",
    "book_coverage",
    "noun_book_coverage",
    "passage_coverage",
    "heading",
    "english",
    "english_cosine",
    "english_margin",
    "english_type_missing",
    "number_missing",
    "fact_context",
    "fact_sentence_coverage",
)
# Signal groups as the ablation removes them (eval/fit_abstention.py).
SIGNAL_GROUPS: dict[str, tuple[str, ...]] = {
    "sentence score and margin": ("score", "cosine", "margin", "spread"),
    "answer type": ("typed", "type_missing", "name_missing", "english_type_missing"),
    "key-content coverage (sentence + heading)": (
        "coverage",
        "book_term_coverage",
        "subject_missing",
        "number_missing",
        "fact_context",
        "fact_sentence_coverage",
    ),
    "lexical evidence (book, passages)": ("book_coverage", "noun_book_coverage", "passage_coverage"),
    "heading line": ("heading",),
    "language": ("english", "english_cosine", "english_margin", "english_type_missing"),
}
# Answer types whose check is exact (a date, a number, a place, a person, a company the sentence calls one)
# rather than any name in the sentence.
# Answer types that ask for a figure or a date, whose quoted fact must be the question's (fact context checks).
FIGURE_TYPES = frozenset({"date", "percent", "money", "quantity", "number"})
STRICT_TYPES = frozenset({"date", "percent", "money", "quantity", "number", "place", "person", "organization"})
# An organisation is a name the sentence calls one: "계열사인 그라운드X", "가전기업 하이어", "Kakao Corp".
_ORGANISATION_NOUN = re.compile(
    r"기업|회사|계열사|자회사|업체|은행|그룹|사업자|기관|부처|정부|협회|재단|연구소|대학|스타트업|빅테크|社|"
    r"\b(?:company|corp|inc|bank|group|firm)\b",
    re.IGNORECASE,
)
ORGANISATION_WINDOW = 10
# Words a reader uses about the book itself (its author, titles, contents, parts), which its own text
# never needs: a question using them is still about the book.
BOOK_SELF_WORDS = frozenset(
    "저자 작가 글쓴이 제목 소제목 목차 장 절 챕터 파트 이슈 서문 머리말 들어가며 나가며 author title chapter contents".split()
)
# One place under its other names, so "우리나라" and "국내" are the same country and an English question's
# "German" is the book's 독일.
PLACE_NAMES = {
    "우리나라": "한국", "국내": "한국", "대한민국": "한국", "korea": "한국", "korean": "한국", "germany": "독일",
    "german": "독일", "america": "미국", "american": "미국", "china": "중국", "chinese": "중국", "japan": "일본",
    "japanese": "일본", "britain": "영국", "british": "영국", "france": "프랑스", "french": "프랑스",
    "denmark": "덴마크", "danish": "덴마크", "europe": "유럽", "european": "유럽", "eu": "유럽", "usa": "미국",
    "uk": "영국",
}
# "가장 많이 모은 회사", "처음 쓴 사람", "the first to": the quote must single one out too (가장, 최초,
# 처음, 대표적, 1위…); a sentence listing companies that offer the service does not say which leads.
# English "most" alone often means "the majority" (대부분), so only its superlative forms count.
_SUPERLATIVE_ASKED = re.compile(
    r"가장|제일|최초|처음|최대|최고|\bthe most\b|\bfirst\b|\b(?:largest|biggest|highest|lowest|cheapest|earliest)\b",
    re.IGNORECASE,
)
_SUPERLATIVE = re.compile(r"가장|제일|최초|처음|최대|최고|1위|으뜸|선두|대표적|흔히|잘 알려진|많이|첫")
# "2019년 이후 얼마나 늘었나", "How much did … grow": a change is asked, and a figure of one moment
# ("2019년 기준 기업의 24%") does not give it; the quote must say something rose, fell or changed.
_CHANGE_ASKED = re.compile(
    r"얼마나\s*(늘|증가|줄|감소|성장|올랐|오르|떨어|하락|상승|커졌|작아)|(증가|감소|상승|하락)(율|률|폭)|"
    r"\bhow much (did|has|have|will)\b.*\b(grow|increase|rise|fall|drop|decline|change)|\bby how much\b",
    re.IGNORECASE,
)
_CHANGE = re.compile(r"증가|늘어|늘었|늘린|줄어|줄었|감소|성장|상승|하락|올랐|올라|떨어|커지|커졌|급증|급감|확대|축소|\d+배|전년")
_ASKED_AND_SAID = ((_SUPERLATIVE_ASKED, _SUPERLATIVE), (_CHANGE_ASKED, _CHANGE))
_MONTH_ASKED = re.compile(r"몇\s*월|어느\s*달|무슨\s*달|what month|which month", re.IGNORECASE)
_MONTH = re.compile(r"\d{1,2}월|january|february|march|april|may|june|july|august|september|october|november|december", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# "4차 산업혁명", "1부": a number that places, not one that counts; it answers "how many" only when the
# question counts in that unit too ("몇 부로 나뉘어").
_ORDINAL_COUNT = re.compile(r"\d+(차|부)")
_SPACES = re.compile(r"\s+")


def _squash(text: str) -> str:
    return _SPACES.sub("", text).lower()


class BookVocabulary:
    """How rare each morpheme is among the book's sentences, and the morphemes of every heading.

    Built once per service from the index's precomputed sentence morphemes (no Kiwi). A heading in a
    heading path is a heading or table-of-contents line of the book, so its morphemes are that line's.
    """

    def __init__(self, engine: SearchEngine) -> None:
        seen: set[tuple[str, int, int]] = set()
        frequency: dict[str, int] = {}
        heading_terms: dict[str, frozenset[str]] = {}
        for chunk in engine.chunks():
            for sentence in chunk.sentences:
                key = (chunk.doc, sentence.start, sentence.end)
                if key in seen:
                    continue
                seen.add(key)
                for term in set(sentence.terms):
                    frequency[term] = frequency.get(term, 0) + 1
                if sentence.kind != "text":
                    heading_terms.setdefault(chunk.sentence_text(sentence).strip(), frozenset(sentence.terms))
        self.n_sentences = max(len(seen), 1)
        self._frequency = frequency
        self._heading_terms = heading_terms
        self.max_idf = self.idf("\0")

    def idf(self, term: str) -> float:
        """Smoothed inverse sentence frequency; a morpheme the book never uses gets the largest."""
        return math.log((self.n_sentences + 1) / (self._frequency.get(term, 0) + 1)) + 1.0

    def in_book(self, term: str) -> bool:
        return term in self._frequency

    def heading_terms(self, heading_path: Iterable[str]) -> frozenset[str]:
        """The morphemes of the headings above a sentence."""
        terms: set[str] = set()
        for heading in heading_path:
            terms |= self._heading_terms.get(heading.strip(), frozenset())
        return frozenset(terms)


@dataclass(frozen=True)
class Candidate:
    """A sentence of the retrieved passages as a possible quote, with what it shows of the question."""

    sentence: SentenceMatch
    overlap: float
    typed_facts: tuple[FactSpan, ...]
    score: float
    # Position among the retrieved sentences (chunk order, then sentence order), to find its neighbour.
    position: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.sentence.doc, self.sentence.start, self.sentence.end)


@dataclass
class Evidence:
    """What a decision is made on: the question's frame, the ranked candidates, the quote and its signals."""

    frame: QuestionFrame
    candidates: list[Candidate]
    quote: list[Candidate]
    features: dict[str, float]
    covered_nouns: tuple[str, ...] = ()
    extra: list[Candidate] = field(default_factory=list)

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None


def _typed_facts(match: SentenceMatch, frame: QuestionFrame, question: str) -> tuple[FactSpan, ...]:
    """The sentence's facts of the asked kind that are not just repeating the question's own words."""
    if not frame.checkable:
        return ()
    kinds = SATISFIED_BY[frame.answer_type]
    asked = _squash(question)
    # "몇 년 몇 월에": a year alone does not answer it.
    month_asked = frame.answer_type == "date" and _MONTH_ASKED.search(question) is not None
    facts = []
    for fact in match.facts:
        if fact.kind not in kinds:
            continue
        text = _squash(match.text[fact.start - match.start : fact.end - match.start])
        if month_asked and not _MONTH.search(text):
            continue
        # "1개당 가격" is a rate, not a count; "3개국" counts countries, and does not answer "몇 명".
        if fact.kind == "quantity" and match.text[fact.end - match.start :].startswith("당"):
            continue
        if frame.counters and (fact.kind != "quantity" or not text.endswith(tuple(frame.counters))):
            continue
        ordinal = _ORDINAL_COUNT.fullmatch(text)
        if ordinal and frame.answer_type in ("quantity", "number") and not re.search(rf"몇\s*{ordinal.group(1)}", question):
            continue
        if frame.answer_type == "organization":
            around = match.text[
                max(0, fact.start - match.start - ORGANISATION_WINDOW) : fact.end - match.start + ORGANISATION_WINDOW
            ]
            if not _ORGANISATION_NOUN.search(around):
                continue
        if text and text not in asked:
            facts.append(fact)
    return tuple(facts)


def near_word_share(
    query_terms: Collection[str], sentence_terms: Collection[str], neighbours: Mapping[str, Mapping[str, float]]
) -> float:
    """Mean over the question's words the sentence lacks of the cosine of its nearest neighbour the sentence has.

    Words the sentence has count 0 here (the lexical overlap counts them); a word without neighbours counts 0.
    """
    if not query_terms:
        return 0.0
    total = 0.0
    for term in query_terms:
        near = neighbours.get(term)
        if near and term not in sentence_terms:
            total += max((near[form] for form in sentence_terms if form in near), default=0.0)
    return total / len(query_terms)


def _weighted_share(terms: Sequence[str], present: Iterable[bool], vocabulary: BookVocabulary) -> float:
    weights = [vocabulary.idf(term) for term in terms]
    total = sum(weights)
    return sum(w for w, hit in zip(weights, present) if hit) / total if total else 0.0


def gather_evidence(
    engine: SearchEngine,
    vocabulary: BookVocabulary,
    question: str,
    query: str,
    passages: Sequence[Passage],
) -> Evidence:
    """Candidates, quote and signals for `question` (the user's words) over `passages` retrieved for `query`.

    `query` is the question with earlier turns of the conversation, so a follow-up keeps its subject;
    the asked kind of answer comes from the question alone.
    """
    frame = frame_question(question, engine.query_terms(query), engine.query_tokens(query))
    query_terms = set(engine.query_terms(query))
    cue_bonus = wording_bonus(frame)
    seen: set[tuple[str, int, int]] = set()
    matches: list[SentenceMatch] = []
    for match in engine.sentence_matches(query, [passage.chunk_id for passage in passages]):
        key = (match.doc, match.start, match.end)
        if key not in seen and len(match.text.strip()) >= MIN_SENTENCE_CHARS:
            seen.add(key)
            matches.append(match)
    # Only the question's words no retrieved sentence has are the reader's own: a word some sentence has
    # already tells them apart, and each lookup costs ~3 ms the first time a word is seen.
    passage_words = set().union(*(match.terms for match in matches))
    neighbours = engine.query_neighbours(query, query_terms - passage_words)
    candidates: list[Candidate] = []
    for match in matches:
        sentence_terms = set(match.terms)
        overlap = len(query_terms & sentence_terms) / len(query_terms) if query_terms else 0.0
        typed = _typed_facts(match, frame, query)
        score = (
            match.cosine
            + LEXICAL_WEIGHT * overlap
            + NEAR_WORD_WEIGHT * near_word_share(query_terms, sentence_terms, neighbours)
            + (TYPE_WEIGHT if typed else 0.0)
            + cue_bonus(match.text, match.kind)
        )
        candidates.append(Candidate(match, overlap, typed, score, len(candidates)))
    by_position = list(candidates)
    candidates.sort(key=lambda c: (-c.score, c.position))
    if not candidates:
        return Evidence(frame, [], [], empty_features(frame))

    best = candidates[0]
    quote = [best]
    follower = _next_in_paragraph(engine, by_position, best, across_heading=best.sentence.kind == "heading")
    if follower is not None and (
        (frame.checkable and not best.typed_facts and follower.typed_facts)
        or best.sentence.text.rstrip().endswith("?")  # "이들의 공통점은 뭘까?" asks what the next one answers
        or follower.score >= best.score - FOLLOWER_MARGIN
        or frame.answer_type in EXPLAINED_BY_FOLLOWER
    ):
        quote.append(follower)

    key_terms = frame.key_terms
    evidence_terms: set[str] = set()
    for candidate in quote:
        evidence_terms |= _terms_with_headings(candidate, vocabulary)
    passage_terms = set(passage_words)
    for candidate in candidates:
        passage_terms |= vocabulary.heading_terms(candidate.sentence.heading_path)
    # The question's words the book uses somewhere: a quote missing one of these (한국 when the quote is
    # about 덴마크) is about a neighbouring subject; words the book never uses are the reader's own wording.
    book_terms = [t for t in key_terms if vocabulary.in_book(t)]
    nouns = [noun.lower() for noun in frame.nouns]
    subject = max(book_terms, key=vocabulary.idf) if book_terms else None
    second = candidates[1].score if len(candidates) > 1 else 0.0
    english = 1.0 if frame.lang == "en" else 0.0
    cosine = max(c.sentence.cosine for c in quote)
    margin = best.score - second
    type_missing = frame.checkable and not any(c.typed_facts for c in quote)
    # "한국 기업의 AI 도입률" quoted with "덴마크의 경우 … 24%": a figure, but another country's.
    type_missing = type_missing or (frame.checkable and _place_mismatch(frame, quote, evidence_terms))
    quoted_text = " ".join(
        text for c in quote for text in (c.sentence.text, *c.sentence.heading_path, *_enclosing_part(engine, c))
    )
    # "가장 많이 모은 회사" quoted with a list, "얼마나 늘었나" with one moment's figure: the quote lacks what
    # the question's wording asks it to say.
    type_missing = type_missing or (
        frame.checkable
        and any(asked.search(question) and not said.search(quoted_text) for asked, said in _ASKED_AND_SAID)
    )
    # "What does CBDC stand for?" quoted with a title that names CBDC: an expansion asked, none written.
    # An expansion is as exact an answer as a date: it counts with the strict kinds.
    expansion_missing = bool(frame.expansions) and not any(
        _expands(c.sentence.text, acronym) for c in quote for acronym in frame.expansions
    )
    # "2024년 … 전망" quoted with "2023 전망": a number of the question the quote and its headings lack.
    # Found as text ("3" is in "2023"): whole-number matching lost a dev near-topic question out of fold.
    number_missing = any(n not in quoted_text for n in _NUMBER.findall(question))
    features = {
        "score": best.score,
        "cosine": cosine,
        "margin": margin,
        # A question the book is about has one sentence far above the rest; an off-topic one, none.
        "spread": best.sentence.cosine - sum(c.sentence.cosine for c in candidates) / len(candidates),
        "typed": 1.0 if frame.checkable else 0.0,
        "type_missing": 1.0 if (type_missing and frame.answer_type in STRICT_TYPES) or expansion_missing else 0.0,
        "name_missing": 1.0 if type_missing and frame.answer_type not in STRICT_TYPES else 0.0,
        "coverage": _weighted_share(key_terms, [t in evidence_terms for t in key_terms], vocabulary),
        "book_term_coverage": _weighted_share(book_terms, [t in evidence_terms for t in book_terms], vocabulary)
        if book_terms
        else 0.0,
        "subject_missing": 1.0 if subject is not None and subject not in evidence_terms else 0.0,
        "book_coverage": _weighted_share(key_terms, [_about_book(t, vocabulary) for t in key_terms], vocabulary),
        # Off-topic questions share verbs with the book (좋다, 먹다) but not nouns (날씨, 라면). The book is
        # Korean, so an English question's nouns say nothing of this: they count as covered.
        "noun_book_coverage": 1.0
        if english
        else _weighted_share(nouns, [_about_book(t, vocabulary) for t in nouns], vocabulary),
        "passage_coverage": _weighted_share(key_terms, [t in passage_terms for t in key_terms], vocabulary),
        "heading": 1.0 if best.sentence.kind != "text" else 0.0,
        "english": english,
        "english_cosine": english * cosine,
        "english_margin": english * margin,
        "english_type_missing": english * (1.0 if type_missing else 0.0),
        "number_missing": 1.0 if number_missing else 0.0,
        "fact_context": _fact_context(quote, frame, vocabulary),
        "fact_sentence_coverage": _fact_sentence_coverage(quote, frame, vocabulary),
    }
    covered = tuple(noun for noun in frame.nouns if any(t in evidence_terms for t in _noun_terms(noun)))
    extra = [
        c
        for c in candidates[1:]
        if c.score >= best.score - ANSWER_MARGIN
        and c.key not in {q.key for q in quote}
        and (not frame.checkable or c.typed_facts)
    ][: max(0, MAX_ANSWER_SENTENCES - len(quote))]
    if _COMPARISON_ASKED.search(question):
        extra += _compared_sides(frame, candidates, [*quote, *extra], vocabulary)
        extra = extra[: max(0, MAX_ANSWER_SENTENCES - len(quote))]
    return Evidence(frame, candidates, quote, features, covered, extra)


def _compared_sides(
    frame: QuestionFrame, candidates: Sequence[Candidate], quoted: Sequence[Candidate], vocabulary: BookVocabulary
) -> list[Candidate]:
    """For a comparison ("퍼블릭 클라우드와 프라이빗 클라우드의 차이는?"), the best sentence about each compared
    subject the quote does not already make its topic ("프라이빗은 …"), within SIDE_MARGIN of the best."""
    best = candidates[0].score
    keys = {c.key for c in quoted}
    texts = [c.sentence.text for c in quoted]
    sides: list[Candidate] = []
    for noun in frame.nouns:
        if len(noun) < 2 or not vocabulary.in_book(noun.lower()):
            continue
        topic = re.compile(rf"^[^,]{{0,15}}{re.escape(noun)}\S*?(?:은|는|이란|란)\s", re.IGNORECASE)
        if any(topic.search(text) for text in texts):
            continue
        for candidate in candidates:
            if candidate.score < best - SIDE_MARGIN:
                break
            if candidate.key not in keys and topic.search(candidate.sentence.text):
                sides.append(candidate)
                keys.add(candidate.key)
                texts.append(candidate.sentence.text)
                break
    return sides


# A part line of the table of contents ("1부 디지털 트렌드 2022 리뷰"), which the issues and trends listed
# under it belong to.
_PART_LINE = re.compile(r"^[ \t]*(?:\d+\s*부|part\s*\d+)\b.*$", re.IGNORECASE | re.MULTILINE)


def _enclosing_part(engine: SearchEngine, candidate: Candidate) -> tuple[str, ...]:
    """The part line a table-of-contents line is listed under, so "1부 ISSUE 9" finds its "1" in it."""
    if candidate.sentence.kind != "toc":
        return ()
    before = engine.document_text(candidate.sentence.doc)[: candidate.sentence.start]
    parts = _PART_LINE.findall(before)
    return (parts[-1].strip(),) if parts else ()


def _places(terms: Iterable[str]) -> set[str]:
    return {PLACE_NAMES.get(term, term) for term in terms if term in PLACES or term in PLACE_NAMES}


# Place names Kiwi splits into common words (우리 + 나라), so they are found in the question as written.
_WRITTEN_PLACES = ("우리나라",)


def _asked_places(frame: QuestionFrame) -> set[str]:
    """The places a question asks about, under one name each ("우리나라", "국내", "Korean" → 한국)."""
    return _places(frame.key_terms) | _places(name for name in _WRITTEN_PLACES if name in frame.text)


def _place_mismatch(frame: QuestionFrame, quote: Sequence[Candidate], evidence_terms: set[str]) -> bool:
    """The question is about a place the quote and its headings never name, while the quote names another:
    "한국 기업의 AI 도입률" quoted with "덴마크의 경우 … 24%" is the book's figure for another country."""
    asked = _asked_places(frame)
    quoted = _places(term for candidate in quote for term in candidate.sentence.terms)
    return bool(asked and quoted and not asked & _places(evidence_terms))


def _about_book(term: str, vocabulary: BookVocabulary) -> bool:
    return vocabulary.in_book(term) or term in BOOK_SELF_WORDS or BOOK_PART.fullmatch(term) is not None


def _fact_context(quote: Sequence[Candidate], frame: QuestionFrame, vocabulary: BookVocabulary) -> float:
    """How much a quoted figure or date is the question's: the question's key words just before it (at most 1).

    "한국 기업의 도입률은 몇 퍼센트" quoted with "덴마크의 경우 … 기업의 24%" has a percent, but not Korea's.
    Other kinds of question get 1 (names carry their own check in `answer_span`), and so do English ones:
    their words are never in the Korean text, so their absence says nothing.
    """
    if frame.lang == "en" or frame.answer_type not in FIGURE_TYPES:
        return 1.0
    best = 0.0
    for candidate in quote:
        occurrences = _key_term_occurrences(candidate.sentence, frame, vocabulary)
        for fact in candidate.typed_facts:
            best = max(best, _context_weight(fact, occurrences))
    return min(best, 1.0)


def _fact_sentence_coverage(quote: Sequence[Candidate], frame: QuestionFrame, vocabulary: BookVocabulary) -> float:
    """How much of the question the quoted sentence holding the asked figure or date covers, with its headings.

    "오픈뱅킹 시스템은 언제 도입되었나?" quoted with "…종합지급결제업 도입을 추진하고 있고 2023년…" after a
    sentence naming 오픈뱅킹: the date is in a sentence about something else. Other kinds of question, English
    ones (their words are never in the Korean text) and quotes without such a fact get 1.
    """
    if frame.lang == "en" or frame.answer_type not in FIGURE_TYPES:
        return 1.0
    typed = [c for c in quote if c.typed_facts]
    if not typed or not frame.key_terms:
        return 1.0
    shares = []
    for candidate in typed:
        terms = _terms_with_headings(candidate, vocabulary)
        shares.append(_weighted_share(frame.key_terms, [t in terms for t in frame.key_terms], vocabulary))
    return max(shares)


def _terms_with_headings(candidate: Candidate, vocabulary: BookVocabulary) -> set[str]:
    """A quoted sentence's morphemes with those of the headings above it: what it says, in its context."""
    return set(candidate.sentence.terms) | vocabulary.heading_terms(candidate.sentence.heading_path)


def _key_term_occurrences(
    sentence: SentenceMatch, frame: QuestionFrame, vocabulary: BookVocabulary
) -> list[tuple[int, int, float]]:
    """Where the question's key words occur in the sentence (document offsets), each with its scaled rarity."""
    lowered = sentence.text.lower()
    return [
        (sentence.start + match.start(), sentence.start + match.end(), vocabulary.idf(term) / vocabulary.max_idf)
        for term in frame.key_terms
        if len(term) > 1
        for match in re.finditer(re.escape(term), lowered)
    ]


def _context_weight(fact: FactSpan, occurrences: Sequence[tuple[int, int, float]]) -> float:
    """The rarity of the key words ending just before a fact: Korean puts the subject before its figure."""
    return sum(weight for _, end, weight in occurrences if fact.start - FACT_CONTEXT_CHARS <= end <= fact.start)


def wording_bonus(frame: QuestionFrame) -> Callable[[str, str], float]:
    """What a sentence's wording (and a line's kind) adds to its score for this question: the acronym spelled
    out, the comparison drawn, a term defined, the label named ("ISSUE 8"), a title line for a question about a
    title, when the question asks for that (each weight's comment says why)."""
    question = frame.text
    acronyms = frame.expansions
    simile_asked = _SIMILE_ASKED.search(question) is not None
    term_asked = _TERM_ASKED.search(question) is not None
    asked = _squash(question)
    named = named_labels(question)
    # "In part 2, which trend …", "In Part 1, … ISSUE 9": the part only says where to look.
    if frame.answer_type == "ordinal" or any(kind != "part" for kind, _ in named):
        named = [(kind, number) for kind, number in named if kind != "part"]
    labels = [_label_line(kind, number) for kind, number in named]

    title_asked = _TITLE_ASKED.search(question) is not None

    def bonus(sentence: str, line_kind: str = "text") -> float:
        total = 0.0
        if title_asked and line_kind != "text":
            total += TITLE_WEIGHT
        if labels and any(label.search(sentence) for label in labels):
            total += LABEL_WEIGHT
        if acronyms and any(_expands(sentence, acronym) for acronym in acronyms):
            total += EXPANSION_WEIGHT
        if simile_asked and _SIMILE.search(sentence):
            total += SIMILE_WEIGHT
        if term_asked:
            defined = _TERM_DEFINED.match(sentence)
            if defined and _squash(defined.group(1)) not in asked:
                total += TERM_WEIGHT
        return total

    return bonus


def _expands(sentence: str, acronym: str) -> bool:
    """Whether the sentence spells `acronym` out: `IaaS(Infrastructure as a Service)`, `… Token(NFT)` or
    `(CPS, Cyber Physical System)`."""
    escaped = re.escape(acronym)
    spelled_after = rf"(?<![A-Za-z0-9]){escaped}\s*\(\s*[A-Za-z][A-Za-z\-]*(\s+[A-Za-z][A-Za-z\-]*)+"
    spelled_before = rf"\([^()]*(?<![A-Za-z0-9]){escaped}\)"
    spelled_inside = rf"\(\s*{escaped}\s*,\s*[A-Za-z][A-Za-z\-]*(\s+[A-Za-z][A-Za-z\-]*)+"
    return re.search(f"{spelled_after}|{spelled_before}|{spelled_inside}", sentence) is not None


def empty_features(frame: QuestionFrame) -> dict[str, float]:
    """The signals when nothing was retrieved: no match, no coverage."""
    english = 1.0 if frame.lang == "en" else 0.0
    features = dict.fromkeys(FEATURES, 0.0)
    strict = frame.answer_type in STRICT_TYPES
    features.update(
        typed=1.0 if frame.checkable else 0.0,
        type_missing=1.0 if frame.checkable and strict else 0.0,
        name_missing=1.0 if frame.checkable and not strict else 0.0,
        english=english,
        english_type_missing=english * (1.0 if frame.checkable else 0.0),
    )
    return features


def _noun_terms(noun: str) -> tuple[str, ...]:
    return (noun.lower(),)


def _covers(noun: str, terms: set[str] | frozenset[str]) -> bool:
    return noun.lower() in terms


def _next_in_paragraph(
    engine: SearchEngine, ordered: Sequence[Candidate], candidate: Candidate, across_heading: bool = False
) -> Candidate | None:
    """The sentence after `candidate` in the same chunk and paragraph (no line break between), if retrieved.

    After a section heading (`across_heading`), the first sentence of its section: a title alone says little.
    """
    index = candidate.position + 1
    if index >= len(ordered):
        return None
    follower = ordered[index]
    here, there = candidate.sentence, follower.sentence
    if follower.sentence.chunk_id != here.chunk_id or there.start < here.end:
        return None
    between = engine.document_text(here.doc)[here.end : there.start]
    return follower if across_heading or "\n" not in between else None


# A fact answers for the question's words written just before it ("중소기업의 5%"): this many characters.
FACT_CONTEXT_CHARS = 12
# Fact kinds that are figures: each belongs to the place named before it ("독일은 전체 기업 중 6%").
FIGURE_FACTS = frozenset({"percent", "money", "quantity", "date"})


def answer_span(candidate: Candidate, frame: QuestionFrame, vocabulary: BookVocabulary) -> tuple[int, int] | None:
    """Document offsets of the fact in the quoted sentence that answers the question, or None.

    Of the sentence's facts of the asked kind, the one the question's key words lead up to: Korean puts
    the subject before its figure (덴마크의 경우 … 기업의 24%, 중소기업의 5%), so each fact scores the rarity
    (idf, scaled to at most 1) of the key words ending just before it. A name repeating the question's subject never answers it,
    and of names the rarer one wins (그라운드X over 블록체인, which the book uses everywhere).
    """
    facts = candidate.typed_facts
    if not facts:
        return None
    sentence = candidate.sentence
    occurrences = _key_term_occurrences(sentence, frame, vocabulary)

    asked = frame.text
    unit = re.search(r"몇\s*([가-힣%]+?)(?:이나|이야|야|요|인가|인지|을|를|가|이|은|는|에|\s|\?|$)", asked)
    acronym_asked = re.search(r"\b[A-Z]{2,}\d*\b", asked) is not None
    expansion_asked = EXPANSION_ASKED.search(asked) is not None

    def preference(fact: FactSpan, text: str) -> float:
        """What the question's wording says about the fact it wants: its unit, an acronym or its expansion, a title."""
        if unit and fact.kind in ("quantity", "percent", "money") and text.endswith(unit.group(1)):
            return 1.0  # 몇 곳 → 60곳, not 5%
        if re.search(r"약자|stand for|abbreviat", asked, re.IGNORECASE) and fact.kind == "name":
            is_acronym = re.fullmatch(r"[A-Z]{2,}\d*", text) is not None
            return 1.0 if is_acronym != acronym_asked else 0.0  # 영어 약자는? → CPS; CPS stands for → the words
        if re.search(r"제목|title", asked, re.IGNORECASE) and fact.kind == "title":
            return 1.0
        return 0.0

    def following(fact: FactSpan) -> float:
        """The rarity of the key words starting just after a fact, at half weight: "56% 인공지능 활용계획조차
        없다고" is the share with no plan, whatever comes before it."""
        return 0.5 * sum(w for start, _, w in occurrences if fact.end <= start <= fact.end + FACT_CONTEXT_CHARS)

    # "덴마크의 경우 … 기업의 24%, … 독일은 전체 기업 중 6%": a figure is the last named place's.
    places_asked = _asked_places(frame)
    places = [
        (f.start, PLACE_NAMES.get(name, name))
        for f in sentence.facts
        if f.kind == "place"
        for name in [sentence.text[f.start - sentence.start : f.end - sentence.start].lower()]
    ]

    figures = sorted(f.end for f in sentence.facts if f.kind in FIGURE_FACTS)

    def elsewhere(fact: FactSpan) -> bool:
        """Another place is named last before the figure, and the asked one not since the previous figure
        ("유럽의 경우 영국, 프랑스, 독일 3개국" is still Europe's)."""
        scope = [place for start, place in places if start < fact.start]
        since = max((end for end in figures if end <= fact.start), default=sentence.start)
        recent = {place for start, place in places if since <= start < fact.start}
        return bool(places_asked and scope and scope[-1] not in places_asked and not recent & places_asked)

    def score(fact: FactSpan) -> float:
        raw = sentence.text[fact.start - sentence.start : fact.end - sentence.start]
        total = preference(fact, raw) + _context_weight(fact, occurrences) + following(fact)
        if fact.kind in FIGURE_FACTS and elsewhere(fact):
            total -= 1.0
        if fact.kind in ("name", "title", "place", "person"):
            text = _squash(sentence.text[fact.start - sentence.start : fact.end - sentence.start])
            if any(start < fact.end and fact.start < end for start, end, _ in occurrences):
                return float("-inf")  # 클레이튼의 NFT for a question about 클레이튼
            glossed = sentence.text[max(0, fact.start - sentence.start - 1) : fact.start - sentence.start] == "("
            if glossed and not expansion_asked and any(end == fact.start - 1 for _, end, _ in occurrences):
                return float("-inf")  # 오픈 파이낸스(Open Finance): the question's own word, glossed
            total += vocabulary.idf(text) / vocabulary.max_idf
            # Who made or runs something is the sentence's subject: 그라운드X가 … 개발한.
            after = sentence.text[fact.end - sentence.start : fact.end - sentence.start + 2]
            if frame.answer_type in ("organization", "person") and re.match(r"[가이은는]\s", after):
                total += 1.0
        return total

    scored = sorted(((score(f), f) for f in facts), key=lambda pair: (-pair[0], pair[1].start, pair[1].start - pair[1].end))
    best_score, best = scored[0]
    if best_score == float("-inf") or (best.kind in FIGURE_FACTS and elsewhere(best)):
        return None  # every figure of the sentence is another place's
    # A sentence has many names and "뭐라고 해?" says little of which: only a name the question's words lead
    # up to, or the expansion or title it asks for, is marked (else the reader gets the sentence, unmarked).
    # Words after a name are what the name does ("IT 자원을 빌려"), not what it is called.
    if frame.answer_type == "name":
        raw = sentence.text[best.start - sentence.start : best.end - sentence.start]
        if not (preference(best, raw) or _context_weight(best, occurrences)):
            return None
    return (best.start, best.end)
