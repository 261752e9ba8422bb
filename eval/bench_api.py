"""Benchmark of the question API over real HTTP: answer quality, abstention and latency.

Starts `bookqa serve` (the API with the chat, as users run it) on a free loopback port, asks
every gold question once and prints figures.
Run: .venv/bin/python -m eval.bench_api [--gold eval/gold/qa.jsonl]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from eval.gold import load_gold
from eval.metrics import contains_answer, percentile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gold", type=Path, default=Path("eval/gold/qa.jsonl"))
    args = parser.parse_args()
    gold = load_gold(args.gold)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "ui.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    latencies, contained, false_abstain, true_abstain = [], 0, 0, 0
    answerable = [g for g in gold if g.answerable]
    for item in gold:
        started = time.perf_counter()
        body = httpx.post(f"{url}/v1/ask", json={"question": item.question}, timeout=120).json()
        latencies.append((time.perf_counter() - started) * 1000)
        if item.answerable:
            false_abstain += body["abstained"]
            contained += (not body["abstained"]) and contains_answer(body["answer"], item.answers)
        else:
            true_abstain += body["abstained"]
    server.terminate()
    server.wait(30)
    n_unanswerable = len(gold) - len(answerable)
    print(f"questions: {len(gold)} ({len(answerable)} answerable, {n_unanswerable} not)")
    print(f"answer contains an expected answer: {contained / len(answerable):.3f}")
    print(f"false abstentions on answerable:   {false_abstain / len(answerable):.3f}")
    print(f"abstentions on unanswerable:       {true_abstain / max(n_unanswerable, 1):.3f}")
    print(f"/v1/ask latency ms: median {percentile(latencies, 50):.1f}, p95 {percentile(latencies, 95):.1f}")


if __name__ == "__main__":
    main()
