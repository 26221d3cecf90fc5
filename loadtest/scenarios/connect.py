"""connect: how fast sessions are established, how many are held, idle memory per session.

Idle memory per identified session = (gateways' VmRSS after - before) / sessions, read from
/proc after the connections have sat idle for ``--hold`` seconds (loadtest/memory.py).
"""

from __future__ import annotations

import argparse
import time

from loadtest.memory import per_session_kib, total_rss_kib
from loadtest.report import BenchResult, now_iso
from loadtest.scenarios.common import add_common, bench_run, counters_of, finish
from loadtest.scenarios.e2e import sizes_of


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, connections=2000, duration=0, rate=0)
    p.add_argument("--hold", type=float, default=5.0, help="idle seconds before measuring")


def run(args: argparse.Namespace) -> BenchResult:
    started = now_iso()
    sizes = sizes_of(args)
    with bench_run("connect", args, sizes) as r:
        pids = r.cluster.pids
        time.sleep(1.0)  # let the fresh gateways settle before the baseline
        before = total_rss_kib(pids)
        per_gw_before = {pid: total_rss_kib([pid]) for pid in pids}
        identified, failed, connect_s = r.start_clients()
        hold_end = time.monotonic() + args.hold
        while time.monotonic() < hold_end:
            r.harness.pump(0.2)
            r.harness.show(phase="idle")
        after = total_rss_kib(pids)
        per_gw_after = {pid: total_rss_kib([pid]) for pid in pids}
        merged = r.harness.account({}, 1.0)
    counters = counters_of(merged) | {"identified": identified, "connect_failed": failed}
    return finish(
        "connect",
        args,
        started_at=started,
        duration_s=connect_s,
        counters=counters,
        merged=merged,
        extra={
            "sessions_held": identified,
            "connections_per_s": round(identified / connect_s, 1) if connect_s else 0,
            "gateway_rss_before_kib": before,
            "gateway_rss_after_kib": after,
            "idle_kib_per_session": per_session_kib(before, after, identified),
            "per_gateway_rss_kib": [
                {"before": per_gw_before[p], "after": per_gw_after[p]} for p in pids
            ],
        },
    )
