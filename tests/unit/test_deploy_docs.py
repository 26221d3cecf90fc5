"""docs/operations.md documents every setting of shardchat/config.py with its env var."""

from __future__ import annotations

from pathlib import Path

import msgspec

from shardchat.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_every_setting_is_documented() -> None:
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in DOC.read_text().splitlines()
        if line.startswith("| `")
    }
    for field in msgspec.structs.fields(Settings):
        row = rows.get(field.name)
        assert row is not None, f"{field.name} missing from docs/operations.md"
        assert f"`SHARDCHAT_{field.name.upper()}`" in row, field.name
