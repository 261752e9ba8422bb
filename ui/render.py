"""What the chat shows: answers with clickable `[n]` markers and the sources panel, as safe text.

Everything from the book or from a user is escaped here (Markdown punctuation in chat messages,
HTML entities in the sources panel), so a `<script>` or `<img onerror>` is shown, never run.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from indexer.engine import SearchEngine
from indexer.formats import page_label
from indexer.retrieval import Passage
from service.answer import Citation
from service.qa import AskResult

MARKER = re.compile(r"\[(\d+)\]")
# Markdown punctuation that could turn text into raw HTML, links, emphasis, code, tables or LaTeX;
# escaped with a backslash, so the text reads (and copies) unchanged apart from these few.
_INLINE_SPECIAL = re.compile(r"([\\`*_\[\]<>~|$&])")
# Line starts that would make a heading, quote, list or rule.
_LINE_START = re.compile(r"^([ \t]*)([#>+\-=]|\d+(?=[.)]))", re.MULTILINE)
# How much of the passage around a quoted sentence the citation card shows.
CONTEXT_CHARS = 220


def escape_markdown(text: str) -> str:
    """Text that the chatbot's Markdown renderer shows literally: no tags, links or emphasis."""
    escaped = _INLINE_SPECIAL.sub(r"\\\1", text)
    return _LINE_START.sub(_escape_line_start, escaped)


def _escape_line_start(match: re.Match[str]) -> str:
    lead, mark = match.groups()
    # "1." starts a list only with its dot, so the dot is escaped; other marks are escaped themselves.
    return f"{lead}{mark}\\" if mark[0].isdigit() else f"{lead}\\{mark}"


def citation_anchor(turn: int, marker: int) -> str:
    """The element id of citation `marker` of answer number `turn` in the sources panel."""
    return f"bq-cite-{turn}-{marker}"


def answer_markdown(answer: str, turn: int, markers: set[int]) -> str:
    """The answer as Markdown whose `[n]` markers link to their citation cards."""
    parts: list[str] = []
    last = 0
    for match in MARKER.finditer(answer):
        number = int(match.group(1))
        if number not in markers:
            continue
        parts.append(escape_markdown(answer[last : match.start()]))
        parts.append(f"[\\[{number}\\]](#{citation_anchor(turn, number)})")
        last = match.end()
    parts.append(escape_markdown(answer[last:]))
    return "".join(parts)


@dataclass(frozen=True)
class CitationView:
    """A citation with the passage text around it, ready to show."""

    citation: Citation
    before: str
    after: str


def citation_view(engine: SearchEngine, citation: Citation) -> CitationView:
    """The quoted sentence with the rest of its passage (or nearby text) around it."""
    text = engine.document_text(citation.doc)
    try:
        chunk = engine.chunk(citation.chunk_id)
        lo, hi = min(chunk.start, citation.start), max(chunk.end, citation.end)
    except KeyError:
        lo, hi = citation.start, citation.end
    lo = max(lo, citation.start - CONTEXT_CHARS)
    hi = min(hi, citation.end + CONTEXT_CHARS)
    before, after = text[lo : citation.start], text[citation.end : hi]
    if lo > 0:
        before = "…" + before
    if hi < len(text):
        after = after + "…"
    return CitationView(citation, before, after)


def _path(doc: str, section: str, page: str | None = None) -> str:
    path = f"{html.escape(doc)} › {html.escape(section)}" if section else html.escape(doc)
    label = page_label(doc, page)
    return f'{path} <span class="bq-page">· {html.escape(label)}</span>' if label else path


def _passage_html(passage: Passage, citations: list[Citation]) -> str:
    """A passage with the sentences its answer quotes marked."""
    spans = sorted(
        (c.start - passage.start, c.end - passage.start, c.id)
        for c in citations
        if c.chunk_id == passage.chunk_id and passage.start <= c.start and c.end <= passage.end
    )
    pieces, last = [], 0
    for start, end, number in spans:
        if start < last:
            continue
        pieces.append(html.escape(passage.text[last:start]))
        pieces.append(f'<mark title="[{number}]">{html.escape(passage.text[start:end])}</mark>')
        last = end
    pieces.append(html.escape(passage.text[last:]))
    return "".join(pieces)


@dataclass
class RenderedTurn:
    """One answer's citation cards and passages, kept so that older markers stay clickable."""

    turn: int
    cards: list[CitationView]
    passages: list[Passage]
    abstained: bool


def rendered_turn(engine: SearchEngine, turn: int, result: AskResult) -> RenderedTurn:
    return RenderedTurn(turn, [citation_view(engine, c) for c in result.citations], result.passages, result.abstained)


def quote_html(citation: Citation) -> str:
    """The quoted sentence as HTML, the fact that answers the question (if marked) in <strong>."""
    quote = citation.quote
    start, end = citation.answer_start, citation.answer_end
    if start is None or end is None or not citation.start <= start < end <= citation.end:
        return html.escape(quote)
    lo, hi = start - citation.start, end - citation.start
    return (
        f"{html.escape(quote[:lo])}<strong class=\"bq-answer\">{html.escape(quote[lo:hi])}</strong>"
        f"{html.escape(quote[hi:])}"
    )


def _card_html(turn: int, view: CitationView) -> str:
    c = view.citation
    return (
        f'<div class="bq-cite" id="{citation_anchor(turn, c.id)}">'
        f'<div class="bq-cite-head"><span class="bq-num">[{c.id}]</span> {_path(c.doc, c.section, c.page)}</div>'
        f'<blockquote class="bq-context">{html.escape(view.before)}'
        f'<mark class="bq-quote">{quote_html(c)}</mark>{html.escape(view.after)}</blockquote>'
        f'<div class="bq-offsets">{html.escape(c.doc)} · 문자 {c.start}–{c.end}</div>'
        "</div>"
    )


def sources_html(turns: list[RenderedTurn]) -> str:
    """The sources panel: every citation card of the conversation, then the latest passages."""
    if not turns:
        return (
            '<div class="bq-sources"><p class="bq-hint">질문을 하면 답변의 근거가 된 책의 구절이 여기에 나옵니다. '
            "답변의 [번호]를 누르면 인용한 문장을 책의 문맥 속에서 보여줍니다.</p></div>"
        )
    cards = "".join(_card_html(t.turn, view) for t in turns for view in t.cards)
    latest = turns[-1]
    if latest.abstained:
        heading = "가장 가까운 구절 (답변의 근거는 아님)"
    else:
        heading = "이번 답변이 참고한 구절"
    citations = [view.citation for view in latest.cards]
    cited = {c.chunk_id for c in citations}
    # Passages the answer quotes are open; the others are one click away.
    items = "".join(
        f'<li class="bq-passage"><details{" open" if p.chunk_id in cited else ""}>'
        f'<summary class="bq-path">{_path(p.doc, p.section, p.page)}</summary>'
        f'<div class="bq-text">{_passage_html(p, citations)}</div></details></li>'
        for p in latest.passages
    )
    hint = (
        '<p class="bq-hint">답변의 [번호]를 누르면 인용한 문장이 여기에 나옵니다.</p>' if latest.cards else ""
    )
    return (
        f'<div class="bq-sources"><div class="bq-viewer">{hint}{cards}</div>'
        f'<h4 class="bq-heading">{heading}</h4><ol class="bq-passages">{items}</ol></div>'
    )
