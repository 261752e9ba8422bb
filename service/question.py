"""What a question asks for: its language, the kind of answer it wants and its key content words.

"언제 시행돼?" wants a date, "몇 퍼센트?" a percentage, "어느 나라?" a place, "누가 창업했어?" a person.
Question words and Kiwi's POS tags of the question (one Kiwi call, cached by the engine) decide it;
English questions are read by their wh-words. Checking a candidate sentence for that kind of answer
is what tells "the book mentions the subject" from "the book answers the question".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from indexer.facts import FactKind, Token
from indexer.query import definition_term

AnswerType = Literal[
    "date", "percent", "money", "quantity", "number", "ordinal", "place", "person", "organization", "name",
    "definition", "reason", "manner", "other",
]
# Types a sentence can be checked for: it either holds a span of the kind or it does not answer.
CHECKABLE: frozenset[AnswerType] = frozenset(
    {"date", "percent", "money", "quantity", "number", "ordinal", "place", "person", "organization", "name"}
)
# Which fact spans (indexer.facts) satisfy each checkable type.
SATISFIED_BY: dict[AnswerType, frozenset[FactKind]] = {
    "date": frozenset({"date"}),
    "percent": frozenset({"percent"}),
    "money": frozenset({"money"}),
    "quantity": frozenset({"quantity", "percent"}),
    "number": frozenset({"quantity", "percent", "money"}),
    # "몇 번 트렌드?": TREND 3, ISSUE 8 are names with their number.
    "ordinal": frozenset({"name", "quantity"}),
    "place": frozenset({"place"}),
    "person": frozenset({"person"}),
    "organization": frozenset({"name"}),
    "name": frozenset({"name", "title"}),
}
# How an answer says what the book does not give (near-topic abstentions), by the asked type.
MISSING_PHRASE: dict[AnswerType, str] = {
    "date": "시기",
    "percent": "비율",
    "money": "금액",
    "quantity": "수",
    "number": "수치",
    "ordinal": "번호",
    "place": "장소",
    "person": "인물",
    "organization": "회사나 기관",
    "name": "이름",
    "reason": "이유",
}

_KO_RULES: tuple[tuple[AnswerType, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        (
            "date",
            r"언제|몇\s*년|몇\s*월|며칠|연도|시기|몇\s*해|(?:어느|무슨)\s*해(?:인|에|였|일|예|야|\s|\?|$)|(시작|출간|설립|창업|출시|발표|시행|도입|개정)(한|된|하는|되는)\s*해|해는\s*\??$",
        ),
        # "법률" is a law, not a rate.
        ("percent", r"몇\s*(퍼센트|%|프로)|비율|[가-힣]+(?<!법)률|점유율|퍼센트"),
        (
            "money",
            r"금액|가격(?!.{0,8}(정해|정하|결정|매겨|매기|방식))|거래액|연봉|자본금|매출액|얼마.{0,6}(들|내야|벌|주고|달러|원)|얼마(쯤|정도|씩)?\s*(한다|해요|해\?|해$|하나|하는지|했|하던|합니까|짜리)|(비용|요금|이용료|수수료|규모).{0,12}(얼마|어느\s*정도)",
        ),
        (
            "ordinal",
            r"몇\s*번\s*째|몇\s*번\s*(트렌드|이슈|장|절|부)|(트렌드|이슈|장|절|부|issue|trend)\S*\s*(는|은)?\s*몇\s*번|"
            r"몇\s*번\s*(이야|인가|이에요|이지|일까|이슈|트렌드)|어느\s*(트렌드|이슈|issue|trend)",
        ),
        ("quantity", r"몇\s*(명|곳|개(?!만)|가지(?!만)|개국|세대|번|배|개사|군데|살)|몇이나|인원"),
        # "얼마나 감당할 수 있나" asks a degree, "몇 개만 말해줘" a few of a list: neither a figure.
        ("number", r"얼마(?!나\s*(감당|감수|중요|어렵|어려|쉽|쉬|잘|자주|필요))|몇(?!\s*(개|가지)만)"),
        ("place", r"어느\s*(나라|도시|지역|국가|곳에)|(나라|도시|지역|국가)(들)?(은|는|이|가)?\s*어디|본사|어디에\s*(있|위치)|어디\s*(있|위치)"),
        (
            "person",
            r"(누가|누구).{0,6}(만들|세우|세운|창업|설립|제안|처음|썼|쓴|지었|개발)|"
            r"(만든|세운|창업한|설립한|제안한|처음 쓴|이끄는)\s*(사람|이)|창업자|설립자|"
            r"(사람|인물|대표|최고\s*경영자|경영자|CEO|회장|창시자|개발자)(은|는|이|가)?\s*누구|"
            # "이 책 쓴 기자분 이름이 뭐예요?": the name of a person.
            r"(기자|저자|작가|글쓴이|지은이|대표|창업자|설립자|회장|CEO|경영자)\s*(분|님)?\s*(의\s*)?(이름|성함)",
        ),
        (
            "organization",
            r"(어느|무슨)\s*(회사|기업|기관|은행|업체|부처|언론사|신문사|방송사|출판사|대학|학교)|"
            r"(회사|기업|기관|은행|업체|언론사|신문사|방송사|출판사|대학|학교|부처|마켓플레이스|플랫폼|거래소|단체)"
            r"(으로는|로는|는|은|가|이)?\s*어디|"
            r"어디가\s*있",
        ),
        ("reason", r"왜|어째서"),
        ("name", r"이름|제목|명칭|약자|뭐라고\s*(불|해|하|부르)|무엇이라고|라고\s*(불|부르|해)|뭐라\s*(불|해)"),
        ("definition", r"(?<!재)정의|무슨\s*뜻|의미는|(이란|란)\s*\??\s*$|(이란|란)\s*(무엇|뭐|뭔)"),
        ("reason", r"이유|까닭|때문"),
        ("manner", r"어떻게|방법|어떤\s*식|어떤\s*방식"),
    )
)
_EN_RULES: tuple[tuple[AnswerType, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern, re.IGNORECASE))
    for kind, pattern in (
        ("date", r"\bwhen\b(?! it comes to)|\bwhat (year|date|month)\b|\bwhich year\b|\bin which year\b|\bsince when\b"),
        ("percent", r"\bpercent|\bpercentage\b|\bwhat share\b|\bwhat proportion\b|\brate\b"),
        # "How is the price … set" asks how, not how much.
        (
            "money",
            r"\bhow much\b.*\b(cost|pay|paid|price|worth|spend|spent|fee|sell|sold)\b|"
            r"\bprice\b(?!.{0,40}\b(set|determined|decided)\b)|\bsalar(y|ies)\b|\bin (us )?dollars\b|\bhow much money\b",
        ),
        ("ordinal", r"\bwhich (trend|issue|chapter|part)\b"),
        ("quantity", r"\bhow many\b"),
        ("number", r"\bhow much\b(?! (risk|effort|attention|importance|control|influence)\b)|\bhow large\b|\bhow big\b|\bsize of\b"),
        # ", where every coin costs the same" is a relative clause, not a where-question.
        ("place", r"(?<!, )\bwhere\b|\bwhich (country|city|region|countries)\b|\bheadquarter"),
        (
            "person",
            r"\bwho (founded|invented|created|started|proposed|wrote|coined|leads|runs|is the ceo)\b|\bfounder\b|"
            r"\b(author|writer|ceo|president|chairman)(\'s|’s)? (full )?name\b|\bname of the (author|writer|founder|ceo)\b|"
            r"\bwho(\'s|’s| is) the (author|writer)\b",
        ),
        ("organization", r"\bwhich (\S+ ){0,3}(company|companies|firm|firms|maker|manufacturer|organi[sz]ation|bank|provider|vendor)s?\b"),
        ("reason", r"\bwhy\b"),
        ("name", r"\bstand for\b|\bcalled\b|\bthe name\b|\btitle\b|\bnamed\b|\bwhich (\S+ )?(standard|platform|protocol)s?\b"),
        ("definition", r"^\s*what (is|are) (an? |the )?[\w\-]+( [\w\-]+){0,3}\s*\??\s*$|\bdefine\b|\bmeaning of\b"),
        ("reason", r"\breason\b"),
        ("manner", r"\bhow\b"),
    )
)

# Words that ask rather than say what about: never evidence that the book covers the question.
_QUESTION_WORDS = frozenset(
    """
    무엇 뭐 뭣 무슨 어디 언제 누구 누가 몇 얼마 얼마나 어느 어떤 어떻 왜 이유 까닭 방법 정도 하 되 있 없 이 그렇 말하 알리 주 보
    나오 들 쓰 대하 관하 같 다르 경우 가지 뭘 알 싶 부르 불리 일 이름 제목 책 내용 설명 소개 이야기 얘기 말 해 거 건
    what which who whom whose where when why how is are was were do does did the a an of in on to for by with about and
    or from as at this that these those it its be been being can could would should will much many there their they
    book author say says said mentioned called
    """.split()
)


# A question asking what an acronym stands for ("What does IaaS stand for?", "CPS는 무엇의 약자?").
EXPANSION_ASKED = re.compile(r"약자|줄임말|풀네임|풀어\s*쓰|stands?\s+for|abbreviat|full name|short for", re.IGNORECASE)
# Latin letters only around it: a Korean particle right after it ("IaaS는") is a word character to `\b`.
_ACRONYM = re.compile(r"(?<![A-Za-z0-9])[A-Z][A-Za-z]*[A-Z]\d*(?![A-Za-z0-9])")
# The counters a count may carry to answer a how-many question, by the counter the question counts in:
# "영국의 AI 인력은 몇 명?" is not answered by "3개국", nor "몇 개 회사?" by "5%".
_PLACES_COUNTED = frozenset({"곳", "개", "개사", "군데"})
COUNTERS: dict[str, frozenset[str]] = {
    "명": frozenset({"명", "인"}),
    "곳": _PLACES_COUNTED,
    "군데": _PLACES_COUNTED,
    "개사": _PLACES_COUNTED,
    "개": frozenset({"개", "곳", "개사", "가지", "종", "건", "개국", "대"}),
    "가지": frozenset({"가지", "개", "종"}),
    "개국": frozenset({"개국", "개", "곳"}),
    "세대": frozenset({"세대"}),
    "번": frozenset({"번", "차례", "회"}),
    "배": frozenset({"배"}),
    "살": frozenset({"살", "세"}),
}
_KO_COUNTER = re.compile(r"몇\s*(명|곳|개국|개사|개|가지|세대|번|배|군데|살)")
_EN_COUNTERS = (
    (
        re.compile(
            r"\bhow many (\S+ ){0,2}(people|persons|users|employees|workers|specialists|experts|members|subscribers|"
            r"customers|staff|developers|engineers)\b",
            re.IGNORECASE,
        ),
        "명",
    ),
    (re.compile(r"\bhow many (\S+ ){0,2}countries\b", re.IGNORECASE), "개국"),
    (
        re.compile(
            r"\bhow many (\S+ ){0,2}(companies|firms|businesses|manufacturers|banks|providers|organi[sz]ations|"
            r"operators|factories|platforms)\b",
            re.IGNORECASE,
        ),
        "곳",
    ),
    (re.compile(r"\bhow many times\b", re.IGNORECASE), "번"),
)


@dataclass(frozen=True)
class QuestionFrame:
    """A question as answering sees it: language, the answer type it wants, its key content words.

    `key_terms` are content morphemes (lower-cased, as the index stores sentence terms) without question
    words; `nouns` are the question's noun forms as written, for telling the reader what the book covers.
    """

    text: str
    lang: Literal["ko", "en"]
    answer_type: AnswerType
    key_terms: tuple[str, ...]
    nouns: tuple[str, ...]

    @property
    def checkable(self) -> bool:
        return self.answer_type in CHECKABLE

    @cached_property
    def expansions(self) -> tuple[str, ...]:
        """The acronyms the question asks to have spelled out ("What does CBDC stand for?": CBDC), else ():
        an answer must write them out in words."""
        return tuple(_ACRONYM.findall(self.text)) if EXPANSION_ASKED.search(self.text) else ()

    @cached_property
    def counters(self) -> frozenset[str]:
        """The counters a count must carry to answer the question ("몇 명", "how many users": 명, 인), else
        empty: a how-many question counts something, and a count of something else does not answer it."""
        if self.answer_type not in ("quantity", "number"):
            return frozenset()
        if self.lang == "en":
            counter = next((unit for pattern, unit in _EN_COUNTERS if pattern.search(self.text)), None)
        else:
            found = _KO_COUNTER.search(_without_several(self.text))
            counter = found.group(1) if found else None
        return COUNTERS[counter] if counter else frozenset()


def _without_several(text: str) -> str:
    """"몇몇 곳" (some places) asks no count: read as 여러, so 몇's rules see only how-many questions."""
    return text.replace("몇몇", "여러")


