"""Schemathesis against the live app on a loopback uvicorn: no 5xx, and every response as the schema says.

The schemathesis command line runs all its phases (the schema's examples, boundary values,
random valid and invalid data) with all its checks: no 5xx, status codes, content types,
headers and bodies as declared, invalid data refused, valid data accepted, unsupported methods
refused. Bounded by FUZZ_EXAMPLES per operation (a few hundred requests in all); the 2,000-case
run of record is the same command with more examples (see the README).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer.engine import SearchEngine
from service.qa import QAService
from tests.servers import LoopbackServer
from ui.server import create_app

FUZZ_EXAMPLES = 40


@pytest.fixture(scope="module")
def live_server(engine: SearchEngine) -> Iterator[LoopbackServer]:
    with LoopbackServer(create_app(qa=QAService(engine))) as server:
        yield server


def run_schemathesis(url: str, examples: int, seed: int, workdir: Path, timeout: float = 600) -> tuple[int, str]:
    """`schemathesis run` against `url`'s schema with every check, in `workdir` (its cache lands there)."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
        "--checks", "all", "--max-examples", str(examples), "--seed", str(seed),
        "--generation-database", "none", "--request-timeout", "60", "--no-color", "--workers", "1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    return result.returncode, result.stdout + result.stderr


def test_schemathesis_finds_no_server_error_and_no_nonconformance(live_server: LoopbackServer, tmp_path: Path) -> None:
    code, output = run_schemathesis(live_server.url, FUZZ_EXAMPLES, seed=13, workdir=tmp_path)
    summary = re.search(r"(\d+) generated, (\d+) passed", output)
    assert code == 0 and summary, output[-6000:]
    generated = int(summary.group(1))
    assert generated == int(summary.group(2)) >= 150, summary.group(0)
    operations = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", output)
    assert operations and len(set(operations.groups())) == 1, "every operation of the schema was tested"
