"""Kiwi processing and heading structure on the real book (no embedding model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.chunking import Chunk, chunk_document, pack_section
from indexer.corpus import CorpusError, load_corpus
from indexer.korean import KoreanAnalyzer, get_analyzer
from indexer.structure import Section, Span, split_sections

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
BOOK = "digital-trend-2023.txt"


@pytest.fixture(scope="module")
def analyzer() -> KoreanAnalyzer:
    return get_analyzer(None)


@pytest.fixture(scope="module")
def book_text() -> str:
    return (CORPUS / BOOK).read_bytes().decode("utf-8")


def test_corpus_is_the_book_byte_for_byte() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "book" / BOOK
    if not shared.exists():
        pytest.skip("shared/ is not beside this checkout")
    assert (CORPUS / BOOK).read_bytes() == shared.read_bytes()


def test_particles_are_split_from_nouns(analyzer: KoreanAnalyzer) -> None:
    assert analyzer.content_morphemes("서울은") == analyzer.content_morphemes("서울") == ["서울"]
    tokens = analyzer.content_morphemes("마이페이먼트는 고객의 계좌 정보만으로 결제를 한다.")
    assert "마이페이먼트" in tokens and "계좌" in tokens and "결제" in tokens
    assert not {"는", "의", "를", "으로", "만"} & set(tokens)


def test_morphemes_keep_numbers_and_foreign_words_lowercased(analyzer: KoreanAnalyzer) -> None:
    tokens = analyzer.content_morphemes("구글클라우드는 54억 달러로 Mandiant를 인수했다")
    assert {"54", "억", "달러", "mandiant", "인수"} <= set(tokens)


def test_a_readers_word_finds_the_books_through_kiwis_language_model(analyzer: KoreanAnalyzer) -> None:
    """앞날 (the reader's) is near 장래; only the words asked for are looked up; a word the model lacks has none."""
    tokens = analyzer.tokens("저자가 예전 책에서 그린 건 어떤 분야의 앞날이야?")
    near = analyzer.term_neighbours(tokens, {"앞날", "분야"})
    assert set(near) == {"앞날", "분야"} and near["앞날"]["장래"] > 0.5
    assert all(cosine >= 0.5 for forms in near.values() for cosine in forms.values())
    assert analyzer.term_neighbours(analyzer.tokens("스마트팩토리 쀍쀍"), {"스마트팩토리", "쀍쀍"}) == {"스마트팩토리": {}, "쀍쀍": {}}


def test_sentence_spans_are_exact_and_ordered(analyzer: KoreanAnalyzer, book_text: str) -> None:
    line = book_text.splitlines()[42]
    spans = analyzer.split_sentences(line)
    assert len(spans) == 3
    assert spans[0].start == 0 and spans[-1].end == len(line)
    for before, after in zip(spans, spans[1:]):
        assert before.end <= after.start
    assert line[spans[0].start : spans[0].end].startswith("본인신용정보관리업, 마이데이터는")
    assert all(line[s.start : s.end] == line[s.start : s.end].strip() for s in spans)


def test_headings_of_the_book(analyzer: KoreanAnalyzer, book_text: str) -> None:
    titles = [section.title for section in split_sections(book_text, analyzer)]
    mypayment = "TREND 2 마이데이터로 금융 유목민을 사로잡아라 > 마이페이먼트_종합지급결제업에 주목하라"
    assert any(title.endswith(mypayment) for title in titles)
    assert any(title.endswith("TREND 2 마이데이터로 금융 유목민을 사로잡아라 > 오픈 파이낸스의 정점, 마이페이먼트") for title in titles)
    # Titles ending in '?' or in '다' without a period are still headings.
    assert any(title.endswith("> 급부상한 NFT, 뭐길래?") for title in titles)
    assert any(title.endswith("> 이제 ‘클라우드’가 대세다") for title in titles)
    assert "차례" in titles
    # Part level from the table of contents, chapter labels restored from it.
    assert all(t.startswith("2부 디지털 트렌드 2023 전망 > TREND ") for t in titles if "TREND" in t)
    # The introduction, the blurb after the ToC and the closing note have no heading.
    assert titles.count("") == 3


def test_every_content_line_belongs_to_exactly_one_section(analyzer: KoreanAnalyzer, book_text: str) -> None:
    sections = split_sections(book_text, analyzer)
    covered = sorted((unit.start, unit.end) for section in sections for unit in section.units)
    for (_, end), (start, _) in zip(covered, covered[1:]):
        assert end <= start, "units overlap"
    joined = "".join(book_text[s:e] for s, e in covered)
    # Everything except line breaks, the heading-only title lines and the '* * *' separator is covered.
    missing = set(book_text) - set(joined) - {"\n", "*", " "}
    assert not missing
    for title_only in ("TREND 2 마이데이터로", "디지털 트렌드 2023 전망\n"):
        assert title_only not in joined or title_only.startswith("TREND")


def test_markdown_headings(analyzer: KoreanAnalyzer) -> None:
    text = "# 책\n## 1장 클라우드\n클라우드는 빌려 쓰는 컴퓨터다. 비용이 준다.\n## 2장 NFT\nNFT는 토큰이다.\n"
    sections = split_sections(text, analyzer, markdown=True)
    assert [s.title for s in sections] == ["책 > 1장 클라우드", "책 > 2장 NFT"]


def _count_chars(text: str) -> int:
    return len(text)


def test_packing_respects_budget_overlap_and_sections(analyzer: KoreanAnalyzer, book_text: str) -> None:
    from indexer.corpus import Document

    document = Document(BOOK, book_text, "x")
    chunks = chunk_document(document, analyzer, _count_chars, budget=300, overlap=1)
    sections = split_sections(book_text, analyzer)
    for chunk in chunks:
        assert book_text[chunk.start : chunk.end] == chunk.text
        assert chunk.end - chunk.start <= 300
        homes = [s for s in sections if s.units[0].start <= chunk.start and chunk.end <= s.units[-1].end]
        assert [home.title for home in homes] == [chunk.section]
    by_section: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        by_section.setdefault(chunk.section, []).append(chunk)
    overlapping = 0
    for group in by_section.values():
        for before, after in zip(group, group[1:]):
            assert after.start > before.start
            overlapping += after.start < before.end
    assert overlapping > 10  # one sentence of overlap between neighbours


def test_oversized_sentence_is_split_at_spaces_not_truncated(analyzer: KoreanAnalyzer) -> None:
    text = "가 " * 200 + "끝."
    section = Section((), None, [Span(0, len(text))])
    spans = pack_section(text, section, _count_chars, budget=50, overlap=0)
    assert len(spans) > 5
    assert all(len(text[s.start : s.end]) <= 50 for s in spans)
    assert "".join(text[s.start : s.end] for s in spans).replace(" ", "") == text.replace(" ", "")


def test_corpus_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="없습니다"):
        load_corpus(tmp_path / "nope")
    with pytest.raises(CorpusError, match=".txt/.md"):
        load_corpus(tmp_path)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00broken")
    with pytest.raises(CorpusError, match="UTF-8"):
        load_corpus(tmp_path)
