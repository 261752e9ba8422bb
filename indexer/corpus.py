"""The corpus: every document file in one folder is a document, identified by its file name.

`.txt`/`.md` are read as they are; `.pdf`, `.epub`, `.docx` and `.html` are extracted by
`indexer.formats` into text with a page map and headings. A file that cannot be read (broken,
encrypted, a scan with no text) is reported by name and skipped; the rest of the corpus indexes.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from indexer.formats import EXTRACTED_SUFFIXES, EXTRACTOR_VERSION, ExtractionError, Heading, PageStart, extract, page_at

log = logging.getLogger(__name__)
TEXT_SUFFIXES = (".txt", ".md")
DOCUMENT_SUFFIXES = TEXT_SUFFIXES + EXTRACTED_SUFFIXES


class CorpusError(ValueError):
    """The corpus folder cannot be read as documents (missing, empty, not UTF-8)."""


@dataclass(frozen=True)
class Document:
    """One document: its id (the file name) and its full text, exactly as indexed.

    For extracted formats `pages` maps offsets to page labels and `headings` are the file's own;
    `guess_headings` says whether title-like lines may be taken for headings too.
    """

    doc_id: str
    text: str
    sha256: str
    headings: tuple[Heading, ...] = ()
    pages: tuple[PageStart, ...] = ()
    guess_headings: bool = True

    def page_at(self, offset: int) -> str | None:
        """The page (or chapter) label of a text offset, None when the document has no pages."""
        return page_at(self.pages, offset)


@dataclass(frozen=True)
class SkippedFile:
    """A corpus file that could not be read, and why (in Korean, naming the file)."""

    name: str
    reason: str


def document_paths(corpus_dir: Path) -> list[Path]:
    """The document files of a corpus folder, sorted by name so ids and chunk order are stable."""
    if not corpus_dir.is_dir():
        raise CorpusError(f"코퍼스 폴더가 없습니다: {corpus_dir}")
    return sorted(
        path for path in corpus_dir.iterdir() if path.is_file() and path.suffix.lower() in DOCUMENT_SUFFIXES
    )


@lru_cache(maxsize=64)
def _extracted_document(name: str, raw_sha256: str, path: Path) -> Document | SkippedFile:
    """One extracted file, cached by content hash: loading an index re-reads the corpus, PDFs are not re-parsed."""
    try:
        extracted = extract(path)
    except ExtractionError as error:
        log.warning("건너뛴 문서: %s", error, exc_info=error.__cause__ is not None)
        return SkippedFile(name, str(error))
    # The extractor's version is part of the hash, so a changed extractor rebuilds such indexes.
    sha256 = hashlib.sha256(f"{raw_sha256}:extractor-{EXTRACTOR_VERSION}".encode()).hexdigest()
    return Document(name, extracted.text, sha256, extracted.headings, extracted.pages, extracted.guess_headings)


def scan_corpus(corpus_dir: Path) -> tuple[list[Document], list[SkippedFile]]:
    """The readable documents of the folder and the files skipped (with the reason for each)."""
    paths = document_paths(corpus_dir)
    documents: list[Document] = []
    skipped: list[SkippedFile] = []
    for path in paths:
        raw = path.read_bytes()
        sha256 = hashlib.sha256(raw).hexdigest()
        if path.suffix.lower() in TEXT_SUFFIXES:
            try:
                # newline="" semantics: keep \r\n as is, so character offsets match the file.
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise CorpusError(f"UTF-8 문서가 아닙니다: {path} ({error})") from error
            documents.append(Document(doc_id=path.name, text=text, sha256=sha256))
            continue
        loaded = _extracted_document(path.name, sha256, path)
        (documents if isinstance(loaded, Document) else skipped).append(loaded)  # type: ignore[arg-type]
    return documents, skipped


def load_corpus(corpus_dir: Path) -> list[Document]:
    """Read every readable document of the folder; the text is never altered afterwards, so offsets hold."""
    documents, skipped = scan_corpus(corpus_dir)
    if not documents:
        reasons = "; ".join(file.reason for file in skipped)
        suffixes = "/".join(DOCUMENT_SUFFIXES)
        raise CorpusError(
            f"코퍼스 폴더에 읽을 수 있는 문서({suffixes})가 없습니다: {corpus_dir}" + (f" ({reasons})" if reasons else "")
        )
    return documents


def file_sha256(path: Path) -> str | None:
    """SHA-256 of a file's bytes, or None when it does not exist."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
