"""Word (.docx) documents with python-docx: paragraphs and tables in order, heading styles as headings.

A .docx has no fixed pages (Word lays them out when it renders), so a passage's "page" is the
chapter it is in: the last `Heading 1` (or the `Title`, before the first chapter) before it.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from indexer.formats import ExtractionError, Extracted, TextBuilder

_HEADING_STYLE = re.compile(r"^heading\s*([1-9])$", re.IGNORECASE)


def heading_level(style: object) -> int | None:
    """The level of a paragraph style: `Title` 0, `Heading n` n (also through a style's base styles)."""
    seen = 0
    while style is not None and seen < 10:
        name = (getattr(style, "name", "") or "").strip()
        if name.lower() == "title":
            return 0
        match = _HEADING_STYLE.match(name)
        if match:
            return int(match.group(1))
        style = getattr(style, "base_style", None)
        seen += 1
    return None


def extract_docx(path: Path) -> Extracted:
    """A .docx's text; heading styles are the headings, the current level-1 heading the page."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table

    if not zipfile.is_zipfile(path):
        # An encrypted .docx is an OLE container, not a zip; so is a legacy .doc renamed.
        raise ExtractionError("DOCX(zip) 파일이 아닙니다: 손상되었거나 암호로 보호된 문서입니다")
    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ExtractionError(f"DOCX 문서를 열 수 없습니다 ({error})") from error

    builder = TextBuilder()
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                # Merged cells repeat in python-docx's rows; each distinct cell once.
                cells: list[str] = []
                for cell in row.cells:
                    text = " ".join(cell.text.split())
                    if text and (not cells or cells[-1] != text):
                        cells.append(text)
                builder.add_line(" | ".join(cells))
            continue
        text = block.text
        level = heading_level(block.style) if text.strip() else None
        if level is not None and level <= 1:
            builder.start_page(" ".join(text.split()))
        builder.add_line(text, level)
    return builder.build()
