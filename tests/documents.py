"""Book files made by the tests themselves: PDFs printed by headless Chromium, an EPUB and a DOCX."""

from __future__ import annotations

import base64
import html
import io
import os
import subprocess
import zipfile
from pathlib import Path

CHROMIUM = os.environ.get("BOOKQA_CHROMIUM", "/usr/bin/chromium")
BOOK = Path(__file__).resolve().parents[1] / "corpus" / "digital-trend-2023.txt"
# Korean is set as Korean typesetters do (no breaks inside words), in a Korean font.
PRINT_CSS = "body{font-family:NanumGothic,'Noto Sans CJK KR',sans-serif;font-size:11pt;line-height:1.6;word-break:keep-all}"


def print_to_pdf(markup: str, out: Path, header_footer: bool = False) -> Path:
    """Print an HTML page to PDF with headless Chromium (with its date/title/URL/page-number margins if asked)."""
    source = out.with_suffix(".html")
    source.write_text(markup, encoding="utf-8")
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        f"--user-data-dir={out.parent / ('.chromium-' + out.stem)}",
        "--generate-pdf-document-outline",
        f"--print-to-pdf={out}",
    ]
    if not header_footer:
        args.append("--no-pdf-header-footer")
    subprocess.run([*args, source.as_uri()], check=True, capture_output=True, timeout=180)
    assert out.is_file() and out.stat().st_size > 1000, f"Chromium printed no PDF to {out}"
    source.unlink()
    return out


def page_html(body: str, title: str = "bookqa") -> str:
    return (
        f'<!doctype html><html lang="ko"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{PRINT_CSS} .page{{break-after:page}}</style></head><body>{body}</body></html>"
    )


def book_html() -> str:
    """The book as a web page: every line of the text a paragraph."""
    lines = [line.strip() for line in BOOK.read_text(encoding="utf-8").splitlines() if line.strip()]
    return page_html("".join(f"<p>{html.escape(line)}</p>" for line in lines), "디지털 트렌드 2023")


def scanned_pdf(out: Path) -> Path:
    """A PDF whose only content is a picture of text, as a scanner makes: no text layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(4, 2))
    figure.text(0.1, 0.5, "scanned page 37", fontsize=20)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    image = base64.b64encode(buffer.getvalue()).decode("ascii")
    return print_to_pdf(page_html(f'<img src="data:image/png;base64,{image}" alt="">'), out)


def encrypted_pdf(source: Path, out: Path, password: str = "secret") -> Path:
    """A copy of `source` that opens only with a password."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(source))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="RC4-128")
    with out.open("wb") as handle:
        writer.write(handle)
    return out


def make_epub(out: Path, chapters: list[tuple[str, str, str]], nav: list[tuple[str, str]]) -> Path:
    """An EPUB 3: `chapters` are (file name, title, XHTML body) in reading order; `nav` (title, href) its ToC."""
    container = (
        '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
        '<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles></container>'
    )
    items = "".join(
        f'<item id="c{i}" href="text/{name}" media-type="application/xhtml+xml"/>' for i, (name, _, _) in enumerate(chapters)
    )
    spine = "".join(f'<itemref idref="c{i}"/>' for i in range(len(chapters)))
    opf = (
        '<?xml version="1.0" encoding="utf-8"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">'
        '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:identifier id="id">bookqa-test</dc:identifier>'
        "<dc:title>시험용 전자책</dc:title><dc:language>ko</dc:language></metadata>"
        f'<manifest><item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>{items}</manifest>'
        f"<spine>{spine}</spine></package>"
    )
    links = "".join(f'<li><a href="{href}">{html.escape(title)}</a></li>' for title, href in nav)
    nav_doc = (
        '<?xml version="1.0" encoding="utf-8"?><html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">'
        f'<head><title>차례</title></head><body><nav epub:type="toc"><ol>{links}</ol></nav></body></html>'
    )
    with zipfile.ZipFile(out, "w") as book:
        book.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip")
        book.writestr("META-INF/container.xml", container)
        book.writestr("OEBPS/content.opf", opf)
        book.writestr("OEBPS/nav.xhtml", nav_doc)
        for name, title, body in chapters:
            book.writestr(
                f"OEBPS/text/{name}",
                '<?xml version="1.0" encoding="utf-8"?><html xmlns="http://www.w3.org/1999/xhtml">'
                f"<head><title>{html.escape(title)}</title><style>p{{margin:0}}</style></head><body>{body}</body></html>",
            )
    return out


def make_docx(out: Path, blocks: list[tuple[str, str]], table: list[list[str]] | None = None) -> Path:
    """A .docx of (style, text) paragraphs (`Title`, `Heading 1`, `Heading 2`, `Normal`…), then an optional table."""
    import docx

    document = docx.Document()
    for style, text in blocks:
        document.add_paragraph(text, style=style)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for row, values in zip(grid.rows, table):
            for cell, value in zip(row.cells, values):
                cell.text = value
    document.save(str(out))
    return out
