"""PDF books with pypdfium2 (PDFium, the engine of Chromium's viewer): text by page, outline as headings.

PDF text comes as lines, as laid out on the page; a paragraph wrapped over several lines is
joined back into one line (a wrapped line looks like a title to heading detection otherwise),
running heads and page numbers repeated in the margins are dropped, and the offset where each
page starts is kept, so every passage and citation knows its page.
"""

from __future__ import annotations

import re
import statistics
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from indexer.formats import ExtractionError, Extracted, Heading, PageStart, TextBuilder

# PDFium is not thread-safe: one extraction at a time per process.
_PDFIUM_LOCK = threading.Lock()
# Running heads and page numbers sit in this share of the page height at the top or the bottom.
MARGIN_BAND = 0.08
# A margin line repeated (digits aside) on this share of the pages, at least 3, is a running head.
RUNNING_HEAD_SHARE = 0.4
# Lines further apart than this times the usual line spacing belong to different paragraphs.
PARAGRAPH_GAP = 1.35
# Font sizes within this ratio are the same text style.
SAME_SIZE = 0.12
_SENTENCE_END = re.compile(r"[.!?。…][\"'”’)\]]*$")
_PAGE_NUMBER = re.compile(r"^[\W_]*(\d{1,4}|[ivxlcdm]{1,6})([\s/]+(of\s+)?\d{1,4})?[\W_]*$", re.IGNORECASE)


@dataclass
class _Line:
    """One laid-out line of a page, with its box (PDF points, y grows upwards) and font size."""

    text: str
    left: float
    right: float
    top: float
    bottom: float
    size: float
    first_word_width: float


def _page_lines(textpage, raw) -> list[_Line]:
    """The page's lines in PDFium's reading order, with geometry from the character boxes."""
    count = textpage.count_chars()
    if count <= 0:
        return []
    text = textpage.get_text_range(0, count)
    lines: list[_Line] = []
    for match in re.finditer(r"[^\r\n]+", text):
        boxes, sizes, first_word_right, word_done = [], [], None, False
        for index in range(match.start(), match.end()):
            char = text[index]
            if char.isspace():
                if boxes:
                    word_done = True
                continue
            if index >= count:
                break
            left, bottom, right, top = textpage.get_charbox(index)
            boxes.append((left, bottom, right, top))
            sizes.append(raw.FPDFText_GetFontSize(textpage.raw, index))
            if not word_done:
                first_word_right = right
        line_text = match.group().strip()
        if not boxes or not line_text:
            continue
        left = min(box[0] for box in boxes)
        lines.append(
            _Line(
                text=line_text,
                left=left,
                right=max(box[2] for box in boxes),
                top=max(box[3] for box in boxes),
                bottom=min(box[1] for box in boxes),
                size=statistics.median(sizes) if sizes else 0.0,
                first_word_width=(first_word_right or left) - left,
            )
        )
    return lines


def _margin_key(line: _Line, height: float) -> str | None:
    """A running-head key (digits masked) for lines in the top or bottom margin band, else None."""
    if line.bottom > height * (1 - MARGIN_BAND) or line.top < height * MARGIN_BAND:
        return re.sub(r"\d+", "#", line.text)
    return None


def _drop_running_heads(pages: list[tuple[list[_Line], float]]) -> list[list[_Line]]:
    """Each page's lines without running heads and page numbers."""
    counts = Counter(
        key for lines, height in pages for key in {_margin_key(line, height) for line in lines} if key is not None
    )
    repeated = {key for key, n in counts.items() if n >= 3 and n >= RUNNING_HEAD_SHARE * len(pages)}
    kept = []
    for lines, height in pages:
        page_kept = []
        for line in lines:
            key = _margin_key(line, height)
            if key is not None and (key in repeated or _PAGE_NUMBER.match(line.text)):
                continue
            page_kept.append(line)
        kept.append(page_kept)
    return kept


def _same_size(a: float, b: float) -> bool:
    return abs(a - b) <= SAME_SIZE * max(a, b, 1e-6)


def _continues(previous: _Line, line: _Line, right_edge: float, body_left: float) -> bool:
    """Whether `line` carries on the paragraph of `previous` (wrapped), judged from the layout.

    A line wraps when the next line's first word would not have fitted after it; a larger gap,
    another font size or an indented first line starts a new paragraph.
    """
    if not _same_size(previous.size, line.size):
        return False
    if line.left > body_left + 1.5 * line.size:
        return False
    space = 0.3 * line.size
    if previous.right + space + line.first_word_width < right_edge - 0.5 * line.size:
        return False
    return True


def _vertical_step(previous: _Line, line: _Line) -> float:
    return previous.bottom - line.bottom


