"""One builder per index folder at a time, and what an interrupted build or swap leaves behind.

A build holds an OS lock (`filelock`) on a file beside the index folder from its up-to-date check
to the end of its swap; a second builder waits for it, up to `BOOKQA_BUILD_LOCK_TIMEOUT` seconds,
then exits with a message. The OS releases the lock of a killed process, so no stale lock remains.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from indexer.manifest import IndexLoadError

log = logging.getLogger(__name__)
# A reader that finds the index folder renamed away waits this long for the swap to finish.
SWAP_WAIT_SECONDS = 10.0


class IndexLockedError(IndexLoadError):
    """Another process is building this index and did not finish in time."""


def lock_path(index_dir: Path) -> Path:
    """The lock file of an index folder: beside it, as the folder itself is swapped."""
    return index_dir.with_name(f".{index_dir.name}.lock")


def staging_dir(index_dir: Path) -> Path:
    """Where a build writes before swapping the new index in."""
    return index_dir.with_name(f".{index_dir.name}.building")


def backup_dir(index_dir: Path) -> Path:
    """Where the previous index waits during a swap."""
    return index_dir.with_name(f".{index_dir.name}.previous")


@contextmanager
def build_lock(index_dir: Path, timeout: float) -> Iterator[None]:
    """Hold the build lock of `index_dir`, waiting up to `timeout` seconds for another builder (0: no wait)."""
    if index_dir.exists() and not index_dir.is_dir():
        raise IndexLoadError(f"색인 경로가 폴더가 아닙니다: {index_dir}. BOOKQA_INDEX_DIR을 폴더로 지정하세요.")
    path = lock_path(index_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise IndexLoadError(f"색인 폴더를 만들 수 없습니다: {index_dir} ({error.strerror}).") from error
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if timeout <= 0:
            raise IndexLockedError(_locked_message(index_dir, timeout, path)) from None
        log.warning("다른 색인 작업이 %s 을(를) 만들고 있어 끝나기를 기다립니다 (최대 %g초)…", index_dir, timeout)
        try:
            lock.acquire(timeout=timeout)
        except Timeout as error:
            raise IndexLockedError(_locked_message(index_dir, timeout, path)) from error
    try:
        yield
    finally:
        lock.release()


def _locked_message(index_dir: Path, timeout: float, path: Path) -> str:
    waited = f" ({timeout:g}초 기다렸습니다)" if timeout > 0 else ""
    return (
        f"다른 색인 작업이 {index_dir} 을(를) 만들고 있습니다{waited}. 그 작업이 끝난 뒤 다시 실행하세요 "
        f"(기다릴 시간은 BOOKQA_BUILD_LOCK_TIMEOUT; 잠금 파일 {path})."
    )


def clean_leftovers(index_dir: Path) -> list[str]:
    """Undo what an interrupted build or swap left behind; the build lock must be held. Returns what was done."""
    done = []
    backup, staging = backup_dir(index_dir), staging_dir(index_dir)
    if backup.exists():
        if index_dir.exists():
            shutil.rmtree(backup)  # the swap finished; only the removal of the old index did not
            done.append(f"지난 교체에서 남은 이전 색인({backup.name})을 지웠습니다")
        else:
            backup.rename(index_dir)  # stopped between the two renames: the previous index goes back
            done.append(f"교체 중에 멈춘 빌드의 이전 색인({backup.name})을 되돌렸습니다")
    if staging.exists():
        shutil.rmtree(staging)
        done.append(f"중단된 빌드의 작업 폴더({staging.name})를 지웠습니다")
    for line in done:
        log.warning("%s: %s", index_dir, line)
    return done


def recover_before_loading(index_dir: Path) -> None:
    """Clean an interrupted build's leftovers before a load, unless a builder is at work.

    A running build's staging folder is not a leftover: then nothing is touched, except that a
    reader who finds the index folder renamed away waits for the swap to end.
    """
    backup, staging = backup_dir(index_dir), staging_dir(index_dir)
    if not backup.exists() and not staging.exists():
        return
    mid_swap = backup.exists() and not index_dir.exists()
    try:
        with build_lock(index_dir, timeout=SWAP_WAIT_SECONDS if mid_swap else 0):
            clean_leftovers(index_dir)
    except IndexLockedError:
        pass  # a builder holds the lock; its swap will leave a complete index
    except OSError as error:  # e.g. a read-only folder: load what is there
        log.warning("색인 폴더의 남은 파일을 정리하지 못했습니다: %s", error)
