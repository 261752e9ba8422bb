"""EPUB 2/3 books: the chapters in the OPF spine's reading order, chapter titles from the navigation.

Read with the standard library (`zipfile`, `xml.etree`, `html.parser`) rather than EbookLib,
whose AGPL licence would bind an MIT/Apache project: an EPUB is a zip of XHTML files listed in
an XML package document, which is all bookqa needs to read.
"""

from __future__ import annotations

import posixpath
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urldefrag
from xml.etree import ElementTree

from indexer.formats import ExtractionError, Extracted, TextBuilder
from indexer.formats.html import BlockParser, decode_html, parse_blocks

CONTAINER = "META-INF/container.xml"
ENCRYPTION = "META-INF/encryption.xml"
NS = {
    "container": "urn:oasis:names:tc:opendocument:xmlns:container",
    "opf": "http://www.idpf.org/2007/opf",
    "ncx": "http://www.daisy.org/z3986/2005/ncx/",
    "xhtml": "http://www.w3.org/1999/xhtml",
    "epub": "http://www.idpf.org/2007/ops",
}
# A chapter file larger than this is not a chapter (a zip bomb would otherwise fill memory).
MAX_CHAPTER_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class NavPoint:
    """One entry of the book's table of contents: a title and the chapter file (and anchor) it opens."""

    title: str
    href: str
    fragment: str


def _read(book: zipfile.ZipFile, name: str) -> bytes:
    info = book.getinfo(name)
    if info.file_size > MAX_CHAPTER_BYTES:
        raise ExtractionError(f"EPUB 안의 파일이 너무 큽니다: {name}")
    return book.read(info)


def _xml(book: zipfile.ZipFile, name: str) -> ElementTree.Element:
    return ElementTree.fromstring(_read(book, name))


def _resolve(base: str, href: str) -> tuple[str, str]:
    """A link relative to the file `base` as (zip member name, fragment)."""
    path, fragment = urldefrag(href)
    return posixpath.normpath(posixpath.join(posixpath.dirname(base), unquote(path))), fragment


def _nav_points(book: zipfile.ZipFile, opf_path: str, package: ElementTree.Element) -> list[NavPoint]:
    """The table of contents in reading order: the EPUB 3 nav document, else the EPUB 2 NCX."""
    manifest = package.find("opf:manifest", NS)
    items = list(manifest) if manifest is not None else []
    nav = next((item for item in items if "nav" in (item.get("properties") or "").split()), None)
    points: list[NavPoint] = []
    if nav is not None:
        nav_path, _ = _resolve(opf_path, nav.get("href", ""))
        root = _xml(book, nav_path)
        for element in root.iter(f"{{{NS['xhtml']}}}nav"):
            if element.get(f"{{{NS['epub']}}}type") not in (None, "toc"):
                continue
            for link in element.iter(f"{{{NS['xhtml']}}}a"):
                title = " ".join("".join(link.itertext()).split())
                if title and link.get("href"):
                    points.append(NavPoint(title, *_resolve(nav_path, link.get("href", ""))))
            if points:
                return points
    spine = package.find("opf:spine", NS)
    toc_id = spine.get("toc") if spine is not None else None
    ncx = next((item for item in items if item.get("id") == toc_id or item.get("media-type") == "application/x-dtbncx+xml"), None)
    if ncx is not None:
        ncx_path, _ = _resolve(opf_path, ncx.get("href", ""))
        root = _xml(book, ncx_path)
        for point in root.iter(f"{{{NS['ncx']}}}navPoint"):
            label = point.find("ncx:navLabel/ncx:text", NS)
            content = point.find("ncx:content", NS)
            if label is not None and content is not None and (label.text or "").strip():
                points.append(NavPoint(" ".join(label.text.split()), *_resolve(ncx_path, content.get("src", ""))))
    return points


def _spine(book: zipfile.ZipFile, opf_path: str, package: ElementTree.Element) -> list[str]:
    """The chapter files in reading order (XHTML/HTML items of the spine)."""
    manifest = package.find("opf:manifest", NS)
    spine = package.find("opf:spine", NS)
    if manifest is None or spine is None:
        raise ExtractionError("EPUB 패키지 문서에 manifest나 spine이 없습니다")
    items = {item.get("id"): item for item in manifest}
    chapters = []
    for itemref in spine:
        item = items.get(itemref.get("idref"))
        if item is None or "html" not in (item.get("media-type") or ""):
            continue
        chapters.append(_resolve(opf_path, item.get("href", ""))[0])
    return chapters


def extract_epub(path: Path) -> Extracted:
    """An EPUB's text in reading order; `<h1>`…`<h6>` are headings, the ToC entry each passage falls under its page."""
    try:
        book = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ExtractionError("EPUB(zip) 파일이 아니거나 손상되었습니다") from error
    with book:
        names = set(book.namelist())
        if ENCRYPTION in names:
            # Font obfuscation alone is harmless; encrypted chapters (DRM) cannot be read.
            encryption = _read(book, ENCRYPTION).decode("utf-8", "replace")
            if "http://www.idpf.org/2008/embedding" not in encryption and "http://ns.adobe.com/pdf/enc#RC" not in encryption:
                raise ExtractionError("암호화(DRM)된 EPUB입니다")
        if CONTAINER not in names:
            raise ExtractionError("EPUB에 META-INF/container.xml이 없습니다")
        rootfile = _xml(book, CONTAINER).find(".//container:rootfile", NS)
        if rootfile is None or not rootfile.get("full-path"):
            raise ExtractionError("EPUB 컨테이너에 패키지 문서(OPF)가 지정되어 있지 않습니다")
        opf_path = rootfile.get("full-path", "")
        package = _xml(book, opf_path)
        chapters = _spine(book, opf_path, package)
        nav = _nav_points(book, opf_path, package)
        parsed: dict[str, BlockParser] = {}
        for chapter in chapters:
            if chapter not in names:
                raise ExtractionError(f"spine의 장 파일이 없습니다: {chapter}")
            parsed[chapter] = parse_blocks(decode_html(_read(book, chapter)))

    # The ToC entries that open each chapter, by block: the chapter title from there on.
    titles: dict[tuple[str, int], str] = {}
    for point in nav:
        blocks = parsed.get(point.href)
        if blocks is None:
            continue
        at = blocks.anchors.get(point.fragment, 0) if point.fragment else 0
        titles.setdefault((point.href, at), point.title)

    if not titles:
        # No usable table of contents: each chapter is named by its first heading, else its <title>.
        for chapter in chapters:
            blocks = parsed[chapter]
            first = next((text for text, level in blocks.blocks if level is not None), None)
            title = first or " ".join(blocks.title.split())
            if title:
                titles[(chapter, 0)] = title

    builder = TextBuilder()
    for chapter in chapters:
        blocks = parsed[chapter]
        for index, (text, level) in enumerate(blocks.blocks):
            title = titles.get((chapter, index))
            if title is not None:
                builder.start_page(title)
            builder.add_line(text, level)
    return builder.build()
