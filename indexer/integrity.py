"""Checksums of the files of an index folder: recorded in the manifest when written, verified when loaded.

Some damage leaves every file readable and consistent in shape (two lines of chunks.jsonl swapped,
FAISS rows permuted, a block of bytes zeroed) and would serve other rankings without a word; a
SHA-256 per file turns any change into a clear error naming the file. Any store that writes its
files into the folder before the manifest gets this by calling `file_digests` and `verify_digests`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from indexer.manifest import MANIFEST, IndexCorruptError

REBUILD_HINT = "`bookqa index --force`로 다시 만드세요"


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex (read in blocks, never whole into memory)."""
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def file_digests(folder: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """SHA-256 of every file under `folder` by relative POSIX path (sorted), the manifest excepted."""
    return {
        path.relative_to(folder).as_posix(): sha256_of(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() not in exclude
    }


def verify_digests(folder: Path, expected: dict[str, str] | None) -> None:
    """Raise IndexCorruptError naming every file of `expected` that is missing or whose bytes changed.

    Files the manifest does not name are not read by a load, so they are left alone.
    """
    if not expected:
        raise IndexCorruptError(f"색인 매니페스트에 파일 체크섬이 없습니다 ({folder}). {REBUILD_HINT}.")
    missing, changed = [], []
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            missing.append(name)
        elif sha256_of(path) != digest:
            changed.append(name)
    problems = []
    if changed:
        problems.append(f"내용이 바뀐 파일: {', '.join(changed)}")
    if missing:
        problems.append(f"없는 파일: {', '.join(missing)}")
    if problems:
        raise IndexCorruptError(
            f"색인 파일이 손상되었습니다 ({folder}): {'; '.join(problems)} (SHA-256이 매니페스트와 다릅니다). {REBUILD_HINT}."
        )
