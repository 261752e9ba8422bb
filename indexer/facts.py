"""Fact spans of a sentence: numbers with units, dates, places, names, people — found once, at index time.

An answer to "언제?" must hold a date, to "몇 퍼센트?" a percentage, to "어느 나라?" a place. Kiwi's
POS tags (SN numbers, NR numerals, NNP proper nouns, SL Latin words) and a few unit and place words
find these spans in a sentence, so answering only compares span kinds with the question's kind.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

FactKind = Literal["date", "percent", "money", "quantity", "place", "name", "person", "title"]
FACT_KINDS: tuple[FactKind, ...] = ("date", "percent", "money", "quantity", "place", "name", "person", "title")


@dataclass(frozen=True)
class Token:
    """A Kiwi token as facts need it: surface form, POS tag and `[start, end)` in the analysed text."""

    form: str
    tag: str
    start: int
    end: int


@dataclass(frozen=True)
class FactSpan:
    """A fact inside a text: its kind and `[start, end)` offsets (document offsets once stored in a chunk)."""

    kind: FactKind
    start: int
    end: int


_DATE_UNITS = frozenset({"년", "월", "일", "년도", "분기", "년대", "세기"})
_RELATIVE_DATES = frozenset({"내년", "올해", "작년", "금년", "내후년", "재작년", "지난해", "이듬해", "연내"})
_PERCENT_UNITS = frozenset({"%", "퍼센트", "프로", "％"})
_MONEY_UNITS = frozenset({"달러", "원", "유로", "엔", "위안", "파운드"})
_QUANTITY_UNITS = frozenset(
    "개 곳 명 가지 개국 배 세대 개사 건 종 대 위 차 번 살 시간 분 초 주 개월 층 호 차례 가구 인 점 단계 부 장".split()
)
# Numerals written as words: 수천 개, 절반, 세 가지.
_NUMERAL_WORDS = frozenset({"절반", "반", "수천", "수백", "수만", "수십", "수억", "대부분", "과반"})
_KOREAN_COUNTS = frozenset({"한", "두", "세", "네", "다섯", "여섯", "일곱", "여덟", "아홉", "열", "몇"})
# Countries, regions and cities (the book's and the common ones a reader asks about).
PLACES = frozenset(
    """
    한국 국내 미국 중국 일본 독일 영국 프랑스 덴마크 네덜란드 스페인 이탈리아 스위스 호주 캐나다 인도 러시아 대만 싱가포르
    스웨덴 핀란드 노르웨이 벨기에 오스트리아 이스라엘 브라질 멕시코 베트남 유럽 아시아 북미 남미 아프리카 중동 미중
    서울 부산 인천 대구 대전 광주 울산 세종 경기도 제주 판교 뉴욕 런던 파리 베를린 도쿄 베이징 상하이 칭다오 실리콘밸리 캘리포니아
    워싱턴 보스턴 시애틀 샌프란시스코 eu usa uk
    """.split()
)
_PERSON_TITLES = frozenset("씨 대표 회장 교수 의장 박사 사장 장관 총재 창업자 설립자 ceo 이사 위원장 기자 작가".split())
_QUOTES = re.compile(r"‘[^’]{1,60}’|“[^”]{1,60}”|'[^']{1,60}'|\"[^\"]{1,60}\"")
# A term glossed in brackets: 빅블러(Big Blur), 본인신용정보관리업(…); the gloss itself is an SL run.
_GLOSSED = re.compile(r"(?<![0-9A-Za-z가-힣\-])([0-9A-Za-z가-힣][0-9A-Za-z가-힣\-]{1,30})\([^()]{2,60}\)")


def _is_number(token: Token) -> bool:
    return token.tag in ("SN", "NR") or token.form in _NUMERAL_WORDS


def _number_span(tokens: Sequence[Token], i: int) -> tuple[int, FactSpan | None]:
    """The number starting at token i (with ranges like 5억~100억 and its unit); returns the next index."""
    start = tokens[i].start
    j = i
    # Digits, numeral words, ranges and decimals: 5억~100억, 3.0, 수천.
    while j + 1 < len(tokens) and tokens[j + 1].start - tokens[j].end <= 1 and (
        _is_number(tokens[j + 1]) or tokens[j + 1].form in ("~", "-", ".", ",", "～")
    ):
        if tokens[j + 1].form in ("~", "-", ".", ",", "～") and not (j + 2 < len(tokens) and _is_number(tokens[j + 2])):
            break
        j += 1
    end = tokens[j].end
    unit = tokens[j + 1] if j + 1 < len(tokens) and tokens[j + 1].start - end <= 1 else None
    first = tokens[i]
    if unit is not None:
        form = unit.form.lower()
        kind: FactKind | None = None
        if form in _DATE_UNITS:
            kind = "date"
        elif form in _PERCENT_UNITS:
            kind = "percent"
        elif form in _MONEY_UNITS:
            kind = "money"
        elif form in _QUANTITY_UNITS:
            kind = "quantity"
        if kind is not None:
            return j + 2, FactSpan(kind, start, unit.end)
    if first.tag == "SN" and j == i and re.fullmatch(r"(19|20)\d\d", first.form):
        return j + 1, FactSpan("date", start, end)  # a bare year: "디지털 트렌드 2022"
    if first.form in _NUMERAL_WORDS and first.form not in ("대부분",):
        return j + 1, FactSpan("quantity", start, end)
    return j + 1, None


def _names(tokens: Sequence[Token]) -> list[FactSpan]:
    """Runs of proper nouns and Latin words (with joined digits: ERC-721, Office 365) as names, places, people."""
    spans: list[FactSpan] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.tag not in ("NNP", "SL"):
            i += 1
            continue
        j = i
        while j + 1 < len(tokens) and tokens[j + 1].start - tokens[j].end <= 1 and (
            tokens[j + 1].tag in ("NNP", "SL")
            or (tokens[j + 1].tag in ("SN",) and tokens[j].tag == "SL")
            or (tokens[j + 1].form == "-" and j + 2 < len(tokens) and tokens[j + 2].tag in ("SN", "SL"))
        ):
            j += 1
        start, end = token.start, tokens[j].end
        forms = [t.form.lower() for t in tokens[i : j + 1]]
        if len(forms) == 1 and forms[0] in PLACES:
            spans.append(FactSpan("place", start, end))
        else:
            spans.append(FactSpan("name", start, end))
            nxt = tokens[j + 1] if j + 1 < len(tokens) else None
            if nxt is not None and nxt.form.lower() in _PERSON_TITLES and token.tag == "NNP":
                spans.append(FactSpan("person", start, nxt.end))
        i = j + 1
    return spans


# The label of a heading or table-of-contents line: TREND 3, ISSUE 5_, 2부, 들어가며_.
_TITLE_LABEL = re.compile(
    r"^(?:(?:trend|issue|part|chapter)\s*\d+|\d+\s*부|제\s*\d+\s*[부장]|들어가며|나가며)[\s_:.]*", re.IGNORECASE
)


def title_span(text: str) -> FactSpan | None:
    """A heading or table-of-contents line's title without its label: the name of a part, trend or section."""
    label = _TITLE_LABEL.match(text)
    start = label.end() if label else 0
    return FactSpan("title", start, len(text)) if len(text) - start >= 2 else None


def fact_spans(text: str, tokens: Sequence[Token]) -> list[FactSpan]:
    """Every fact span of `text` (offsets into `text`), in order of start; `tokens` are Kiwi's tokens of it."""
    spans: list[FactSpan] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if _is_number(token) or (token.form in _KOREAN_COUNTS and token.tag == "MM"):
            nxt, span = _number_span(tokens, i)
            if span is not None:
                spans.append(span)
            i = max(nxt, i + 1)
            continue
        if token.form in _RELATIVE_DATES:
            spans.append(FactSpan("date", token.start, token.end))
        elif token.tag in ("NNG", "NNP") and token.form.lower() in PLACES:
            spans.append(FactSpan("place", token.start, token.end))
        i += 1
    spans.extend(span for span in _names(tokens) if not any(s.kind == "place" and s.start == span.start for s in spans))
    for match in _QUOTES.finditer(text):
        spans.append(FactSpan("name", match.start() + 1, match.end() - 1))
    for match in _GLOSSED.finditer(text):
        spans.append(FactSpan("name", match.start(1), match.end(1)))
    unique = {(s.start, s.end, s.kind): s for s in spans}
    return sorted(unique.values(), key=lambda s: (s.start, s.end, s.kind))
