"""Getting a service ready in the background, so a server listens at once and is ready sooner.

`bookqa serve` starts this before it imports the chat: the index check, the model and Kiwi load
on their own thread while the web app is put together, and a warm-up question pays the
first-use costs (Kiwi's language model, the first inference) before `/readyz` turns 200.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from indexer.engine import ensure_index
from indexer.settings import Settings
from service.qa import QAService

log = logging.getLogger(__name__)
WARM_UP_QUESTION = "마이데이터란 무엇인가?"


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Ask glibc for at most `arenas` malloc arenas (default: 8 per core, one per busy thread).

    A server answers on dozens of pool threads; with an arena each, freed memory stays scattered
    and RSS creeps up over thousands of requests. Call before the threads start; False off glibc.
    """
    m_arena_max = -8  # from glibc's malloc.h
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(m_arena_max, arenas))
    except (OSError, AttributeError):
        return False


def load_ready_service(settings: Settings, report: Callable[[str], None] = log.info) -> QAService:
    """Build the index if it is missing or stale (saying why), load the service and warm it up."""
    result = ensure_index(settings)
    if result.status == "built":
        report(f"색인을 만들었습니다: {result.path} — 이유: {result.reason}")
    qa = QAService.load(settings)
    qa.ask(WARM_UP_QUESTION)
    qa.engine.clear_caches()
    return qa


def start_loading(settings: Settings, report: Callable[[str], None] = log.info) -> Future[QAService]:
    """`load_ready_service` on a thread of its own, started now."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bookqa-startup")
    future = executor.submit(load_ready_service, settings, report)
    executor.shutdown(wait=False)
    return future
