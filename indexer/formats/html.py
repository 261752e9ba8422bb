"""HTML (and the XHTML of EPUB chapters) as lines: one per block, `<h1>`…`<h6>` as headings.

The standard library's `html.parser` is enough here: it tolerates broken markup, decodes entities,
and adds no dependency; scripts, styles and other non-text elements are skipped.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from indexer.formats import Extracted, TextBuilder

# Elements that end a line of text before and after them.
BLOCK_TAGS = frozenset(
    "address article aside blockquote body br caption dd details div dl dt figcaption figure footer form "
    "h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section summary table tbody td tfoot th thead tr ul".split()
)
HEADING_TAGS = {f"h{level}": level for level in range(1, 7)}
# Never text a reader sees. (Not <head>: its end tag is optional, and only <title> in it has text.)
SKIPPED_TAGS = frozenset("script style template noscript svg math iframe object".split())
VOID_TAGS = frozenset("area base br col embed hr img input link meta source track wbr".split())


class BlockParser(HTMLParser):
    """Collects the text of an HTML document as blocks, with heading levels and the block of each `id`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, int | None]] = []
        # id attribute -> index of the block it starts (for EPUB navigation targets).
        self.anchors: dict[str, int] = {}
        self.title = ""
        self._current: list[str] = []
        self._heading: int | None = None
        self._skip_depth = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        tag = tag.lower()
        if tag == "title":
            self._in_title = True
        if tag in SKIPPED_TAGS and tag not in VOID_TAGS:
            self._skip_depth += 1
            return
        if self._skip_depth:
            return
        if tag in BLOCK_TAGS:
            self._flush()
        if tag in HEADING_TAGS:
            self._heading = HEADING_TAGS[tag]
        # A self-closing tag (<a id="x"/>) comes here too, then to handle_endtag (HTMLParser's default).
        element_id = dict(attrs).get("id")
        if element_id and element_id not in self.anchors:
            self.anchors[element_id] = len(self.blocks)

    def handle_endtag(self, tag: str) -> None:
        tag = tag.lower()
        if tag == "title":
            self._in_title = False
        if tag in SKIPPED_TAGS and tag not in VOID_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
            return
        if self._skip_depth:
            return
        if tag in BLOCK_TAGS:
            self._flush()
        if tag in HEADING_TAGS:
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
            return
        if not self._skip_depth:
            self._current.append(data)

    def close(self) -> None:
        super().close()
        self._flush()

    def _flush(self) -> None:
        text = " ".join("".join(self._current).split())
        self._current = []
        if text:
            self.blocks.append((text, self._heading))


def parse_blocks(markup: str) -> BlockParser:
    """The blocks of one HTML document."""
    parser = BlockParser()
    parser.feed(markup)
    parser.close()
    return parser


def decode_html(raw: bytes) -> str:
    """HTML bytes as text: UTF-8 (the web's and EPUB's encoding), then the declared charset, then cp949."""
    for encoding in ("utf-8-sig", _declared_charset(raw), "cp949"):
        if not encoding:
            continue
        try:
            return raw.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    return raw.decode("utf-8", errors="replace")


def _declared_charset(raw: bytes) -> str | None:
    import re

    match = re.search(rb"charset=[\"']?([A-Za-z0-9_-]+)", raw[:2048])
    return match.group(1).decode("ascii") if match else None


def extract_html(path: Path) -> Extracted:
    """An HTML file's text; its `<h1>`…`<h6>` are the headings (no pages: a web page has none)."""
    parser = parse_blocks(decode_html(path.read_bytes()))
    builder = TextBuilder()
    for text, level in parser.blocks:
        builder.add_line(text, level)
    return builder.build()
