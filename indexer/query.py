"""Question understanding that retrieval can use: today, spotting "what is X?" questions.

Readers often ask for a definition (마이데이터란 무엇인가, NFT가 뭐야). Embeddings and BM25 both
favour chunks that mention the term most, while the chunk that defines it may mention it once;
so a definition question lifts the chunks with a sentence that opens by defining the term.
"""

from __future__ import annotations

import re

_KOREAN_DEFINITION = re.compile(
    r"^\s*(?P<term>.+?)\s*(?:이란|란|이라는 ?건|라는 ?건|이라는 ?게|라는 ?게|은|는|이|가)?\s*"
    r"(?:무엇|뭐|뭔|뭣|무슨 ?뜻|어떤 ?뜻|정의)"
    r"(?:인가요|인가|인지|이에요|예요|에요|이야|야|임|일까요|일까|입니까|이죠|죠|지|냐|니|가요|가)?\s*\??\s*$"
)
_ENGLISH_DEFINITION = re.compile(r"^\s*what\s+(?:is|are)\s+(?:an?\s+|the\s+)?(?P<term>.+?)\s*\??\s*$", re.IGNORECASE)
# Korean topic/subject particles (and 이란/란) that follow a term being defined.
_DEFINING_PARTICLE = r"(?:\([^)]*\))?(?:은|는|이란|란|이라 함은|라 함은)\s"


def definition_term(question: str) -> str | None:
    """The term a "what is X?" question asks about, or None for any other question."""
    for pattern in (_KOREAN_DEFINITION, _ENGLISH_DEFINITION):
        match = pattern.match(question)
        if match:
            term = match.group("term").strip(" ?'\"‘’“”")
            if 1 <= len(term) <= 30:
                return term
    return None


def defines(sentence: str, term: str) -> bool:
    """Whether `sentence` opens by defining `term` (`X는 ...`, `A, X는 ...`, `X(...)는 ...`)."""
    head = sentence[: len(term) + 40]
    pattern = r"(?:^|[\s,·])" + re.escape(term) + _DEFINING_PARTICLE
    return re.search(pattern, head, flags=re.IGNORECASE) is not None
