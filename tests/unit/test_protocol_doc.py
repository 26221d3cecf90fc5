"""docs/protocol.md stays true and stands alone: its GraphQL schema is the edge's, its error
codes are shardchat.errors', its close codes are protocol.close_codes', and it points at no
file outside the repository."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from graphql import build_schema, lexicographic_sort_schema, print_schema

from graphql_edge.sdl import SDL
from protocol.close_codes import CloseCode
from shardchat.errors import ErrorCode

DOCS = Path(__file__).resolve().parents[2] / "docs"
PROTOCOL = (DOCS / "protocol.md").read_text()


def _canonical(sdl: str) -> str:
    return print_schema(lexicographic_sort_schema(build_schema(sdl)))


def test_the_documented_schema_is_the_edges() -> None:
    (block,) = re.findall(r"```graphql\n(.*?)```", PROTOCOL, re.S)
    assert _canonical(block) == _canonical(SDL)


def test_error_and_close_codes_are_the_codes_in_use() -> None:
    section = PROTOCOL.split("### Errors", 1)[1].split("###", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.M))
    assert documented == set(typing.get_args(ErrorCode))
    closes = PROTOCOL.split("## 5. Close codes", 1)[1].split("## 6.", 1)[0]
    documented_closes = {int(c) for c in re.findall(r"^\| (\d{4}) \|", closes, re.M)}
    assert documented_closes == {int(c) for c in CloseCode if c >= 4000}  # 1000/1001: standard


def test_docs_point_only_inside_the_repository() -> None:
    for doc in DOCS.glob("*.md"):
        text = doc.read_text()
        assert "PROTOCOL.md" not in text, doc.name
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if not target.startswith(("http://", "https://")):
                assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
