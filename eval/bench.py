"""`bookqa bench`: the service measured the way users meet it, every time divided by one reference.

The reference is the bare query embedding of the same model through plain float32
sentence-transformers, timed in the same run; `QAService.ask` in process, `/v1/ask` over real
HTTP against a `bookqa serve` process (chat included), throughput with distinct questions,
start-up time and the memory of all serving processes are reported beside it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from eval.gold import GoldQuestion
from eval.metrics import percentile
from indexer.settings import Settings
from service.qa import QAService

# Phrasings put before a gold question so that no two requests of a run ask the same text
# (the query cache must not inflate throughput); none changes what is asked.
_PREFIXES = (
    "",
    "질문: ",
    "책에 따르면 ",
    "궁금한데 ",
    "디지털 트렌드 2023에서 ",
    "혹시 ",
    "알려줘: ",
    "이 책 기준으로 ",
    "간단히, ",
    "정리하면 ",
)
_SUFFIXES = ("", " 알려주세요", " 궁금합니다", " (짧게)", " 설명해줘")


@dataclass(frozen=True)
class BenchConfig:
    """How much to measure; every loop is bounded in count and in time."""

    encode_questions: int = 200
    ask_questions: int = 200
    http_questions: int = 200
    load_requests: int = 600
    load_seconds: float = 60.0
    rss_requests: int = 10_000
    rss_seconds: float = 900.0
    chat_users: int = 16
    ready_timeout: float = 300.0
    serve_command: str | None = None


@dataclass
class BenchResult:
    """Every figure of one run (milliseconds, requests per second, seconds, megabytes)."""

    encode_fp32_p50_ms: float
    encode_fp32_p95_ms: float
    ask_p50_ms: float
    ask_p95_ms: float
    http_p50_ms: float
    http_p95_ms: float
    rps_c8: float
    rps_c32: float
    errors: int
    ready_s: float
    rss_ready_mb: float
    rss_peak_mb: float
    rss_after_mb: float
    rss_trace_mb: list[tuple[int, float]] = field(default_factory=list)
    chat_p50_s: float | None = None
    chat_max_s: float | None = None
    # From the process start to the chat page answering 200 (Gradio is imported after the service is ready).
    chat_ready_s: float | None = None
    # CPU seconds of the Gradio client (this process) and of the server during that burst: both share the machine.
    chat_client_cpu_s: float | None = None
    chat_server_cpu_s: float | None = None
    # The same burst through Gradio's HTTP queue API (`/gradio_api/call/ask`), a client that costs next to nothing.
    chat_http_p50_s: float | None = None
    chat_http_max_s: float | None = None
    requests_after: int = 0
    ratios: dict[str, float] = field(default_factory=dict)
    setup: dict[str, object] = field(default_factory=dict)


def distinct_questions(gold: Sequence[GoldQuestion], count: int, offset: int = 0) -> list[str]:
    """`count` different question texts built from the gold questions (prefix × question × suffix)."""
    base = [question.question for question in gold]
    texts: list[str] = []
    index = offset
    variants = len(base) * len(_PREFIXES) * len(_SUFFIXES)
    while len(texts) < count:
        position = index % variants
        question = base[position % len(base)]
        prefix = _PREFIXES[(position // len(base)) % len(_PREFIXES)]
        suffix = _SUFFIXES[(position // (len(base) * len(_PREFIXES))) % len(_SUFFIXES)]
        texts.append(f"{prefix}{question}{suffix}")
        index += 1
    return texts


def reference_encoder(settings: Settings) -> Callable[[str], object]:
    """The reference: the same model through plain float32 sentence-transformers (torch), one query at a time."""
    from sentence_transformers import SentenceTransformer

    from indexer.embedding import model_location

    model = SentenceTransformer(model_location(settings.model, settings.cache_dir), device="cpu")
    prompt = (model.prompts or {}).get("query")

    def encode(text: str) -> object:
        return model.encode([text], prompt=prompt, normalize_embeddings=True, convert_to_numpy=True)

    return encode


def time_calls(call: Callable[[str], object], texts: Sequence[str]) -> list[float]:
    """Milliseconds of `call(text)` for each text."""
    timings = []
    for text in texts:
        started = time.perf_counter()
        call(text)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def measure_in_process(settings: Settings, gold: Sequence[GoldQuestion], config: BenchConfig) -> dict[str, float]:
    """The reference embedding and `QAService.ask` (caches emptied), interleaved so drift hits both alike."""
    encode = reference_encoder(settings)
    qa = QAService.load(settings)
    texts = distinct_questions(gold, config.encode_questions + config.ask_questions)
    for text in texts[:5]:  # one-off costs (first allocations, lazy imports)
        encode(text)
        qa.ask(text)

    def ask(text: str) -> object:
        qa.engine.clear_caches()
        return qa.ask(text)

    encode_ms: list[float] = []
    ask_ms: list[float] = []
    for i in range(max(config.encode_questions, config.ask_questions)):
        if i < config.encode_questions:
            encode_ms += time_calls(encode, [texts[i]])
        if i < config.ask_questions:
            ask_ms += time_calls(ask, [texts[config.encode_questions + i]])
    figures = {
        "encode_fp32_p50_ms": percentile(encode_ms, 50),
        "encode_fp32_p95_ms": percentile(encode_ms, 95),
        "ask_p50_ms": percentile(ask_ms, 50),
        "ask_p95_ms": percentile(ask_ms, 95),
    }
    del encode, qa
    gc.collect()
    return {key: round(float(value or 0.0), 2) for key, value in figures.items()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServingProcesses:
    """`bookqa serve` on a free loopback port, with the summed RSS of it and its children sampled."""

    def __init__(self, command: str | None, settings: Settings) -> None:
        self.port = _free_port()
        base = shlex.split(command) if command else [sys.executable, "-m", "ui.cli", "serve"]
        self.command = [*base, "--host", "127.0.0.1", "--port", str(self.port)]
        self.env = {
            **os.environ,
            "BOOKQA_CORPUS_DIR": str(settings.corpus_dir),
            "BOOKQA_INDEX_DIR": str(settings.index_dir),
            "BOOKQA_CACHE_DIR": str(settings.cache_dir),
            "BOOKQA_MODEL": settings.model,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None  # the server's stderr (a temporary file)
        self.peak_mb = 0.0
        self._started = 0.0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float) -> float:
        """Start the server; seconds from the process start to `/readyz` answering 200."""
        self._started = time.perf_counter()
        # A file, not a pipe: the server logs a JSON line per request, and an undrained pipe would block it.
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.command, env=self.env, stdout=subprocess.DEVNULL, stderr=self._log)
        self._sampler.start()
        return self.wait_for("/readyz", timeout)

    def wait_for(self, path: str, timeout: float) -> float:
        """Seconds from the process start until `path` answers 200 (the chat is mounted after `/readyz`)."""
        assert self.process is not None and self._log is not None, "start the server first"
        deadline = time.perf_counter() + timeout
        with httpx.Client(timeout=5) as client:
            while time.perf_counter() < deadline:
                if self.process.poll() is not None:
                    self._log.seek(0)
                    raise RuntimeError(f"bookqa serve exited: {self._log.read().decode(errors='replace')[-2000:]}")
                try:
                    if client.get(f"{self.url}{path}").status_code == 200:
                        return time.perf_counter() - self._started
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
        raise RuntimeError(f"bookqa serve: {path} did not answer 200 within {timeout:.0f} s")

    def _tree(self) -> list[psutil.Process]:
        """The server and every process it started (empty once it is gone)."""
        if self.process is None:
            return []
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _summed(self, measure: Callable[[psutil.Process], float]) -> float:
        total = 0.0
        for process in self._tree():
            try:
                total += measure(process)
            except psutil.NoSuchProcess:  # ended between listing and measuring
                continue
        return total

    def rss_mb(self) -> float:
        """Summed resident memory of the server and every process it started."""
        return self._summed(lambda process: process.memory_info().rss) / 2**20

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the server and every process it started."""
        return self._summed(_cpu_seconds)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.rss_mb())
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self._log is not None:
            self._log.close()


