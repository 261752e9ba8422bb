"""The corpus: every .txt/.md file in one folder is a document, identified by its file name."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

DOCUMENT_SUFFIXES = (".txt", ".md")


class CorpusError(ValueError):
    """The corpus folder cannot be read as documents (missing, empty, not UTF-8)."""


@dataclass(frozen=True)
class Document:
    """One document: its id (the file name) and its full text, exactly as stored."""

    doc_id: str
    text: str
    sha256: str


def document_paths(corpus_dir: Path) -> list[Path]:
    """The document files of a corpus folder, sorted by name so ids and chunk order are stable."""
    if not corpus_dir.is_dir():
        raise CorpusError(f"코퍼스 폴더가 없습니다: {corpus_dir}")
    return sorted(
        path for path in corpus_dir.iterdir() if path.is_file() and path.suffix.lower() in DOCUMENT_SUFFIXES
    )


def load_corpus(corpus_dir: Path) -> list[Document]:
    """Read every document of the folder; the text is decoded but never altered, so offsets hold."""
    paths = document_paths(corpus_dir)
    if not paths:
        raise CorpusError(f"코퍼스 폴더에 .txt/.md 문서가 없습니다: {corpus_dir}")
    documents = []
    for path in paths:
        raw = path.read_bytes()
        try:
            # newline="" semantics: keep \r\n as is, so character offsets match the file.
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CorpusError(f"UTF-8 문서가 아닙니다: {path} ({error})") from error
        documents.append(Document(doc_id=path.name, text=text, sha256=hashlib.sha256(raw).hexdigest()))
    return documents


def file_sha256(path: Path) -> str | None:
    """SHA-256 of a file's bytes, or None when it does not exist."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
