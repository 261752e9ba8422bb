"""An index that proves it is intact, one builder at a time, and no leftovers of an interrupted swap."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.build import build_index
from indexer.buildlock import IndexLockedError, backup_dir, build_lock, lock_path, staging_dir
from indexer.embedding import Embedder
from indexer.engine import SearchEngine
from indexer.integrity import sha256_of
from indexer.korean import KoreanAnalyzer
from indexer.manifest import MANIFEST, IndexCorruptError, IndexMismatchError
from indexer.settings import Settings
from indexer.faiss_store import CHUNK_VECTORS, CHUNKS, DENSE, SENTENCE_VECTORS
from indexer.store import load_index

SENTENCES = SENTENCE_VECTORS
from tests.servers import free_port
from tests.test_cli import BOOKQA


def _swap_two_lines(index_dir: Path) -> str:
    path = index_dir / CHUNKS
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[3], lines[4] = lines[4], lines[3]
    path.write_text("".join(lines), encoding="utf-8")
    return CHUNKS


def _shuffle_lines(index_dir: Path) -> str:
    path = index_dir / CHUNKS
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    random.Random(13).shuffle(lines)
    path.write_text("".join(lines), encoding="utf-8")
    return CHUNKS


def _zero_4kb(index_dir: Path) -> str:
    path = index_dir / DENSE
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    return DENSE


def _permute_rows(name: str):
    def damage(index_dir: Path) -> str:
        index = faiss.read_index(str(index_dir / name))
        vectors = index.reconstruct_n(0, index.ntotal)
        permuted = faiss.IndexFlatIP(index.d)
        permuted.add(np.ascontiguousarray(vectors[np.random.default_rng(13).permutation(index.ntotal)]))
        faiss.write_index(permuted, str(index_dir / name))
        return name

    return damage


def _permute_vector_rows(name: str):
    def damage(index_dir: Path) -> str:
        vectors = np.load(index_dir / name)
        np.save(index_dir / name, vectors[np.random.default_rng(13).permutation(len(vectors))])
        return name

    return damage


def _edit_bm25_vocabulary(index_dir: Path) -> str:
    path = index_dir / "bm25" / "vocab.index.json"
    vocabulary = json.loads(path.read_text(encoding="utf-8"))
    first, second = list(vocabulary)[:2]
    vocabulary[first], vocabulary[second] = vocabulary[second], vocabulary[first]
    path.write_text(json.dumps(vocabulary, ensure_ascii=False), encoding="utf-8")
    return "bm25/vocab.index.json"


def _flip_bm25_scores(index_dir: Path) -> str:
    path = index_dir / "bm25" / "data.csc.index.npy"
    data = bytearray(path.read_bytes())
    data[-8:] = bytes(reversed(data[-8:]))
    path.write_bytes(bytes(data))
    return "bm25/data.csc.index.npy"


def _truncate(index_dir: Path) -> str:
    path = index_dir / SENTENCES
    path.write_bytes(path.read_bytes()[:-1])
    return SENTENCES


def _append(index_dir: Path) -> str:
    with (index_dir / CHUNKS).open("a", encoding="utf-8") as out:
        out.write("\n")
    return CHUNKS


def _delete(index_dir: Path) -> str:
    (index_dir / "bm25" / "params.index.json").unlink()
    return "bm25/params.index.json"


def _forge_one_checksum(index_dir: Path) -> str:
    path = index_dir / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["files"][DENSE] = "0" * 64
    path.write_text(json.dumps(manifest), encoding="utf-8")
    return DENSE


CORRUPTIONS = {
    "two lines of chunks.jsonl swapped": _swap_two_lines,
    "all lines of chunks.jsonl shuffled": _shuffle_lines,
    "4 KB zeroed inside dense.faiss": _zero_4kb,
    "FAISS chunk rows permuted": _permute_rows(DENSE),
    "chunk vector rows permuted": _permute_vector_rows(CHUNK_VECTORS),
    "sentence vector rows permuted": _permute_vector_rows(SENTENCES),
    "BM25 vocabulary ids swapped": _edit_bm25_vocabulary,
    "BM25 scores altered": _flip_bm25_scores,
    "sentence_vectors.npy truncated by a byte": _truncate,
    "a line appended to chunks.jsonl": _append,
    "a BM25 file deleted": _delete,
    "a checksum in the manifest changed": _forge_one_checksum,
}


def test_manifest_records_the_sha256_of_every_file(engine: SearchEngine) -> None:
    index_dir = engine.settings.index_dir
    files = engine.manifest.files
    on_disk = {p.relative_to(index_dir).as_posix() for p in index_dir.rglob("*") if p.is_file()} - {MANIFEST}
    assert files is not None and set(files) == on_disk
    assert {CHUNKS, DENSE, SENTENCES, "bm25/vocab.index.json"} <= set(files)
    assert all(sha256_of(index_dir / name) == digest for name, digest in files.items())


@pytest.mark.parametrize("damage", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_every_corruption_is_refused_naming_the_file(private_settings: Settings, embedder: Embedder, damage) -> None:
    victim = damage(private_settings.index_dir)
    with pytest.raises(IndexCorruptError) as refused:
        load_index(private_settings, embedder)
    message = str(refused.value)
    assert victim in message and "bookqa index --force" in message


def test_a_damaged_index_is_rebuilt_saying_why(
    tiny_settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer
) -> None:
    _permute_rows(DENSE)(tiny_settings.index_dir)
    result = build_index(tiny_settings, embedder, analyzer)
    assert result.status == "built"
    assert DENSE in result.reason and "손상" in result.reason
    assert SearchEngine(tiny_settings, embedder, analyzer).search("NFT", top_k=1)


def test_an_index_without_checksums_is_rebuilt(
    tiny_settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer
) -> None:
    path = tiny_settings.index_dir / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    del manifest["files"]  # as written before checksums existed
    path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(IndexMismatchError, match="체크섬"):
        load_index(tiny_settings, embedder)
    result = build_index(tiny_settings, embedder, analyzer)
    assert result.status == "built" and "체크섬" in result.reason


def test_serve_says_why_it_rebuilds(tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """`bookqa serve` on a damaged index rebuilds it and says which file was damaged (it said nothing)."""
    import uvicorn
    from typer.testing import CliRunner

    from ui.cli import app

    _zero_4kb(tiny_settings.index_dir)
    from fastapi.testclient import TestClient

    served = []

    def run_until_ready(asgi, **options) -> None:  # instead of serving forever: start, wait for /readyz, stop
        served.append(options)
        with TestClient(asgi) as client:
            deadline = time.monotonic() + 240
            while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)

    monkeypatch.setattr(uvicorn, "run", run_until_ready)
    for name, value in _env(tiny_settings).items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["serve", "--port", "8999"])
    assert result.exit_code == 0, result.output
    assert served and served[0]["port"] == 8999
    rebuilt = next(line for line in result.output.splitlines() if "색인을 만들었습니다" in line)
    assert "이유:" in rebuilt and DENSE in rebuilt and "손상" in rebuilt, rebuilt


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "BOOKQA_CORPUS_DIR": str(settings.corpus_dir),
        "BOOKQA_INDEX_DIR": str(settings.index_dir),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def test_a_builder_that_cannot_wait_exits_with_a_message(
    tiny_settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ui.cli import app

    with build_lock(tiny_settings.index_dir, timeout=0):  # a build in progress, as far as anyone can tell
        with pytest.raises(IndexLockedError, match="다른 색인 작업"):
            build_index(tiny_settings.model_copy(update={"build_lock_timeout": 0.5}), embedder, analyzer, force=True)
        for name, value in _env(tiny_settings, BOOKQA_BUILD_LOCK_TIMEOUT="0").items():
            monkeypatch.setenv(name, value)
        result = CliRunner().invoke(app, ["index", "--force"])
    assert result.exit_code == 1
    assert "다른 색인 작업" in result.output and "BOOKQA_BUILD_LOCK_TIMEOUT" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_two_builders_at_once_take_turns(tiny_settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer, tmp_path: Path) -> None:
    """Issue 13, case 5: two `bookqa index --force` at once crashed one of them inside FAISS."""
    index_dir = tiny_settings.index_dir
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    with build_lock(index_dir, timeout=0):  # hold the lock until both have started and wait, so they overlap
        builders = [
            subprocess.Popen([BOOKQA, "index", "--force"], env=_env(tiny_settings), stdout=log.open("w"), stderr=subprocess.STDOUT)
            for log in logs
        ]
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not all("기다립니다" in log.read_text(encoding="utf-8") for log in logs):
            assert all(builder.poll() is None for builder in builders), [log.read_text() for log in logs]
            time.sleep(0.2)
        assert all("기다립니다" in log.read_text(encoding="utf-8") for log in logs)
    for builder, log in zip(builders, logs):
        assert builder.wait(240) == 0, log.read_text(encoding="utf-8")
        output = log.read_text(encoding="utf-8")
        assert "색인을 만들었습니다" in output and "Traceback" not in output
    assert not staging_dir(index_dir).exists() and not backup_dir(index_dir).exists()
    assert SearchEngine(tiny_settings, embedder, analyzer).search("마이데이터", top_k=1)


def test_leftovers_of_an_interrupted_swap_are_cleaned_at_the_next_start(
    private_settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer
) -> None:
    index_dir = private_settings.index_dir
    # kill -9 just after the swap: the previous index was never removed; an earlier build died writing.
    backup = backup_dir(index_dir)
    backup.mkdir()
    (backup / DENSE).write_bytes(b"the old index")
    staging_dir(index_dir).mkdir()
    (staging_dir(index_dir) / DENSE).write_bytes(b"half written")
    # While a builder holds the lock, its working folder is not a leftover: a load touches nothing.
    with build_lock(index_dir, timeout=0):
        assert SearchEngine(private_settings, embedder, analyzer).search("클라우드", top_k=1)
        assert backup.exists() and staging_dir(index_dir).exists()
    assert SearchEngine(private_settings, embedder, analyzer).search("클라우드", top_k=1)
    assert not backup.exists() and not staging_dir(index_dir).exists()
    assert lock_path(index_dir).exists() and not (index_dir / lock_path(index_dir).name).exists()


def test_an_index_path_that_is_a_file_is_refused_not_replaced(
    tiny_settings: Settings, embedder: Embedder, analyzer: KoreanAnalyzer, tmp_path: Path
) -> None:
    from indexer.manifest import IndexLoadError

    a_file = tmp_path / "notes.txt"
    a_file.write_text("the user's own file", encoding="utf-8")
    settings = tiny_settings.model_copy(update={"index_dir": a_file})
    with pytest.raises(IndexLoadError, match="폴더가 아닙니다"):
        build_index(settings, embedder, analyzer)
    with pytest.raises(IndexLoadError):
        load_index(settings, embedder)
    assert a_file.read_text(encoding="utf-8") == "the user's own file"
