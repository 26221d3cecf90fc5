"""The short chaos run (``pytest -m chaos``): every fault kind once on the real engines.

``shardchat bench chaos --duration 120`` with a fixed seed: 2 gateways, the edge and the router
as processes on PostgreSQL, Kafka and Redis behind the fault proxy; one round of every cluster
fault (gateway SIGKILL and SIGSTOP, edge and router SIGKILL, Kafka kill -9, PostgreSQL
immediate restart, Redis restart and FLUSHALL, latency, stalls and resets on each kind of link)
and every member fault (offline with a multi-MiB backlog then RESUME, offline then a new session
and SUBSCRIBE ``after_seq``, a member that stops reading, leaves, one of them while offline).
Every acknowledged message must reach every member that stayed, once, in order; nothing may
leak to a member that left. Replay another plan with ``SHARDCHAT_CHAOS_SEED=N`` (and only some
kinds of it with ``SHARDCHAT_CHAOS_ONLY=kind,...``); the JSON and the service logs of a failed
run are kept under the test's tmp folder (paths in the output).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from loadtest.chaos.schedule import KINDS
from loadtest.cli import main
from loadtest.report import BenchResult

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(1200)]

SEED = int(os.environ.get("SHARDCHAT_CHAOS_SEED", "20261129"))
ONLY = os.environ.get("SHARDCHAT_CHAOS_ONLY", "")  # e.g. kafka_kill,offline_resume: one replay


def test_short_chaos_run_loses_duplicates_reorders_and_leaks_nothing(tmp_path: Path) -> None:
    code = main(
        [
            "chaos",
            "--duration",
            "120",
            "--seed",
            str(SEED),
            "--bound",
            "60",
            "--out",
            str(tmp_path),
            "--log-dir",
            str(tmp_path / "logs"),
            "--no-progress",
            *(["--only", ONLY] if ONLY else []),
        ]
    )
    result = msgspec.json.decode((tmp_path / "chaos.json").read_bytes(), type=BenchResult)
    totals = result.extra["totals"]
    rows = {row["kind"]: row for row in result.extra["faults"]}
    print(f"chaos seed {SEED}: {result.extra['command']}; logs {result.extra['logs']}")
    assert set(KINDS) <= set(rows)
    kinds = ONLY.split(",") if ONLY else KINDS
    assert all(rows[kind]["injected"] >= 1 for kind in kinds), rows  # every fault happened
    assert result.extra["nemesis_errors"] == []
    assert totals["acked"] > 0 and totals["delivered"] > 0
    bad = {
        k: totals[k]
        for k in (
            "lost",
            "duplicated",
            "reordered",
            "leaked",
            "unacked",
            "refused",
            "not_stored",
            "ack_mismatch",
            "stored_twice",
        )
        if totals[k]
    }
    assert not bad, (bad, result.extra["examples"])
    assert totals["delivered"] == totals["expected"]
    assert code == 0
