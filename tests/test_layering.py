"""STYLE.md §1: the protocol core is sans-I/O, and imports point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kluis"
IO_MODULES = {
    "asyncio",
    "socket",
    "sqlite3",
    "ssl",
    "select",
    "selectors",
    "subprocess",
    "time",
    "random",
    "secrets",
    "threading",
    "aiohttp",
    "websockets",
    "redis",
    "os",
    "io",
    "pathlib",
    "shutil",
    "logging",
}
LAYER_ORDER = ["protocol", "relay", "server", "client", "cli", "tui"]
ALLOWED = {
    "protocol": {"protocol"},
    "relay": {"protocol", "relay"},
    "server": {"protocol", "relay", "server"},
    "client": {"protocol", "relay", "client"},
    # The command line is the entry point: `kluis chat` starts the terminal app (tui never imports cli).
    "cli": set(LAYER_ORDER),
    "tui": {"protocol", "relay", "client", "tui"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(layer: str) -> list[Path]:
    return sorted((SRC / layer).rglob("*.py"))


@pytest.mark.parametrize("path", modules("protocol"), ids=lambda p: p.name)
def test_protocol_imports_no_io(path: Path) -> None:
    bad = {m for m in imports_of(path) if m.split(".")[0] in IO_MODULES}
    assert not bad, f"{path.name} imports I/O modules {bad}"


@pytest.mark.parametrize("layer", LAYER_ORDER)
def test_imports_point_one_way(layer: str) -> None:
    for path in modules(layer):
        for module in imports_of(path):
            parts = module.split(".")
            if parts[0] == "kluis" and len(parts) > 1 and parts[1] in LAYER_ORDER:
                assert parts[1] in ALLOWED[layer], f"{path} imports {module}"
