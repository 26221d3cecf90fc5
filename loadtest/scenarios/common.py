"""What every scenario shares: options, the cluster + population + harness lifecycle, output."""

from __future__ import annotations

import argparse
import asyncio
import math
import secrets
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.addresses import source_addresses
from loadtest.cluster import Cluster
from loadtest.harness import Harness, HarnessOptions, Merged, plan_clients
from loadtest.population import Population, populate
from loadtest.report import BenchResult, build_result, write_json, write_plot

PER_WORKER = 5000  # connections per client process: well under the 20k fd limit, one core each


def add_common(
    p: argparse.ArgumentParser,
    *,
    connections: int,
    duration: float,
    rate: float,
    room_size: float = 10,
    gateways: int = 2,
) -> None:
    p.add_argument("--connections", type=int, default=connections, help="client sessions")
    p.add_argument("--gateways", type=int, default=gateways, help="gateway processes")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help=f"client processes (0 = one per {PER_WORKER} connections, at least 2)",
    )
    p.add_argument("--duration", type=float, default=duration, help="seconds of sending")
    p.add_argument("--rate", type=float, default=rate, help="messages sent per second, total")
    p.add_argument("--room-size", type=float, default=room_size, help="mean members per room")
    p.add_argument(
        "--zipf",
        type=float,
        default=0.0,
        help="room-size exponent: 0 = equal rooms, 1 = Zipf (few big, many small)",
    )
    p.add_argument("--max-room", type=int, default=None, help="cap on one room's members")
    p.add_argument("--senders-per-room", type=int, default=1)
    p.add_argument(
        "--sources",
        type=int,
        default=4,
        help="client source addresses 127.0.0.2..: 28k ports per address pair",
    )
    p.add_argument("--content-bytes", type=int, default=120)
    # 50: the gateway's Redis pool (redis-py default 100 connections) raises instead of
    # waiting when more registry calls are in flight, and each IDENTIFY/RESUME makes some.
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=50,
        help="handshakes (and closes) in flight per client process",
    )
    p.add_argument("--connect-timeout", type=float, default=300.0)
    p.add_argument(
        "--event-log",
        choices=("kafka", "redis-streams", "nats"),
        default="kafka",
        help="the event log of the gateways (local engines; --embedded uses the memory log)",
    )
    p.add_argument(
        "--embedded",
        action="store_true",
        help="one gateway on SQLite + memory adapters instead of the local engines",
    )
    add_run_options(p)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """``--set``, ``--out``, ``--name``, ``--log-dir``, ``--no-progress`` (cluster scenarios)."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SHARDCHAT_NAME=VALUE",
        help="a service setting for this run (repeatable), e.g. SHARDCHAT_RING_BUFFER_EVENTS=64",
    )
    p.add_argument("--out", default="loadtest/results", help="folder for the results")
    p.add_argument("--name", default="", help="result file name (default: the scenario)")
    # Outside the repository: service logs of a big run are tens of MB, not results.
    p.add_argument(
        "--log-dir",
        default=str(Path(tempfile.gettempdir()) / "shardchat-bench"),
        help="service stdout/stderr, one folder per run",
    )
    p.add_argument("--no-progress", action="store_true")


def params_of(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"func", "out", "log_dir", "no_progress", "name"}
    return {k: v for k, v in vars(args).items() if k not in skip}


@dataclass
class Run:
    run_id: str
    cluster: Cluster
    population: Population
    harness: Harness
    args: argparse.Namespace

    def start_clients(self) -> tuple[int, int, float]:
        """Spawn the client processes and wait until every session is identified."""
        self.harness.start()
        return self.harness.wait_connected(self.args.connect_timeout)


def harness_options(args: argparse.Namespace, connections: int) -> HarnessOptions:
    """The client processes' options from the common arguments (``--workers`` 0: one process
    per PER_WORKER connections, at least 2, never more than the connections)."""
    workers = args.workers or max(2, math.ceil(connections / PER_WORKER))
    return HarnessOptions(
        workers=min(workers, connections),
        senders_per_room=args.senders_per_room,
        sources=source_addresses(args.sources),
        connect_concurrency=args.connect_concurrency,
        content_bytes=args.content_bytes,
        progress=not args.no_progress,
    )


def settings_overrides(items: list[str]) -> dict[str, str]:
    """``--set`` values as environment entries; anything but ``SHARDCHAT_NAME=VALUE`` is refused."""
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.startswith("SHARDCHAT_") or name != name.upper():
            raise SystemExit(f"--set {item!r}: expected SHARDCHAT_NAME=VALUE")
        out[name] = value
    return out


@contextmanager
def bench_run(scenario: str, args: argparse.Namespace, sizes: list[int]) -> Iterator[Run]:
    """Cluster up (migrate, population, gateways), harness planned; all torn down after."""
    run_id = secrets.token_hex(4)
    log_dir = Path(args.log_dir) / f"{scenario}-{run_id}"
    overrides = settings_overrides(args.set)
    if args.embedded:
        cluster = Cluster.embedded(run_id, log_dir, overrides)
    else:
        cluster = Cluster.on_engines(
            run_id, args.gateways, log_dir, overrides, event_log=args.event_log
        )
    harness: Harness | None = None
    try:
        cluster.migrate()
        # Before the gateways start: on SQLite nothing then races the population's writes.
        population = run_async(populate(cluster.settings(), sizes, run_id))
        cluster.start_gateways()
        opts = harness_options(args, sum(sizes))
        harness = Harness(scenario, plan_clients(population, cluster.urls, opts), opts)
        yield Run(run_id, cluster, population, harness, args)
    finally:
        if harness is not None:
            harness.close()
        cluster.stop()


def run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def counters_of(m: Merged) -> dict[str, int]:
    """The schema's counters (sent = SENDs written, delivered = first-time receptions)."""
    c = dict(m.counters)
    c.setdefault("sent", 0)
    c.setdefault("delivered", 0)
    c.setdefault("errors", 0)
    c.setdefault("reconnects", 0)
    return c


