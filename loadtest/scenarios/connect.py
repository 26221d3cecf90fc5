"""connect: how fast sessions are established, how many are held, idle memory per session.

Idle memory per identified session = (gateways' VmRSS after - before) / sessions, read from
/proc after the connections have sat idle for ``--hold`` seconds (loadtest/memory.py).
Idle CPU: the gateways' CPU seconds over the hold (after a 2 s settle), as percent of one core
per gateway and per 10,000 sessions held by a gateway (``idle_cpu_pct_per_10k_per_gateway``);
hold longer than the heartbeat interval (41.25 s) so every session heartbeats in the window.
"""

from __future__ import annotations

import argparse
import time

from loadtest.memory import per_session_kib, total_rss_kib
from loadtest.peers import cpu
from loadtest.profile import ProfileWindow
from loadtest.report import BenchResult, now_iso
from loadtest.scenarios.common import add_common, bench_run, counters_of, finish
from loadtest.scenarios.e2e import sizes_of


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, connections=2000, duration=0, rate=0)
    p.add_argument("--hold", type=float, default=5.0, help="idle seconds before measuring")
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the gateways while sessions connect: <name>_profile.svg/.json with the "
        "CPU per IDENTIFY by stage (loadtest/profile.py)",
    )


def run(args: argparse.Namespace) -> BenchResult:
    started = now_iso()
    sizes = sizes_of(args)
    with bench_run("connect", args, sizes) as r:
        pids = r.cluster.pids
        time.sleep(1.0)  # let the fresh gateways settle before the baseline
        before = total_rss_kib(pids)
        per_gw_before = {pid: total_rss_kib([pid]) for pid in pids}
        with ProfileWindow(pids, args.profile) as prof:
            identified, failed, connect_s = r.start_clients()
        prof.write(
            args.out,
            f"{args.name or 'connect'}_profile",
            acks=identified,  # per identified session: the "ack" of an IDENTIFY
            deliveries=0,
            note=f"connect phase: {args.gateways} gateways, {args.connections} sessions",
        )
        hold_end = time.monotonic() + args.hold
        settle = time.monotonic() + min(2.0, args.hold / 4)  # the last IDENTIFYs' saves
        gateways = {"gateways": cpu.pids(*pids)}
        cpu_before: cpu.Snapshot | None = None
        idle_t0 = 0.0
        while time.monotonic() < hold_end:
            if cpu_before is None and time.monotonic() >= settle:
                cpu_before, idle_t0 = cpu.snapshot(gateways), time.monotonic()
            r.harness.pump(0.2)
            r.harness.show(phase="idle")
        window = time.monotonic() - idle_t0 if cpu_before is not None else 0.0
        idle = _idle_cpu(cpu_before, cpu.snapshot(gateways), window, len(pids), identified)
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
        }
        | idle,
    )


def _idle_cpu(
    before: cpu.Snapshot | None,
    after: cpu.Snapshot,
    window_s: float,
    gateways: int,
    sessions: int,
) -> dict[str, float]:
    """The gateways' CPU while every session idles: percent of one core per gateway, and
    that per 10,000 sessions held by a gateway."""
    if before is None or window_s <= 0 or not gateways:
        return {}
    pct = 100 * cpu.used(before, after)["gateways"] / window_s / gateways
    per_gw = sessions / gateways
    return {
        "idle_window_s": round(window_s, 1),
        "idle_cpu_pct_per_gateway": round(pct, 2),
        "idle_cpu_pct_per_10k_per_gateway": round(pct * 10_000 / per_gw, 2) if per_gw else 0.0,
    }