def measure_http_sequential(url: str, texts: Sequence[str]) -> tuple[list[float], int]:
    """`/v1/ask` one request at a time: milliseconds per request and the number of failures."""
    timings, errors = [], 0
    with httpx.Client(timeout=60) as client:
        client.post(f"{url}/v1/ask", json={"question": "워밍업: 마이데이터란?"})
        for text in texts:
            started = time.perf_counter()
            response = client.post(f"{url}/v1/ask", json={"question": text})
            timings.append((time.perf_counter() - started) * 1000)
            errors += response.status_code != 200
    return timings, errors


async def _load(url: str, texts: Sequence[str], concurrency: int, seconds: float) -> tuple[int, int, float]:
    """Send `texts` with `concurrency` requests in flight, stopping after `seconds`: (done, errors, elapsed)."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for text in texts:
        queue.put_nowait(text)
    done = errors = 0
    started = time.perf_counter()
    deadline = started + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                try:
                    text = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    response = await client.post(f"{url}/v1/ask", json={"question": text})
                    errors += response.status_code != 200
                except httpx.HTTPError:
                    errors += 1
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, errors, time.perf_counter() - started


def measure_throughput(url: str, texts: Sequence[str], concurrency: int, seconds: float) -> tuple[float, int]:
    """Answered questions per second with `concurrency` in flight, and the errors seen."""
    done, errors, elapsed = asyncio.run(_load(url, texts, concurrency, seconds))
    return (done - errors) / elapsed if elapsed else 0.0, errors


def run_bench(settings: Settings, gold: Sequence[GoldQuestion], config: BenchConfig, log: Callable[[str], None]) -> BenchResult:
    """Measure everything in one run on this machine; see the module docstring."""
    log("기준(float32 sentence-transformers)과 QAService.ask를 재는 중…")
    in_process = measure_in_process(settings, gold, config)
    server = ServingProcesses(config.serve_command, settings)
    try:
        log("bookqa serve를 시작하는 중…")
        ready_s = server.start(config.ready_timeout)
        chat_ready_s = server.wait_for("/ui/", config.ready_timeout)
        time.sleep(1.0)  # let the loader thread settle before reading memory
        rss_ready = server.rss_mb()
        log("HTTP 지연 시간을 재는 중…")
        offset = config.encode_questions + config.ask_questions
        http_texts = distinct_questions(gold, config.http_questions, offset)
        http_ms, errors = measure_http_sequential(server.url, http_texts)
        offset += config.http_questions
        log("동시 요청 처리량을 재는 중…")
        rps = {}
        for concurrency in (8, 32):
            texts = distinct_questions(gold, config.load_requests, offset)
            offset += config.load_requests
            rps[concurrency], failed = measure_throughput(server.url, texts, concurrency, config.load_seconds)
            errors += failed
        log(f"채팅 사용자 {config.chat_users}명을 재는 중…")
        client_cpu, server_cpu = _cpu_seconds(psutil.Process()), server.cpu_seconds()
        chat_s = _chat_seconds(server.url, distinct_questions(gold, config.chat_users, offset))
        client_cpu, server_cpu = _cpu_seconds(psutil.Process()) - client_cpu, server.cpu_seconds() - server_cpu
        offset += config.chat_users
        chat_http_s = asyncio.run(_chat_http_seconds(server.url, distinct_questions(gold, config.chat_users, offset)))
        offset += config.chat_users
        log(f"요청 {config.rss_requests}개 뒤의 메모리를 재는 중…")
        trace, sent, failed = _memory_run(server, gold, config, offset)
        errors += failed
        rss_after = server.rss_mb()
        peak = server.peak_mb
    finally:
        server.stop()
    encode = in_process["encode_fp32_p50_ms"] or 1.0
    http_p50 = round(float(percentile(http_ms, 50) or 0.0), 2)
    result = BenchResult(
        **in_process,
        http_p50_ms=http_p50,
        http_p95_ms=round(float(percentile(http_ms, 95) or 0.0), 2),
        rps_c8=round(rps[8], 1),
        rps_c32=round(rps[32], 1),
        errors=errors,
        ready_s=round(ready_s, 2),
        chat_ready_s=round(chat_ready_s, 2),
        rss_ready_mb=round(rss_ready, 1),
        rss_peak_mb=round(peak, 1),
        rss_after_mb=round(rss_after, 1),
        rss_trace_mb=trace,
        chat_p50_s=round(float(percentile(chat_s, 50) or 0.0), 3) if chat_s else None,
        chat_max_s=round(max(chat_s), 3) if chat_s else None,
        chat_client_cpu_s=round(client_cpu, 2),
        chat_server_cpu_s=round(server_cpu, 2),
        chat_http_p50_s=round(float(percentile(chat_http_s, 50) or 0.0), 3) if chat_http_s else None,
        chat_http_max_s=round(max(chat_http_s), 3) if chat_http_s else None,
        requests_after=sent,
    )
    result.ratios = {
        "ask_p50_over_encode": round(in_process["ask_p50_ms"] / encode, 3),
        "http_p50_over_encode": round(http_p50 / encode, 3),
    }
    return result


def _chat_seconds(url: str, texts: Sequence[str]) -> list[float]:
    from gradio_client import Client

    client = Client(f"{url}/ui/", verbose=False)
    results: list[float] = []
    lock = threading.Lock()

    def one(text: str) -> None:
        started = time.perf_counter()
        client.predict(text, [], 5, "hybrid", api_name="/ask")
        with lock:
            results.append(time.perf_counter() - started)

    threads = [threading.Thread(target=one, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    return results


async def _chat_http_seconds(url: str, texts: Sequence[str]) -> list[float]:
    """Seconds per chat answer, all `texts` at once through Gradio's HTTP API: join the queue, read the event stream."""

    async def one(client: httpx.AsyncClient, text: str) -> float:
        started = time.perf_counter()
        joined = await client.post(f"{url}/ui/gradio_api/call/ask", json={"data": [text, [], 5, "hybrid"]})
        joined.raise_for_status()
        event = None
        async with client.stream("GET", f"{url}/ui/gradio_api/call/ask/{joined.json()['event_id']}") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif event in ("complete", "error") and line.startswith("data:"):
                    break
        if event != "complete":
            raise RuntimeError(f"chat answer ended with {event!r}")
        return time.perf_counter() - started

    async with httpx.AsyncClient(timeout=120) as client:
        return list(await asyncio.gather(*(one(client, text) for text in texts)))


