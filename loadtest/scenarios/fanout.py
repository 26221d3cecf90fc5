"""fanout: one sender per room of 10 / 100 / 1000 members; frames per gateway CPU-second.

Each room size runs alone for ``--duration`` seconds; the gateways' CPU time comes from
/proc/PID/stat before and after, so client work is never charged to them. Frames delivered =
acknowledged messages x room size (every member, the sender too), checked by the lost/duplicated
accounting over all phases at the end.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from loadtest.memory import total_cpu_seconds
from loadtest.report import BenchResult, now_iso
from loadtest.scenarios.common import add_common, bench_run, counters_of, finish


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, connections=0, duration=5, rate=50, gateways=1)
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--account-wait", type=float, default=15.0)


def run(args: argparse.Namespace) -> BenchResult:
    started = now_iso()
    sizes = sorted(args.sizes)
    args.connections = sum(sizes)
    phases: list[dict[str, Any]] = []
    acked_all: dict[int, list[int]] = {}
    with bench_run("fanout", args, sorted(sizes, reverse=True)) as r:
        r.start_clients()
        t0 = time.monotonic()
        for room_id, members in sorted(r.population.rooms, key=lambda rm: len(rm[1])):
            cpu0 = total_cpu_seconds(r.cluster.pids)
            acked = r.harness.run(args.duration, args.rate, rooms=frozenset([room_id]))
            cpu = total_cpu_seconds(r.cluster.pids) - cpu0
            n = sum(len(v) for v in acked.values())
            frames = n * len(members)
            phases.append(
                {
                    "members": len(members),
                    "messages": n,
                    "frames": frames,
                    "gateway_cpu_s": round(cpu, 3),
                    "frames_per_gateway_cpu_s": round(frames / cpu) if cpu else None,
                }
            )
            for room, seqs in acked.items():
                acked_all.setdefault(room, []).extend(seqs)
        merged = r.harness.account(acked_all, args.account_wait)
        elapsed = time.monotonic() - t0
    return finish(
        "fanout",
        args,
        started_at=started,
        duration_s=elapsed,
        counters=counters_of(merged),
        merged=merged,
        extra={"phases": phases},
    )
