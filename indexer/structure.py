"""Document structure: headings, their levels and paths, and the content units under each.

A book's body often repeats its table-of-contents titles without their labels ("TREND 2"), so
the ToC is parsed first and used to give body headings their level and full label.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from indexer.formats import Heading
from indexer.korean import KoreanAnalyzer

MAX_HEADING_CHARS = 80
PART_LEVEL, CHAPTER_LEVEL, SECTION_LEVEL = 1, 2, 3

_TOC_LINE = re.compile(r"^[\W_]*(차례|목차|contents|table of contents)\W*$", re.IGNORECASE)
_MARKDOWN_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_TOC_LABEL = re.compile(
    r"^(?P<label>\d+\s*부|제\s*\d+\s*[부장]|(?:part|trend|issue|chapter)\s*\d+|들어가며|나가며|프롤로그|에필로그)"
    r"[\s_:.]*(?P<title>.*)$",
    re.IGNORECASE,
)
_PART_LABEL = re.compile(r"^(\d+\s*부|제\s*\d+\s*부|part\s*\d+)$", re.IGNORECASE)
# Characters ignored when matching a body heading to a ToC title (quotes, spacing, separators).
_MATCH_NOISE = re.compile(r"[\s‘’“”'\"_:·,.?!]")


@dataclass(frozen=True)
class Span:
    """A `[start, end)` range of the document text: a sentence, a heading line or a ToC entry."""

    start: int
    end: int


@dataclass
class Section:
    """The content under one heading path; `units` are in document order and never empty."""

    heading_path: tuple[str, ...]
    heading: Span | None = None
    units: list[Span] = field(default_factory=list)
    # The table of contents: its units are entry lines, not prose.
    is_toc: bool = False

    @property
    def title(self) -> str:
        """The heading path as one readable string, e.g. `TREND 2 … > 오픈 파이낸스의 정점, 마이페이먼트`."""
        return " > ".join(self.heading_path)


@dataclass(frozen=True)
class _Line:
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class _TocEntry:
    display: str
    level: int
    match_keys: frozenset[str]


def _lines(text: str) -> list[_Line]:
    """Non-blank lines with offsets of their stripped content (handles \\n and \\r\\n)."""
    lines = []
    for match in re.finditer(r"[^\r\n]+", text):
        raw = match.group()
        stripped = raw.strip()
        if not stripped:
            continue
        start = match.start() + (len(raw) - len(raw.lstrip()))
        lines.append(_Line(start, start + len(stripped), stripped))
    return lines


def _match_key(text: str) -> str:
    return _MATCH_NOISE.sub("", text).lower()


def _is_separator(line: str) -> bool:
    return not any(char.isalnum() for char in line)


def _looks_like_heading(line: str, analyzer: KoreanAnalyzer) -> bool:
    """Short, one sentence, no closing period: how this book (and most) sets its titles."""
    if len(line) > MAX_HEADING_CHARS or _is_separator(line):
        return False
    if line.endswith((".", "。", "…", ";")):
        return False
    return len(analyzer.split_sentences(line)) <= 1


def _toc_entry(line: str) -> _TocEntry:
    match = _TOC_LABEL.match(line)
    if not match:
        return _TocEntry(line, CHAPTER_LEVEL, frozenset({_match_key(line)}))
    label, title = match.group("label"), match.group("title")
    level = PART_LEVEL if _PART_LABEL.match(label) else CHAPTER_LEVEL
    keys = {_match_key(line)}
    if title.strip():
        keys.add(_match_key(title))
    return _TocEntry(line, level, frozenset(keys))


def split_sections(
    text: str,
    analyzer: KoreanAnalyzer,
    markdown: bool = False,
    headings: Sequence[Heading] = (),
    guess_headings: bool = True,
) -> list[Section]:
    """Split a document into sections with heading paths; every content span lies in exactly one.

    A section's own heading line is its first unit (so titles can be quoted); a heading with no
    content before the next heading yields no section but stays in its children's paths.
    `headings` are the file's own (a PDF outline, EPUB/DOCX heading styles); other lines are
    taken for headings only when `guess_headings` (title-like lines then nest below the file's).
    """
    lines = _lines(text)
    declared = {heading.start: heading for heading in headings}
    guessed_level = max((heading.level for heading in headings), default=SECTION_LEVEL - 1) + 1
    toc_entries: list[_TocEntry] = []
    sections: list[Section] = []
    path: dict[int, str] = {}
    current: Section | None = None
    in_toc = False

    def open_section(heading: _Line | None) -> Section:
        nonlocal current
        ordered = tuple(path[level] for level in sorted(path))
        span = Span(heading.start, heading.end) if heading else None
        current = Section(ordered, span, [span] if span else [])
        sections.append(current)
        return current

    def set_heading(level: int, display: str, line: _Line) -> None:
        for deeper in [lvl for lvl in path if lvl >= level]:
            del path[deeper]
        path[level] = display
        open_section(line)

    for line in lines:
        heading_match = _MARKDOWN_HEADING.match(line.text) if markdown else None
        declared_heading = declared.get(line.start)
        if declared_heading is not None and declared_heading.end == line.end:
            in_toc = False
            set_heading(declared_heading.level, line.text, line)
        elif not guess_headings:
            section = current or open_section(None)
            section.units.extend(
                Span(line.start + span.start, line.start + span.end)
                for span in analyzer.split_sentences(line.text)
            )
        elif _is_separator(line.text):
            path.clear()
            current, in_toc = None, False
        elif not markdown and _TOC_LINE.match(line.text):
            path.clear()
            set_heading(PART_LEVEL, re.sub(r"^[\W_]+", "", line.text), line)
            assert current is not None
            current.is_toc = True
            in_toc = True
        elif heading_match:
            in_toc = False
            set_heading(len(heading_match.group(1)), heading_match.group(2), line)
        elif in_toc and _looks_like_heading(line.text, analyzer):
            toc_entries.append(_toc_entry(line.text))
            assert current is not None
            current.units.append(Span(line.start, line.end))
        elif not markdown and _looks_like_heading(line.text, analyzer):
            in_toc = False
            key = _match_key(line.text)
            entry = next((entry for entry in toc_entries if key in entry.match_keys), None)
            if entry:
                set_heading(entry.level, entry.display, line)
            else:
                set_heading(guessed_level if declared else SECTION_LEVEL, line.text, line)
        else:
            if in_toc:
                # Prose after a table of contents belongs to no ToC heading.
                path.clear()
                current, in_toc = None, False
            section = current or open_section(None)
            section.units.extend(
                Span(line.start + span.start, line.start + span.end)
                for span in analyzer.split_sentences(line.text)
            )

    # A section whose only unit is its own heading line carries no content of its own.
    return [section for section in sections if any(unit != section.heading for unit in section.units)]