def _cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU seconds a process has used so far."""
    times = process.cpu_times()
    return times.user + times.system


def _memory_run(
    server: ServingProcesses, gold: Sequence[GoldQuestion], config: BenchConfig, offset: int
) -> tuple[list[tuple[int, float]], int, int]:
    """Send `rss_requests` distinct questions at concurrency 8, recording RSS every tenth of the way."""
    trace = [(0, round(server.rss_mb(), 1))]
    sent = errors = 0
    step = max(config.rss_requests // 10, 1)
    deadline = time.perf_counter() + config.rss_seconds
    while sent < config.rss_requests and time.perf_counter() < deadline:
        texts = distinct_questions(gold, min(step, config.rss_requests - sent), offset + sent)
        done, failed, _ = asyncio.run(_load(server.url, texts, 8, max(deadline - time.perf_counter(), 1.0)))
        sent += done
        errors += failed
        trace.append((sent, round(server.rss_mb(), 1)))
    return trace, sent, errors


def write_results(out_dir: Path, result: BenchResult) -> list[Path]:
    """bench.json, bench.md and bench.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "bench.json", out_dir / "bench.md", out_dir / "bench.png"]
    paths[0].write_text(json.dumps(asdict(result), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(bench_markdown(result), encoding="utf-8")
    bench_chart(result, paths[2])
    return paths


TARGETS = {
    "http_p50_over_encode": ("/v1/ask p50 ÷ reference embedding", "≤ 1.0"),
    "ask_p50_over_encode": ("QAService.ask p50 ÷ reference embedding", "≤ 0.8"),
}


def bench_markdown(result: BenchResult) -> str:
    """The run as a Markdown table, figures of record (ratios) first."""
    rows = [
        ("/v1/ask p50 over HTTP, concurrency 1 ÷ reference embedding", f"{result.http_p50_ms:.1f} ÷ {result.encode_fp32_p50_ms:.1f} ms = **{result.ratios['http_p50_over_encode']:.2f}×**", "≤ 1.0×"),
        ("QAService.ask p50 (caches emptied) ÷ reference embedding", f"{result.ask_p50_ms:.1f} ÷ {result.encode_fp32_p50_ms:.1f} ms = **{result.ratios['ask_p50_over_encode']:.2f}×**", "≤ 0.8×"),
        ("/v1/ask p95 over HTTP / QAService.ask p95", f"{result.http_p95_ms:.1f} / {result.ask_p95_ms:.1f} ms", ""),
        ("answered questions per second, concurrency 8, distinct questions", f"**{result.rps_c8:.1f}**", "≥ 60"),
        ("answered questions per second, concurrency 32", f"{result.rps_c32:.1f}", ""),
        ("errors (all phases)", f"{result.errors}", "0"),
        ("from `bookqa serve` to `/readyz` 200", f"**{result.ready_s:.1f} s**", "≤ 5 s"),
        ("from `bookqa serve` to the chat page (`/ui/`) 200", f"{result.chat_ready_s:.1f} s" if result.chat_ready_s is not None else "–", ""),
        ("RSS of all serving processes: at ready / peak / after requests", f"{result.rss_ready_mb:.0f} / {result.rss_peak_mb:.0f} / {result.rss_after_mb:.0f} MB (after {result.requests_after:,})", "≤ 1,000 MB, flat"),
    ]
    if result.chat_p50_s is not None:
        cpu = ""
        if result.chat_client_cpu_s is not None:
            cpu = f" (CPU: Gradio's client {result.chat_client_cpu_s:.1f} s, server {result.chat_server_cpu_s:.1f} s)"
        rows.append((f"chat, users asking at once through Gradio's client: p50 / max", f"**{result.chat_p50_s:.2f}** / {result.chat_max_s:.2f} s{cpu}", "p50 ≤ 1 s"))
    if result.chat_http_p50_s is not None:
        rows.append(("the same through Gradio's HTTP queue API (`/gradio_api/call/ask`): p50 / max", f"{result.chat_http_p50_s:.2f} / {result.chat_http_max_s:.2f} s", ""))
    lines = ["# bookqa bench", "", "| figure | this run | target |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {target} |" for name, value, target in rows]
    lines += ["", "RSS during the long run (requests sent → MB): " + ", ".join(f"{n:,} → {mb:.0f}" for n, mb in result.rss_trace_mb), ""]
    if result.setup:
        lines += ["## Setup", ""] + [f"- {key}: {value}" for key, value in result.setup.items()] + [""]
    return "\n".join(lines)


def bench_chart(result: BenchResult, path: Path) -> None:
    """Ratios against their targets, throughput, and memory over the long run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = ["ask ÷ embed", "HTTP ÷ embed"]
    values = [result.ratios["ask_p50_over_encode"], result.ratios["http_p50_over_encode"]]
    axes[0].bar(names, values, color=["#4c72b0", "#55a868"])
    axes[0].axhline(1.0, color="grey", linestyle="--", linewidth=1)
    axes[0].set_title("p50 latency ÷ float32 query embedding")
    axes[1].bar(["c=8", "c=32"], [result.rps_c8, result.rps_c32], color="#8172b2")
    axes[1].axhline(60, color="grey", linestyle="--", linewidth=1)
    axes[1].set_title("answered questions / s (distinct)")
    xs = [n for n, _ in result.rss_trace_mb]
    ys = [mb for _, mb in result.rss_trace_mb]
    axes[2].plot(xs, ys, marker="o", color="#c44e52")
    axes[2].axhline(1000, color="grey", linestyle="--", linewidth=1)
    axes[2].set_ylim(0, max([1100, *ys]) * 1.05)
    axes[2].set_title("RSS of serving processes (MB) vs requests")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
