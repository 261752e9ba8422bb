"""Korean text processing with Kiwi: sentence spans and content morphemes for BM25.

Kiwi is slow to start and holds a large model, so each process shares one instance per
user dictionary.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from kiwipiepy import Kiwi

from indexer.facts import Token

# Content morphemes: nouns, numerals, verb/adjective stems, roots, foreign words, hanja, numbers.
_CONTENT_TAG_PREFIXES = ("NNG", "NNP", "NNB", "NR", "VV", "VA", "XR", "SL", "SH", "SN")
# Noun-like tags whose adjacent runs (no space between) also yield the joined compound.
_COMPOUND_TAG_PREFIXES = ("NNG", "NNP", "SL", "SH")
# Bumped whenever the tokens change, so indexes built with other tokens are rebuilt.
ANALYZER_VERSION = 3
# Bound nouns that carry no topic ("것", "수", "등"): dropping them keeps BM25 from rewarding filler.
_BOUND_NOUN_STOPWORDS = frozenset("것 수 등 때문 데 바 중 뿐 따위 듯 만큼 채 줄 적 터 측".split())
# How many of Kiwi's nearest morphemes a word brings, and how near they must be (chosen on the gold
# set's dev part: any floor from 0.3 to 0.55 picks the same sentences).
SIMILAR_FORMS = 40
SIMILAR_MIN_COSINE = 0.5


@dataclass(frozen=True)
class SentenceSpan:
    """A sentence as `[start, end)` offsets into the text it was split from."""

    start: int
    end: int


class KoreanAnalyzer:
    """Sentence splitting and morpheme tokens over one Kiwi instance (thread-safe)."""

    def __init__(self, user_dict: Path | None = None) -> None:
        # Without the multi-word dictionary Kiwi takes ~180 MB less and starts twice as fast; on this
        # book it changes the morphemes of 5 of 306 lines, splitting phrases like "크레디트 스위스"
        # into words, which BM25 matches more often, not less.
        self._kiwi = Kiwi(load_multi_dict=False)
        self.user_words = 0
        if user_dict is not None and user_dict.is_file():
            self.user_words = self._kiwi.load_user_dictionary(str(user_dict))
        # Kiwi objects are not documented as thread-safe; the service calls us from a thread pool.
        self._lock = threading.Lock()

    def split_sentences(self, text: str) -> list[SentenceSpan]:
        """Sentence spans of `text`, trimmed of surrounding whitespace, in order.

        A line break always ends a sentence: in this book it separates headings and paragraphs,
        and Kiwi would otherwise glue a heading onto the sentence below it.
        """
        spans: list[SentenceSpan] = []
        offset = 0
        for line in text.split("\n"):
            if line.strip():
                with self._lock:
                    sentences = self._kiwi.split_into_sents(line)
                for sentence in sentences:
                    start, end = sentence.start, sentence.end
                    while start < end and line[start].isspace():
                        start += 1
                    while end > start and line[end - 1].isspace():
                        end -= 1
                    if end > start:
                        spans.append(SentenceSpan(offset + start, offset + end))
            offset += len(line) + 1
        return spans

    def tokens(self, text: str) -> list[Token]:
        """Kiwi's tokens of `text` with their POS tags and offsets (for fact spans and question analysis)."""
        if not text.strip():
            return []
        with self._lock:
            found = self._kiwi.tokenize(text)
        return [Token(t.form, t.tag, t.start, t.start + t.len) for t in found]

    def similar_forms(self, form: str, tag: str) -> dict[str, float]:
        """Lower-cased forms of the morphemes Kiwi's language model places nearest `form`/`tag`, with cosines.

        Kiwi's CoNg model embeds morphemes, so a reader's word (앞날, 경비) can find the book's (장래, 비용);
        empty for a morpheme the model does not know and for a model without embeddings.
        """
        return dict(self._similar_forms(form, tag))

    @lru_cache(maxsize=4096)
    def _similar_forms(self, form: str, tag: str) -> tuple[tuple[str, float], ...]:
        try:
            with self._lock:
                found = self._kiwi.most_similar_morphemes((form, tag), top_n=SIMILAR_FORMS)
        except (ValueError, RuntimeError, NotImplementedError):
            return ()
        return tuple((m.form.lower(), float(m.score)) for m in found if m.score >= SIMILAR_MIN_COSINE)

    def term_neighbours(self, tokens: Sequence[Token], terms: Collection[str]) -> dict[str, dict[str, float]]:
        """For each content morpheme among `tokens` whose lower-cased form is in `terms`, its nearest forms.

        Joined compounds have no morpheme of their own in Kiwi's model and get none. Each lookup scans
        the model's vocabulary (~3 ms), so callers name only the words they need.
        """
        return {
            token.form.lower(): self.similar_forms(token.form, token.tag)
            for token in tokens
            if token.form.lower() in terms
            and token.tag.startswith(_CONTENT_TAG_PREFIXES)
            and token.form not in _BOUND_NOUN_STOPWORDS
        }

    def content_morphemes(self, text: str) -> list[str]:
        """Lower-cased content morphemes, so `서울은` and `서울` share the token `서울` (see `content_terms`)."""
        return content_terms(self.tokens(text))


def content_terms(tokens: Sequence[Token]) -> list[str]:
    """The content morphemes of Kiwi's tokens of a text, lower-cased, with joined noun compounds.

    Kiwi splits the same unknown compound differently in different contexts (`스마트팩토리`,
    `스마트 팩토리`), so a run of nouns written without spaces also yields the joined form. A
    question's tokens serve both its BM25 terms and its analysis: one Kiwi call, which holds
    Python's lock, per question.
    """
    result: list[str] = []
    run: list[str] = []
    run_end = -1
    for token in tokens:
        form = token.form.lower()
        is_compound_part = token.tag.startswith(_COMPOUND_TAG_PREFIXES)
        if not (is_compound_part and token.start == run_end):
            if len(run) > 1:
                result.append("".join(run))
            run = []
        if is_compound_part:
            run.append(form)
            run_end = token.end
        if token.tag.startswith(_CONTENT_TAG_PREFIXES) and token.form not in _BOUND_NOUN_STOPWORDS:
            result.append(form)
    if len(run) > 1:
        result.append("".join(run))
    return result


@lru_cache(maxsize=4)
def get_analyzer(user_dict: Path | None = None) -> KoreanAnalyzer:
    """The process-wide analyzer for a user dictionary path (None for none)."""
    return KoreanAnalyzer(user_dict)
