"""End-to-end smoke of the harness: one ``shardchat gateway`` subprocess on SQLite + memory
adapters, 20 client sessions in two worker processes, 5 s of sends."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from loadtest.cli import main
from loadtest.report import BenchResult


def test_e2e_smoke_embedded(tmp_path: Path) -> None:
    code = main(
        [
            "e2e",
            "--embedded",
            "--connections",
            "20",
            "--duration",
            "5",
            "--rate",
            "10",
            "--workers",
            "2",
            "--sources",
            "2",
            "--out",
            str(tmp_path),
            "--log-dir",
            str(tmp_path / "logs"),
            "--no-progress",
        ]
    )
    raw = (tmp_path / "e2e.json").read_bytes()
    result = msgspec.json.decode(raw, type=BenchResult)  # the schema of loadtest/report.py
    c = result.counters
    assert code == 0
    assert c["delivered"] > 0
    assert c["lost"] == 0
    assert c["duplicated"] == 0
    assert c["acked"] > 0
    assert c["delivered"] == c["expected"]  # every member saw every acknowledged message
    assert result.scenario == "e2e"
    assert result.latency_ms["count"] == c["delivered"]
    assert set(json.loads(raw)) >= {
        "schema_version",
        "params",
        "machine",
        "counters",
        "throughput",
        "latency_ms",
        "timeline",
        "extra",
    }


def test_set_takes_shardchat_settings_only() -> None:
    from loadtest.scenarios.common import settings_overrides

    assert settings_overrides(["SHARDCHAT_RING_BUFFER_EVENTS=64", "SHARDCHAT_X=a=b"]) == {
        "SHARDCHAT_RING_BUFFER_EVENTS": "64",
        "SHARDCHAT_X": "a=b",
    }
    for bad in ("RING=1", "SHARDCHAT_RING", "shardchat_ring=1"):
        with pytest.raises(SystemExit, match="SHARDCHAT_NAME=VALUE"):
            settings_overrides([bad])