def merged_result(
    scenario: str,
    *,
    started_at: str,
    duration_s: float,
    params: dict[str, Any],
    counters: dict[str, int],
    merged: Merged | None,
    extra: dict[str, Any],
) -> BenchResult:
    """The BenchResult of a harness run: its latency and timeline, and its ack and connect
    latency summaries first in ``extra``."""
    if merged is not None:
        extra = {
            "ack_latency_ms": merged.ack_latency.summary(),
            "connect_latency_ms": merged.connect_latency.summary(),
        } | extra
    return build_result(
        scenario,
        started_at=started_at,
        duration_s=duration_s,
        params=params,
        counters=counters,
        latency=merged.latency if merged else None,
        timeline=merged.timeline if merged else None,
        extra=extra,
    )


def finish(
    scenario: str,
    args: argparse.Namespace,
    *,
    started_at: str,
    duration_s: float,
    counters: dict[str, int],
    merged: Merged | None,
    extra: dict[str, Any],
) -> BenchResult:
    result = merged_result(
        scenario,
        started_at=started_at,
        duration_s=duration_s,
        params=params_of(args),
        counters=counters,
        merged=merged,
        extra=extra,
    )
    name = args.name or scenario
    out = Path(args.out)
    path = write_json(result, out / f"{name}.json")
    write_plot(result, merged.latency if merged else None, out / f"{name}.png")
    lat = result.latency_ms
    print(f"{scenario}: wrote {path}", file=sys.stderr)
    print(f"{scenario}: counters {result.counters}", file=sys.stderr)
    if lat.get("count"):
        print(
            f"{scenario}: latency p50 {lat['p50']} ms p99 {lat['p99']} ms "
            f"max {lat['max']} ms over {lat['count']}",
            file=sys.stderr,
        )
    return result
