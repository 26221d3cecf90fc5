"""The layout rules of docs/architecture.md, checked on the source (imports only, via ast)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "protocol",
    "shardchat",
    "user_core",
    "chat_core",
    "gateway",
    "router",
    "graphql_edge",
    "loadtest",
)
ENGINE_CLIENTS = frozenset(
    {"aiokafka", "redis", "asyncpg", "aiosqlite", "nats", "aiobotocore", "botocore"}
)
ADAPTERS = ROOT / "shardchat" / "adapters"
# protocol/ is sans-I/O: bytes in, events out. No event loop, no sockets, no engine clients.
PROTOCOL_FORBIDDEN = frozenset(
    {
        "asyncio",
        "socket",
        "selectors",
        "ssl",
        "uvloop",
        "websockets",
        "picows",
        "trio",
        "anyio",
        *ENGINE_CLIENTS,
    }
)


def _sources(package: str) -> Iterator[Path]:
    base = ROOT / package
    if base.is_dir():
        yield from sorted(base.rglob("*.py"))


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_protocol_is_pure() -> None:
    bad = {_rel(p): sorted(_imported_roots(p) & PROTOCOL_FORBIDDEN) for p in _sources("protocol")}
    assert {k: v for k, v in bad.items() if v} == {}


@pytest.mark.parametrize("package", PACKAGES)
def test_only_adapters_import_engine_clients(package: str) -> None:
    bad = {
        _rel(p): sorted(_imported_roots(p) & ENGINE_CLIENTS)
        for p in _sources(package)
        if ADAPTERS not in p.parents
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_ports_do_not_import_their_adapters() -> None:
    """The composition root picks adapters; a port module never names one at import time."""
    for port in ("store", "eventlog", "registry", "objectstore"):
        tree = ast.parse((ROOT / "shardchat" / f"{port}.py").read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        named = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        named |= {n.module or "" for n in top if isinstance(n, ast.ImportFrom)}
        assert not {m for m in named if m.startswith("shardchat.adapters")}, port


def test_partitioner_is_pure() -> None:
    roots = _imported_roots(ROOT / "shardchat" / "partitioner.py")
    assert roots <= {"__future__", "struct"}
