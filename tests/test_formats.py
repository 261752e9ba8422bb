"""PDF, EPUB, DOCX and HTML books: extraction, pages and headings, skipped files, and answers citing pages."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer.corpus import scan_corpus
from indexer.engine import SearchEngine
from indexer.formats import ExtractionError, extract, page_at
from indexer.settings import Settings
from service.qa import QAService
from tests.documents import BOOK, book_html, encrypted_pdf, make_docx, make_epub, page_html, print_to_pdf, scanned_pdf
from tests.test_cli import run

OUTLINED = page_html(
    '<div class="page"><h1>1부 바다</h1><p>바다는 지구 표면의 70%를 덮고 있다.</p></div>'
    '<div class="page"><h2>고래의 노래</h2><p>혹등고래는 겨울마다 하와이 근처의 따뜻한 바다에서 긴 노래를 부른다.</p></div>'
    "<div><h1>2부 하늘</h1><p>제비는 가을이 되면 따뜻한 남쪽 나라로 날아간다.</p></div>"
)
EPUB_CHAPTERS = [
    # Reading order (the spine) is not file-name order.
    (
        "b.xhtml",
        "1장",
        "<h1>1장 도토리 화폐의 탄생</h1><p>도토리섬 주민들은 1998년부터 도토리를 화폐로 사용했다.</p>"
        "<p>도토리 한 알은 감자 세 개와 바꿀 수 있었다.</p>"
        '<h2 id="bank">도토리 은행</h2><p>도토리 은행은 섬의 북쪽 동굴에 있으며 다람쥐 협동조합이 운영한다.</p>',
    ),
    ("a.xhtml", "2장", "<h1>2장 해초 농업</h1><p>섬의 남쪽 바다에서는 주민들이 해초를 길러 겨울 식량으로 말려 둔다.</p>"),
]
EPUB_NAV = [("1장 도토리 화폐의 탄생", "text/b.xhtml"), ("도토리 은행", "text/b.xhtml#bank"), ("2장 해초 농업", "text/a.xhtml")]
DOCX_BLOCKS = [
    ("Title", "우주 정거장 운영 안내"),
    ("Heading 1", "제1장 산소 관리"),
    ("Normal", "정거장의 산소 발생기는 하루에 두 번 점검하며 점검 기록은 관제실에 보관한다."),
    ("Heading 2", "비상 산소"),
    ("Normal", "비상 산소통은 각 모듈의 붉은 캐비닛 안에 네 개씩 보관되어 있다."),
    ("Heading 1", "제2장 식량 관리"),
    ("Normal", "식량은 화물선이 90일마다 보급하며 냉동 식품은 영하 18도에서 보관한다."),
]
BROKEN = ("broken.pdf", "locked.pdf", "scan.pdf", "broken.epub", "broken.docx")


def squash(text: str) -> str:
    """Text without spacing (pypdf reads this PDF's spaces as control characters)."""
    return re.sub(r"[\s\x00-\x1f]+", "", text)


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus folder of book files made here, five of them unreadable in different ways."""
    folder = tmp_path_factory.mktemp("books")
    work = tmp_path_factory.mktemp("printing")
    print_to_pdf(book_html(), folder / "book.pdf", header_footer=True)
    outlined = print_to_pdf(OUTLINED, folder / "sea-and-sky.pdf")
    make_epub(folder / "acorn-island.epub", EPUB_CHAPTERS, EPUB_NAV)
    make_docx(folder / "space-station.docx", DOCX_BLOCKS, [["품목", "보관 온도"], ["냉동 식품", "영하 18도"]])
    (folder / "notice.html").write_text(
        page_html("<h1>공지</h1><p>도서관은 매주 월요일에 쉰다.</p><script>var hidden = '스크립트 문장';</script>"),
        encoding="utf-8",
    )
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 8)
    encrypted_pdf(outlined, folder / "locked.pdf")
    scanned_pdf(work / "scan.pdf")
    shutil.move(work / "scan.pdf", folder / "scan.pdf")
    (folder / "broken.epub").write_bytes(b"not a zip at all")
    (folder / "broken.docx").write_bytes(b"PK\x03\x04 truncated")
    return folder


def test_pdf_pages_and_outline_headings(books: Path) -> None:
    extracted = extract(books / "sea-and-sky.pdf")
    text = extracted.text
    assert [page.label for page in extracted.pages] == ["1", "2", "3"]
    assert [(text[h.start : h.end], h.level) for h in extracted.headings] == [
        ("1부 바다", 1),
        ("고래의 노래", 2),
        ("2부 하늘", 1),
    ]
    whale = text.index("혹등고래는")
    assert extracted.pages[1].offset <= whale < extracted.pages[2].offset
    # A wrapped paragraph is one line again.
    assert "혹등고래는 겨울마다 하와이 근처의 따뜻한 바다에서 긴 노래를 부른다." in text.split("\n")


def test_a_blank_page_keeps_the_pages_around_it_apart(tmp_path: Path) -> None:
    pdf = print_to_pdf(
        page_html(
            '<div class="page"><p>첫 쪽의 문단입니다</p></div><div class="page"><svg width="9" height="9"></svg></div>'
            "<div><p>셋째 쪽의 문단입니다.</p></div>"
        ),
        tmp_path / "blank.pdf",
    )
    extracted = extract(pdf)
    assert extracted.text == "첫 쪽의 문단입니다\n셋째 쪽의 문단입니다."
    assert page_at(extracted.pages, 0) == "1" and page_at(extracted.pages, extracted.text.index("셋째")) == "3"


def test_book_pdf_keeps_paragraphs_and_drops_running_heads(books: Path) -> None:
    extracted = extract(books / "book.pdf")
    lines = [line.strip() for line in BOOK.read_text(encoding="utf-8").splitlines() if line.strip()]
    got = extracted.text.split("\n")
    assert "file:" not in extracted.text and "디지털 트렌드 2023 전망" in extracted.text
    assert not any(re.fullmatch(r"\d+\s*/\s*\d+", line) for line in got), "page numbers dropped"
    # Every paragraph of the book is there (line breaks inside a word may add a space).
    squashed = squash(extracted.text)
    assert all(squash(line) in squashed for line in lines)
    assert abs(len(got) - len(lines)) <= 2, "wrapped lines are joined back into paragraphs"
    assert len(extracted.pages) >= 5 and [p.label for p in extracted.pages] == [str(i) for i in range(1, len(extracted.pages) + 1)]


def test_epub_reads_the_spine_in_order_with_chapter_titles(books: Path) -> None:
    extracted = extract(books / "acorn-island.epub")
    text = extracted.text
    assert text.index("도토리섬 주민들은") < text.index("해초를 길러")
    assert [page.label for page in extracted.pages] == [title for title, _ in EPUB_NAV]
    assert extracted.pages[1].offset == text.index("도토리 은행\n")
    assert [(text[h.start : h.end], h.level) for h in extracted.headings] == [
        ("1장 도토리 화폐의 탄생", 1),
        ("도토리 은행", 2),
        ("2장 해초 농업", 1),
    ]
    assert not extracted.guess_headings


def test_epub_without_navigation_names_chapters_by_their_headings(tmp_path: Path) -> None:
    extracted = extract(make_epub(tmp_path / "no-nav.epub", EPUB_CHAPTERS, []))
    assert [page.label for page in extracted.pages] == ["1장 도토리 화폐의 탄생", "2장 해초 농업"]


def test_docx_heading_styles_and_tables(books: Path) -> None:
    extracted = extract(books / "space-station.docx")
    text = extracted.text
    assert [(text[h.start : h.end], h.level) for h in extracted.headings] == [
        ("우주 정거장 운영 안내", 0),
        ("제1장 산소 관리", 1),
        ("비상 산소", 2),
        ("제2장 식량 관리", 1),
    ]
    assert [page.label for page in extracted.pages] == ["우주 정거장 운영 안내", "제1장 산소 관리", "제2장 식량 관리"]
    assert "냉동 식품 | 영하 18도" in text


def test_html_skips_scripts(books: Path) -> None:
    extracted = extract(books / "notice.html")
    assert "스크립트" not in extracted.text and extracted.pages == ()
    assert extracted.text.startswith("공지\n도서관은")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("broken.pdf", "손상"),
        ("locked.pdf", "암호"),
        ("scan.pdf", "텍스트 층이 없는"),
        ("broken.epub", "EPUB"),
        ("broken.docx", "DOCX"),
    ],
)
def test_unreadable_files_are_named_and_skipped(books: Path, name: str, reason: str) -> None:
    with pytest.raises(ExtractionError, match=reason) as error:
        extract(books / name)
    assert name in str(error.value)
    documents, skipped = scan_corpus(books)
    assert name in {file.name for file in skipped}
    assert name not in {document.doc_id for document in documents}


# --- indexed and answered --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def books_settings(books: Path, book_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The books indexed by `bookqa index`, as a user would."""
    settings = book_settings.model_copy(update={"corpus_dir": books, "index_dir": tmp_path_factory.mktemp("books-index") / "index"})
    result = run(settings, "index", timeout=600)
    assert result.returncode == 0, result.stderr
    for name in BROKEN:
        assert f"건너뛴 파일: {name}" in result.stderr.replace("\n", " ")
    return settings


@pytest.fixture(scope="module")
def books_engine(books_settings: Settings, embedder, analyzer) -> SearchEngine:
    return SearchEngine(books_settings, embedder, analyzer)


@pytest.fixture(scope="module")
def books_qa(books_engine: SearchEngine) -> QAService:
    return QAService(books_engine)


@pytest.fixture(scope="module")
def pdf_pages(books: Path) -> list[str]:
    """Each page's text as an independent library (pypdf) reads it, whitespace removed."""
    from pypdf import PdfReader

    return [squash(page.extract_text()) for page in PdfReader(books / "book.pdf").pages]


def page_of(pdf_pages: list[str], text: str) -> str | None:
    """The one page (1-based label) whose text holds the start of `text`, per pypdf; None if not exactly one."""
    probe = squash(text)[:16]
    found = [str(number) for number, page in enumerate(pdf_pages, start=1) if probe in page]
    return found[0] if len(found) == 1 else None


def test_every_indexed_document_is_there_and_offsets_are_exact(books_engine: SearchEngine) -> None:
    assert books_engine.document_ids() == sorted(
        ["acorn-island.epub", "book.pdf", "notice.html", "sea-and-sky.pdf", "space-station.docx"]
    )
    for chunk in books_engine.chunks():
        assert books_engine.document_text(chunk.doc)[chunk.start : chunk.end] == chunk.text
        expected_page = None if chunk.doc == "notice.html" else chunk.page
        assert chunk.page == expected_page and (chunk.page is not None or chunk.doc == "notice.html")


def test_every_pdf_sentence_is_on_the_page_an_independent_reader_finds(
    books_engine: SearchEngine, pdf_pages: list[str]
) -> None:
    checked = 0
    for chunk in books_engine.chunks():
        if chunk.doc != "book.pdf":
            continue
        for sentence in chunk.sentences:
            expected = page_of(pdf_pages, chunk.sentence_text(sentence))
            if expected is not None:
                assert sentence.page == expected, chunk.sentence_text(sentence)
                checked += 1
    assert checked > 150


def test_question_on_the_book_pdf_cites_the_right_page(books_qa: QAService, pdf_pages: list[str]) -> None:
    result = books_qa.ask("마이데이터가 뭐야?")
    assert not result.abstained and result.citations
    for citation in result.citations:
        assert citation.doc == "book.pdf"
        assert citation.page is not None and citation.page == page_of(pdf_pages, citation.quote)
    assert any("개인신용정보" in citation.quote for citation in result.citations)
    assert all(passage.page for passage in result.passages if passage.doc.endswith((".pdf", ".epub", ".docx")))


@pytest.mark.parametrize(
    ("question", "doc", "page", "section", "needle"),
    [
        ("혹등고래는 어디에서 노래를 불러?", "sea-and-sky.pdf", "2", "1부 바다 > 고래의 노래", "하와이"),
        ("도토리 은행은 누가 운영해?", "acorn-island.epub", "도토리 은행", "1장 도토리 화폐의 탄생 > 도토리 은행", "다람쥐"),
        ("비상 산소통은 어디에 보관돼 있어?", "space-station.docx", "제1장 산소 관리", "우주 정거장 운영 안내 > 제1장 산소 관리 > 비상 산소", "캐비닛"),
    ],
)
def test_questions_find_the_right_page_or_chapter(
    books_engine: SearchEngine, question: str, doc: str, page: str, section: str, needle: str
) -> None:
    top = books_engine.search(question, top_k=1)[0]
    assert (top.doc, top.page, top.section) == (doc, page, section)
    assert needle in top.text


def test_api_and_chat_show_pages(books_qa: QAService) -> None:
    from fastapi.testclient import TestClient

    from service.api import create_api
    from ui.app import make_respond

    with TestClient(create_api(qa=books_qa)) as client:
        body = client.post("/v1/ask", json={"question": "마이데이터가 뭐야?"}).json()
    assert body["citations"] and all(c["page"] for c in body["citations"])
    assert all("page" in p for p in body["passages"])
    *_, (_, _, _, sources) = make_respond(lambda: books_qa)("마이데이터가 뭐야?", [], None, 5, "hybrid")
    assert f"p. {body['citations'][0]['page']}" in sources


def test_html_without_a_head_end_tag_keeps_its_body(tmp_path: Path) -> None:
    page = tmp_path / "bare.html"
    page.write_text("<html><head><title>제목</title><meta charset=utf-8><body><p>본문<br/>둘째 줄</p><h2>절</h2>", encoding="utf-8")
    extracted = extract(page)
    assert extracted.text == "본문\n둘째 줄\n절"
    assert [(extracted.text[h.start : h.end], h.level) for h in extracted.headings] == [("절", 2)]
