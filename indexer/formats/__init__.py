"""Book files as documents: text extracted from PDF, EPUB, DOCX and HTML, with pages and headings.

Each extractor returns the text bookqa indexes (every offset of a citation is exact over it), the
page each stretch of text is on (a PDF's page, an EPUB's or DOCX's chapter title) and the headings
the file itself declares (PDF outline, EPUB/HTML `<h1>`…`<h6>`, DOCX heading styles).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Bumped when any extractor changes the text it produces, so indexes of such files are rebuilt.
EXTRACTOR_VERSION = 1


class ExtractionError(ValueError):
    """A file cannot be read as a document (broken, encrypted, no text layer); the message says which and why."""


@dataclass(frozen=True)
class Heading:
    """A heading line the file declares: `text[start:end]` is its title, `level` 1 is the top."""

    start: int
    end: int
    level: int


@dataclass(frozen=True)
class PageStart:
    """From `offset` on (until the next PageStart) the text is on page `label` ("37", or a chapter title)."""

    offset: int
    label: str


@dataclass(frozen=True)
class Extracted:
    """What an extractor read from a file.

    `guess_headings` says whether short title-like lines may still be taken for headings (PDFs,
    whose outline is often partial) or the file's own headings are all there is (EPUB, DOCX, HTML).
    """

    text: str
    headings: tuple[Heading, ...] = ()
    pages: tuple[PageStart, ...] = ()
    guess_headings: bool = False


def page_at(pages: Sequence[PageStart], offset: int) -> str | None:
    """The page label of a text offset, or None when the document has no pages (or it lies before the first)."""
    if not pages:
        return None
    position = bisect_right([page.offset for page in pages], offset) - 1
    return pages[position].label if position >= 0 else None


def page_label(doc: str, page: str | None) -> str:
    """Where a quote is, as a reader looks for it: "p. 37" in a PDF, the chapter title in an EPUB/DOCX, "" without pages."""
    if not page:
        return ""
    return f"p. {page}" if doc.lower().endswith(".pdf") else page


class TextBuilder:
    """Builds an extracted text line by line, keeping the offsets of headings and page starts exact."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self.headings: list[Heading] = []
        self.pages: list[PageStart] = []

    @property
    def offset(self) -> int:
        """Where the next line will start."""
        return self._length + (1 if self._parts else 0)

    def add_line(self, line: str, heading_level: int | None = None) -> None:
        """Append one line (a paragraph or a heading); blank lines are dropped."""
        line = " ".join(line.split())
        if not line:
            return
        start = self.offset
        if self._parts:
            self._parts.append("\n")
        self._parts.append(line)
        self._length = start + len(line)
        if heading_level is not None:
            self.headings.append(Heading(start, start + len(line), heading_level))

    def start_page(self, label: str) -> None:
        """What follows is on page `label` (a repeated label is not recorded twice)."""
        if not self.pages or self.pages[-1].label != label:
            self.pages.append(PageStart(self.offset, label))

    def build(self, guess_headings: bool = False) -> Extracted:
        return Extracted("".join(self._parts), tuple(self.headings), tuple(self.pages), guess_headings)


def _extractors() -> dict[str, Callable[[Path], Extracted]]:
    # Imported on first use: a corpus of .txt files never loads PDFium or python-docx.
    from indexer.formats.docx import extract_docx
    from indexer.formats.epub import extract_epub
    from indexer.formats.html import extract_html
    from indexer.formats.pdf import extract_pdf

    return {".pdf": extract_pdf, ".epub": extract_epub, ".docx": extract_docx, ".html": extract_html, ".htm": extract_html}


EXTRACTED_SUFFIXES = (".pdf", ".epub", ".docx", ".html", ".htm")


def extract(path: Path) -> Extracted:
    """The text, pages and headings of a book file; ExtractionError naming the file when it cannot be read."""
    extractor = _extractors().get(path.suffix.lower())
    if extractor is None:
        raise ExtractionError(f"지원하지 않는 형식입니다: {path.name}")
    try:
        extracted = extractor(path)
    except ExtractionError as error:
        raise ExtractionError(f"{path.name}: {error}") from error
    except Exception as error:  # a library's own error on a damaged file: the file is skipped, not the corpus
        raise ExtractionError(f"{path.name}: 파일이 손상되었거나 읽을 수 없습니다 ({type(error).__name__}: {error})") from error
    if not extracted.text.strip():
        raise ExtractionError(f"{path.name}: 텍스트가 없습니다")
    return extracted
