"""The peers scenario on real servers: Socket.IO on Node (npm ci'd here when missing),
python-socketio, and shardchat's e2e path on the local engines, each under a small e2e load.

Every target must deliver every acknowledged message to every member of its room exactly once
(0 lost, 0 duplicated) and write the documented JSON (loadtest/peers/compare.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest

from loadtest.cli import main
from loadtest.peers import centrifugo, node_deps
from loadtest.peers.compare import PeersResult
from loadtest.report import Latency

CONNECTIONS = 200
RATE = 20
DURATION = 5


def _run(tmp_path: Path, targets: str, *extra: str) -> tuple[int, PeersResult, dict[str, Any]]:
    code = main(
        [
            "peers",
            "--targets",
            targets,
            "--connections",
            str(CONNECTIONS),
            "--rate",
            str(RATE),
            "--duration",
            str(DURATION),
            "--room-size",
            "10",
            "--workers",
            "2",
            "--sources",
            "2",
            "--pause",
            "0.5",
            "--out",
            str(tmp_path),
            "--log-dir",
            str(tmp_path / "logs"),
            "--no-progress",
            *extra,
        ]
    )
    raw = (tmp_path / "peers.json").read_bytes()
    return code, msgspec.json.decode(raw, type=PeersResult), json.loads(raw)


def _check_target(result: PeersResult, index: int, target: str, durable: bool) -> None:
    row = result.summary[index]
    assert "error" not in row, row
    bench = result.results[index]
    c = bench.counters
    assert row["target"] == target == bench.extra["target"]
    assert bench.scenario == f"peers-{target}"
    assert row["durable"] is durable and bench.extra["durable"] is durable
    assert bench.extra["persistence"]
    assert bench.extra["identified"] == CONNECTIONS
    assert c["sent"] >= RATE * DURATION * 0.9
    assert c["acked"] == c["sent"]
    # one sender per room of 10: every acknowledged message reaches all 10 members once
    assert c["expected"] == c["acked"] * 10
    assert c["delivered"] == c["expected"]
    assert c["lost"] == 0 and c["duplicated"] == 0
    assert row["lost"] == 0 and row["duplicated"] == 0 and row["delivered"] == c["delivered"]
    assert bench.latency_ms["count"] == c["delivered"]
    assert {"p50", "p90", "p99", "p99_9", "max"} <= set(row["latency_ms"])
    assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"] <= row["latency_ms"]["max"]
    assert row["delivered_per_s"] > 0
    assert bench.params["connections"] == CONNECTIONS and bench.params["rate"] == RATE
    assert "targets" not in bench.params
    assert {"server_cpu_s", "clients_cpu_s", "window_s"} <= set(bench.extra["cpu"])
    hdr = Latency.decode(bench.extra["latency_hdr"].encode("ascii"))
    assert hdr.count == c["delivered"]


def test_node_deps_install_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    modules = node_deps.ensure_node_deps()  # npm ci on a fresh checkout
    assert (modules / "socket.io" / "package.json").is_file()
    assert node_deps.installed()

    def no_npm(*a: Any, **kw: Any) -> None:
        raise AssertionError("npm ran again")

    monkeypatch.setattr(subprocess, "run", no_npm)
    assert node_deps.ensure_node_deps() == modules


def test_socketio_peers_deliver_everything_once(tmp_path: Path) -> None:
    code, result, raw = _run(tmp_path, "socketio-node,python-socketio")
    assert code == 0
    assert result.scenario == "peers"
    assert result.targets_requested == ["socketio-node", "python-socketio"]
    assert [r["target"] for r in result.summary] == ["socketio-node", "python-socketio"]
    _check_target(result, 0, "socketio-node", durable=False)
    _check_target(result, 1, "python-socketio", durable=False)
    assert "socket.io 4." in result.results[0].extra["server_banner"]
    assert "python-socketio 5." in result.results[1].extra["server_banner"]
    assert result.results[1].extra["server_gc_pauses"]["threshold_ms"] == 20
    assert result.counters["lost"] == 0 and result.counters["duplicated"] == 0
    assert result.counters["failed_targets"] == 0
    assert set(raw) >= {"schema_version", "params", "machine", "counters", "summary", "results"}
    assert (tmp_path / "peers.png").stat().st_size > 0


def test_shardchat_target_is_the_durable_e2e_path(
    tmp_path: Path, pg_dsn: str, redis_url: str, kafka_bootstrap: str
) -> None:
    code, result, _ = _run(tmp_path, "shardchat", "--gateways", "2")
    assert code == 0
    _check_target(result, 0, "shardchat", durable=True)
    bench = result.results[0]
    assert bench.extra["server"] == "2 shardchat gateway processes"
    assert bench.extra["cpu"]["server_cpu_s"] > 0  # the gateways were found and measured
    assert "engines_cpu_s" in bench.extra["cpu"]
    assert list(tmp_path.glob("*.json")) == [tmp_path / "peers.json"]  # e2e's own: elsewhere


@pytest.mark.skipif(
    not centrifugo.installed(),
    reason="Centrifugo is built by the benchmark set-up only: python -m loadtest.peers.centrifugo",
)
def test_centrifugo_peer_delivers_everything_once(tmp_path: Path, redis_url: str) -> None:
    code, result, _ = _run(tmp_path, "centrifugo", "--idle-window", "1")
    assert code == 0
    _check_target(result, 0, "centrifugo", durable=False)
    bench = result.results[0]
    assert centrifugo.VERSION.lstrip("v") in bench.extra["server_banner"]
    cpu = bench.extra["cpu"]
    assert cpu["server_cpu_s"] > 0 and "engines_cpu_s" in cpu and "engines_idle_cpu_pct" in cpu
    cost = result.summary[0]["cost"]
    assert cost["total_cpu_ms_per_ack"] >= cost["server_cpu_ms_per_ack"] > 0
    assert cost["server_cpu_us_per_delivery"] > 0