def extract_pdf(path: Path) -> Extracted:
    """A PDF's text with a page map and its outline's headings; scanned, encrypted and broken files are refused."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_raw

    with _PDFIUM_LOCK:
        try:
            document = pdfium.PdfDocument(str(path))
        except pdfium.PdfiumError as error:
            if "password" in str(error).lower():
                raise ExtractionError("암호로 보호된 PDF입니다: 암호를 푼 사본을 넣으세요") from error
            raise ExtractionError(f"PDF를 열 수 없습니다: 손상된 파일입니다 ({error})") from error
        try:
            pages: list[tuple[list[_Line], float]] = []
            labels: list[str] = []
            for index in range(len(document)):
                page = document[index]
                textpage = page.get_textpage()
                pages.append((_page_lines(textpage, pdfium_raw), page.get_height()))
                labels.append(document.get_page_label(index) or str(index + 1))
                textpage.close()
                page.close()
            outline = [
                (bookmark.level, " ".join((bookmark.get_title() or "").split()), bookmark.get_dest())
                for bookmark in document.get_toc()
            ]
            outline = [(level, title, dest.get_index() if dest else None) for level, title, dest in outline if title]
        finally:
            document.close()

    if not any(lines for lines, _ in pages):
        raise ExtractionError("텍스트 층이 없는 PDF입니다 (스캔한 이미지뿐이라면 OCR을 거친 PDF를 넣으세요)")
    kept = _drop_running_heads(pages)
    body = [line for lines in kept for line in lines]
    sizes = [round(line.size, 1) for line in body]
    body_size = Counter(sizes).most_common(1)[0][0]
    body_lines = [line for line in body if _same_size(line.size, body_size)]
    long_lines = [line for line in body_lines if len(line.text) >= 15] or body_lines
    right_edge = statistics.quantiles([line.right for line in long_lines], n=20)[-1] if len(long_lines) > 1 else long_lines[0].right
    body_left = statistics.median(line.left for line in long_lines)
    steps = [
        _vertical_step(a, b)
        for lines in kept
        for a, b in zip(lines, lines[1:])
        if _same_size(a.size, body_size) and _same_size(b.size, body_size) and _vertical_step(a, b) > 0
    ]
    spacing = statistics.median(steps) if steps else 1.2 * body_size

    builder = TextBuilder()
    paragraph: list[str] = []
    # Page starts inside a paragraph: (index in `paragraph`, label).
    pending_pages: list[tuple[int, str]] = []
    previous: _Line | None = None

    def flush() -> None:
        nonlocal paragraph, pending_pages
        if not paragraph:
            return
        start = builder.offset
        offsets, position = [], start
        for piece in paragraph:
            offsets.append(position)
            position += len(" ".join(piece.split())) + 1
        for piece_index, label in pending_pages:
            builder.pages.append(PageStart(offsets[piece_index], label))
        builder.add_line(" ".join(paragraph))
        paragraph, pending_pages = [], []

    for lines, label in zip(kept, labels):
        page_started = False
        for line in lines:
            joins = (
                previous is not None
                and paragraph
                and _continues(previous, line, right_edge, body_left)
                and (
                    # Over a page break there is no gap to go by: a line ending a sentence ends the paragraph.
                    not _SENTENCE_END.search(previous.text)
                    if not page_started
                    else _vertical_step(previous, line) <= PARAGRAPH_GAP * spacing
                )
            )
            if not page_started:
                # A paragraph may run over the page break: the new page starts mid-paragraph.
                if joins:
                    pending_pages.append((len(paragraph), label))
                else:
                    flush()
                    builder.start_page(label)
                page_started = True
            elif not joins:
                flush()
            paragraph.append(line.text)
            previous = line
        if not page_started:
            # A page without text ends the paragraph before it, so that paragraph keeps its own page.
            flush()
            builder.start_page(label)
    flush()
    extracted = builder.build(guess_headings=True)
    headings = _outline_headings(extracted.text, extracted.pages, outline, labels)
    return Extracted(extracted.text, headings, extracted.pages, guess_headings=True)


def _outline_headings(text: str, pages: tuple[PageStart, ...], outline: list[tuple[int, str, int | None]], labels: list[str]) -> tuple[Heading, ...]:
    """The outline's entries as headings: the line on the entry's page whose text is its title."""
    lines = [(match.start(), match.end()) for match in re.finditer(r"[^\n]+", text)]
    page_range: dict[str, tuple[int, int]] = {}
    for index, page in enumerate(pages):
        end = pages[index + 1].offset if index + 1 < len(pages) else len(text)
        first, _ = page_range.get(page.label, (page.offset, end))
        page_range[page.label] = (first, end)
    headings: list[Heading] = []
    used: set[int] = set()
    for level, title, page_index in outline:
        key = re.sub(r"\s+", "", title)
        if page_index is not None and 0 <= page_index < len(labels) and labels[page_index] in page_range:
            low, high = page_range[labels[page_index]]
        else:
            low, high = 0, len(text)
        for start, end in lines:
            if start in used or end <= low or start >= high:
                continue
            if re.sub(r"\s+", "", text[start:end]) == key:
                headings.append(Heading(start, end, level + 1))
                used.add(start)
                break
    return tuple(sorted(headings, key=lambda heading: heading.start))