def question_language(text: str) -> Literal["ko", "en"]:
    """"en" when Latin letters outnumber Hangul (a Korean question naming NFT or IaaS stays "ko")."""
    hangul = sum("가" <= char <= "힣" for char in text)
    latin = sum(char.isascii() and char.isalpha() for char in text)
    return "en" if latin > 2 * hangul else "ko"


def answer_type(text: str, lang: Literal["ko", "en"]) -> AnswerType:
    """The kind of answer a question wants, from its question words (first matching rule wins)."""
    if lang == "en":
        for kind, pattern in _EN_RULES:
            if pattern.search(text):
                return kind
        return "other"
    text = _without_several(text)
    for kind, pattern in _KO_RULES:
        if pattern.search(text):
            return kind
    if definition_term(text) is not None:
        return "definition"
    return "other"


def frame_question(text: str, terms: tuple[str, ...], tokens: tuple[Token, ...]) -> QuestionFrame:
    """The frame of a question from its content morphemes and its Kiwi tokens (both cached by the engine)."""
    lang = question_language(text)
    key_terms = tuple(dict.fromkeys(t for t in terms if t not in _QUESTION_WORDS))
    return QuestionFrame(text, lang, answer_type(text, lang), key_terms, question_nouns(tokens))


_NOUN_TAGS = ("NNG", "NNP", "SL", "SH")
# The book's own sections as a reader names them: "1부", "들어가며", "나가며".
BOOK_PART = re.compile(r"\d+부")
# Kiwi reads "들어가며" as 들/VV 어/EC 가/VX 며/EC and "나가며" as 나가/VV 며/EC.
_SECTION_VERBS = {("들", "어", "가", "며"): "들어가며", ("나가", "며"): "나가며"}


