"""The layers point one way: indexer ← service ← ui / eval; the composition roots sit at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What each package may import of bookqa's own packages.
ALLOWED = {
    "indexer": {"indexer"},
    "service": {"indexer", "service"},
    "ui": {"indexer", "service", "ui"},
    "eval": {"indexer", "service", "eval"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level names a module imports (absolute imports only; bookqa uses no relative ones)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_layer_imports_a_higher_one(package: str) -> None:
    own = set(ALLOWED)
    for path in sorted((REPO / package).rglob("*.py")):
        forbidden = (imported_packages(path) & own) - ALLOWED[package]
        assert not forbidden, f"{path.relative_to(REPO)} imports {sorted(forbidden)}"


def test_the_cli_gets_every_command() -> None:
    from typer.testing import CliRunner

    from ui.cli import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("index", "search", "ask", "serve", "eval", "bench", "feedback"):
        assert command in result.output
    # An entry point may bring a whole group of commands (a typer.Typer): `bench scale`, `bench stores`.
    group = CliRunner().invoke(app, ["bench", "--help"])
    assert group.exit_code == 0 and "scale" in group.output and "stores" in group.output
