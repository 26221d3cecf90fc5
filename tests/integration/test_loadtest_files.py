"""Smoke of the files benchmark (loadtest/files.py): a real ``shardchat dev`` with its
filesystem object store, two small files each way; the JSON result has the loadtest schema and
per-size throughput for both directions."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from loadtest.files import main
from loadtest.report import BenchResult

pytestmark = pytest.mark.timeout(180)


def test_files_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "files.json"
    main(
        [
            "--sizes-mib",
            "0.25,1",
            "--files",
            "2",
            "--concurrency",
            "2",
            "--out",
            str(out),
            "--server-log",
            str(tmp_path / "server.log"),
        ]
    )
    result = msgspec.json.decode(out.read_bytes(), type=BenchResult)
    assert result.scenario == "files"
    assert result.counters["delivered"] == 4 and result.counters["errors"] == 0
    for size in ("0.25MiB", "1MiB"):
        for phase in ("upload", "download"):
            stats = result.extra["sizes"][size][phase]
            assert stats["files"] == 2 and stats["mib_per_s"] > 0, (size, phase, stats)
    assert result.extra["sizes"]["1MiB"]["upload"]["attach_ms"]["count"] == 2
