"""Korean text processing with Kiwi: sentence spans and content morphemes for BM25.

Kiwi is slow to start and holds a large model, so each process shares one instance per
user dictionary.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from kiwipiepy import Kiwi

# Content morphemes: nouns, numerals, verb/adjective stems, roots, foreign words, hanja, numbers.
_CONTENT_TAG_PREFIXES = ("NNG", "NNP", "NNB", "NR", "VV", "VA", "XR", "SL", "SH", "SN")
# Bound nouns that carry no topic ("것", "수", "등"): dropping them keeps BM25 from rewarding filler.
_BOUND_NOUN_STOPWORDS = frozenset("것 수 등 때문 데 바 중 뿐 따위 듯 만큼 채 줄 적 터 측".split())


@dataclass(frozen=True)
class SentenceSpan:
    """A sentence as `[start, end)` offsets into the text it was split from."""

    start: int
    end: int


class KoreanAnalyzer:
    """Sentence splitting and morpheme tokens over one Kiwi instance (thread-safe)."""

    def __init__(self, user_dict: Path | None = None) -> None:
        self._kiwi = Kiwi()
        self.user_words = 0
        if user_dict is not None and user_dict.is_file():
            self.user_words = self._kiwi.load_user_dictionary(str(user_dict))
        # Kiwi objects are not documented as thread-safe; the service calls us from a thread pool.
        self._lock = threading.Lock()

    def split_sentences(self, text: str) -> list[SentenceSpan]:
        """Sentence spans of `text`, trimmed of surrounding whitespace, in order."""
        if not text.strip():
            return []
        with self._lock:
            sentences = self._kiwi.split_into_sents(text)
        spans = []
        for sentence in sentences:
            start, end = sentence.start, sentence.end
            while start < end and text[start].isspace():
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
            if end > start:
                spans.append(SentenceSpan(start, end))
        return spans

    def content_morphemes(self, text: str) -> list[str]:
        """Lower-cased content morphemes, so `서울은` and `서울` share the token `서울`."""
        if not text.strip():
            return []
        with self._lock:
            tokens = self._kiwi.tokenize(text)
        return [
            token.form.lower()
            for token in tokens
            if token.tag.startswith(_CONTENT_TAG_PREFIXES) and token.form not in _BOUND_NOUN_STOPWORDS
        ]


@lru_cache(maxsize=4)
def get_analyzer(user_dict: Path | None = None) -> KoreanAnalyzer:
    """The process-wide analyzer for a user dictionary path (None for none)."""
    return KoreanAnalyzer(user_dict)
