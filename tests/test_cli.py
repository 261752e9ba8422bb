"""The `bookqa` console script, run as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from indexer.engine import SearchEngine
from indexer.settings import Settings

BOOKQA = shutil.which("bookqa") or str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "bookqa")


def run(settings: Settings, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`bookqa *args` as a subprocess over `settings`' corpus and index."""
    env = {
        **os.environ,
        "BOOKQA_CORPUS_DIR": str(settings.corpus_dir),
        "BOOKQA_INDEX_DIR": str(settings.index_dir),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run([BOOKQA, *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_search_json_puts_the_mydata_definition_first(private_settings: Settings) -> None:
    result = run(private_settings, "search", "마이데이터란 무엇인가", "--json")
    assert result.returncode == 0, result.stderr
    passages = json.loads(result.stdout)["passages"]
    assert len(passages) == 5
    assert set(passages[0]) == {"chunk_id", "doc", "section", "start", "end", "text", "score", "page"}
    assert "흩어진 개인신용정보를 한눈에 보여주고" in passages[0]["text"]
    book = (private_settings.corpus_dir / passages[0]["doc"]).read_bytes().decode("utf-8")
    assert all(book[p["start"] : p["end"]] == p["text"] for p in passages)


def test_search_listing_shows_headings(private_settings: Settings) -> None:
    result = run(private_settings, "search", "IaaS", "--top-k", "2", "--mode", "bm25")
    assert result.returncode == 0, result.stderr
    assert "클라우드 서비스에도 유형이 있다" in result.stdout
    assert "IaaS" in result.stdout


def test_index_is_incremental(private_settings: Settings) -> None:
    result = run(private_settings, "index")
    assert result.returncode == 0, result.stderr
    assert "최신" in result.stdout


def test_bad_input_exits_with_a_message(private_settings: Settings) -> None:
    empty = run(private_settings, "search", "  ")
    assert empty.returncode == 2 and "비어" in empty.stderr
    mode = run(private_settings, "search", "클라우드", "--mode", "magic")
    assert mode.returncode == 2 and "magic" in mode.stderr


def test_missing_index_exits_with_what_to_run(private_settings: Settings, tmp_path: Path) -> None:
    settings = private_settings.model_copy(update={"index_dir": tmp_path / "nothing-here"})
    result = run(settings, "search", "클라우드")
    assert result.returncode == 1
    assert "bookqa index" in result.stderr
    assert "Traceback" not in result.stderr


def test_ask_json_prints_the_api_object(private_settings: Settings) -> None:
    result = run(private_settings, "ask", "NFT가 뭐야?", "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert {"answer", "abstained", "citations", "passages", "timings_ms"} <= set(body)
    assert body["citations"] and not body["abstained"]
    text = (private_settings.corpus_dir / "digital-trend-2023.txt").read_text(encoding="utf-8")
    for citation in body["citations"]:
        assert text[citation["start"] : citation["end"]] == citation["quote"]
    assert run(private_settings, "ask", "  ").returncode == 2
