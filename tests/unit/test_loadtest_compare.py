"""loadtest.compare: figures flattened by name, the direction of each, the 20 % rule, exit codes,
on the real shapes of loadtest/results (a BenchResult, the peers wrapper, a micro-benchmark)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from loadtest.compare import compare, direction, flatten, main

RESULTS = Path(__file__).resolve().parents[2] / "loadtest" / "results"


def _peers() -> dict[str, Any]:
    body: dict[str, Any] = json.loads((RESULTS / "peers.json").read_text())
    return body


def test_direction_by_name() -> None:
    assert direction("summary[shardchat].latency_ms.p99") == "lower"
    assert direction("extra.ack_latency_ms.p50") == "lower"
    assert direction("summary[shardchat].cpu.server_cpu_s") == "lower"
    assert direction("summary[x].cpu.total_cpu_ms_per_ack") == "lower"
    assert direction("counters.lost") == "lower"
    assert direction("throughput.delivered_per_s") == "higher"
    assert direction("runs[members=10,per_tick=1].gateway_frames_per_cpu_s") == "higher"
    assert direction("runs[members=10,per_tick=1].speedup") == "higher"
    # counts that follow the run's length, and the CPU window itself: listed, never judged
    assert direction("counters.delivered") == "none"
    assert direction("latency_ms.count") == "none"
    assert direction("summary[shardchat].cpu.window_s") == "none"


def test_lists_are_keyed_by_identity_not_position() -> None:
    flat = flatten(_peers())
    assert "summary[shardchat].latency_ms.p99" in flat
    assert "summary[socketio-node].latency_ms.p99" in flat
    assert not any(k.startswith("params") or ".timeline" in k for k in flat)
    fan = flatten(json.loads((RESULTS / "fanout.json").read_text()))
    assert "runs[members=1000,per_tick=1,events=400].gateway_frames_per_cpu_s" in fan
    assert not any("samples" in k for k in fan)


def test_the_same_run_flags_nothing(tmp_path: Path) -> None:
    path = RESULTS / "peers.json"
    assert main([str(path), str(path)]) == 0
    assert not [c for c in compare(_peers(), _peers()) if c.flagged]


def test_more_than_20_percent_worse_is_flagged_either_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _peers()
    new = copy.deepcopy(old)
    row = new["summary"][0]
    assert row["target"] == "shardchat"
    row["latency_ms"]["p99"] = old["summary"][0]["latency_ms"]["p99"] * 1.21  # worse
    row["latency_ms"]["p50"] = old["summary"][0]["latency_ms"]["p50"] * 1.19  # within 20 %
    row["delivered_per_s"] = old["summary"][0]["delivered_per_s"] * 0.7  # worse (rate)
    row["cpu"]["server_cpu_s"] = old["summary"][0]["cpu"]["server_cpu_s"] * 0.5  # better
    row["lost"] = 3  # from 0: always worse
    new["summary"].reverse()  # order does not matter: items are keyed by target
    flagged = {c.figure for c in compare(old, new) if c.flagged}
    assert flagged == {
        "summary[shardchat].latency_ms.p99",
        "summary[shardchat].delivered_per_s",
        "summary[shardchat].lost",
    }
    a, b = tmp_path / "old.json", tmp_path / "new.json"
    a.write_text(json.dumps(old))
    b.write_text(json.dumps(new))
    out = tmp_path / "cmp.json"
    assert main([str(a), str(b), "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert "! summary[shardchat].latency_ms.p99" in text
    assert "3 of " in text
    body = json.loads(out.read_text())
    assert {f["figure"] for f in body["flagged"]} == flagged
    assert main([str(a), str(b), "--threshold", "0.5"]) == 1  # the rate (-30 %) passes, lost not


def test_params_difference_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _peers()
    new = copy.deepcopy(old)
    new["params"]["rate"] = 400
    a, b = tmp_path / "old.json", tmp_path / "new.json"
    a.write_text(json.dumps(old))
    b.write_text(json.dumps(new))
    assert main([str(a), str(b)]) == 0
    assert "params differ" in capsys.readouterr().out


def test_unreadable_input_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main([str(bad), str(RESULTS / "peers.json")]) == 2
