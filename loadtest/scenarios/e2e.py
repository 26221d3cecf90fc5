"""e2e: send -> PostgreSQL -> Kafka -> gateway -> every member, latency at the receiver.

Latency is receive time minus send time; the send time (``time.monotonic_ns()``, one clock for
every process on Linux) travels in the message content. Every member, the sender included,
counts; lost/duplicated are per (room, seq) per receiver over every acknowledged message.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from loadtest.harness import Merged
from loadtest.profile import ProfileWindow
from loadtest.report import BenchResult, now_iso
from loadtest.scenarios.common import add_common, bench_run, counters_of, finish
from loadtest.zipf import room_sizes


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, connections=1000, duration=15, rate=100)
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the gateways over the send phase: <name>_profile.svg/.json with a CPU "
        "budget by stage (loadtest/profile.py)",
    )
    p.add_argument(
        "--account-wait",
        type=float,
        default=15.0,
        help="seconds to wait for the last deliveries before counting lost",
    )


def sizes_of(args: argparse.Namespace) -> list[int]:
    return room_sizes(args.connections, args.room_size, args.zipf, max_size=args.max_room)


def room_extra(sizes: list[int], rate: float) -> dict[str, Any]:
    """The rooms of the load, for a result's ``extra``."""
    return {
        "rooms": len(sizes),
        "largest_room": max(sizes),
        "smallest_room": min(sizes),
        # one sender per room, served round robin: rate x mean room size
        "deliveries_per_s_target": round(rate * sum(sizes) / len(sizes), 1),
    }


def run(
    args: argparse.Namespace,
    scenario: str = "e2e",
    *,
    around_send: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    on_merged: Callable[[Merged], None] | None = None,
    profile_to: tuple[str, str] | None = None,
) -> BenchResult:
    """``around_send`` wraps the sending phase, ``on_merged`` sees the merged worker results:
    the hooks the ``peers`` scenario measures CPU and keeps the histogram with; ``profile_to``
    is the (folder, name) of ``--profile``'s files (default: ``--out``, ``<name>_profile``)."""
    started = now_iso()
    sizes = sizes_of(args)
    with bench_run(scenario, args, sizes) as r:
        identified, failed, connect_s = r.start_clients()
        t0 = time.monotonic()
        with (
            ProfileWindow(r.cluster.pids, getattr(args, "profile", False)) as prof,
            around_send(),
        ):
            acked = r.harness.run(args.duration, args.rate)
        merged = r.harness.account(acked, args.account_wait)
        elapsed = time.monotonic() - t0
        out_dir, name = profile_to or (args.out, f"{args.name or scenario}_profile")
        prof.write(
            out_dir,
            name,
            acks=merged.counters.get("acked", 0),
            deliveries=merged.counters.get("delivered", 0),
            note=f"{args.gateways} gateways, {args.connections} connections, {args.rate}/s",
        )
    if on_merged is not None:
        on_merged(merged)
    counters = counters_of(merged)
    return finish(
        scenario,
        args,
        started_at=started,
        duration_s=elapsed,
        counters=counters,
        merged=merged,
        extra=room_extra(sizes, args.rate)
        | {
            "identified": identified,
            "connect_failed": failed,
            "connect_s": round(connect_s, 2),
        },
    )