def _book_label(tokens: tuple[Token, ...], index: int) -> str | None:
    """The section of the book named at `tokens[index]` ("1부", "들어가며"), else None."""
    token = tokens[index]
    if token.tag == "NNB" and token.form == "부" and index and tokens[index - 1].tag == "SN":
        return f"{tokens[index - 1].form}부"
    for forms, label in _SECTION_VERBS.items():
        if tuple(t.form for t in tokens[index : index + len(forms)]) == forms and token.tag == "VV":
            return label
    return None


def question_nouns(tokens: tuple[Token, ...]) -> tuple[str, ...]:
    """The question's nouns as written, adjacent ones joined (마이 + 데이터 → 마이데이터), question words left out.

    A noun made a verb by 하다 (분석하나요, 도입했나요) says what is done, not what is asked about, so it
    comes first: the last noun is then the head of the asked fact ("수수료율은 몇 퍼센트": 수수료).
    """
    runs: list[tuple[str, bool]] = []
    current: list[Token] = []

    def close(next_token: Token | None) -> None:
        if current:
            form = "".join(t.form for t in current)
            verbal = next_token is not None and next_token.tag in ("XSV", "XSA") and next_token.start == current[-1].end
            if form.lower() not in _QUESTION_WORDS and len(form) > 1:
                runs.append((form, verbal))
            current.clear()

    for index, token in enumerate(tokens):
        # "1부" names a part of the book (Kiwi: 1/SN + 부/NNB); "들어가며" its introduction (read as a verb).
        label = _book_label(tokens, index)
        if label:
            close(token)
            runs.append((label, False))
            continue
        if token.tag in _NOUN_TAGS and (not current or token.start == current[-1].end):
            current.append(token)
            continue
        close(token)
        if token.tag in _NOUN_TAGS:
            current.append(token)
    close(None)
    ordered = [form for form, verbal in runs if verbal] + [form for form, verbal in runs if not verbal]
    return tuple(dict.fromkeys(ordered))
