"""storm: kill -9 one gateway under load; its clients RESUME on another gateway.

Measured: seconds from the kill until every session of the killed gateway resumed (the last
RESUMED), how many resumed, and lost/duplicated over the whole run, which must both be 0:
acknowledged messages of the dead gateway's senders are re-sent with the same nonce after the
resume (idempotent), and missed events are replayed by RESUME.
"""

from __future__ import annotations

import argparse
import time

from loadtest.report import BenchResult, now_iso
from loadtest.scenarios.common import add_common, bench_run, counters_of, finish
from loadtest.scenarios.e2e import sizes_of


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, connections=1000, duration=20, rate=100)
    p.add_argument("--kill-at", type=float, default=5.0, help="seconds into the run")
    p.add_argument("--kill", type=int, default=0, help="index of the gateway to kill")
    p.add_argument("--account-wait", type=float, default=30.0)


def run(args: argparse.Namespace) -> BenchResult:
    if args.embedded or args.gateways < 2:
        raise SystemExit("storm needs --gateways >= 2 on the engines (sessions resume elsewhere)")
    started = now_iso()
    sizes = sizes_of(args)
    killed_at: list[float] = []
    with bench_run("storm", args, sizes) as r:
        victims = sum(1 for p in r.harness.plans for c in p.clients if c.gateway == args.kill)
        identified, failed, connect_s = r.start_clients()

        def during(elapsed: float) -> None:
            if not killed_at and elapsed >= args.kill_at:
                r.harness.mark()
                time.sleep(0.05)  # the mark reaches the workers before the drops do
                r.cluster.kill(args.kill)
                killed_at.append(elapsed)

        t0 = time.monotonic()
        acked = r.harness.run(args.duration, args.rate, during=during)
        merged = r.harness.account(acked, args.account_wait)
        elapsed = time.monotonic() - t0
    resume = merged.resume_s
    counters = counters_of(merged)
    return finish(
        "storm",
        args,
        started_at=started,
        duration_s=elapsed,
        counters=counters,
        merged=merged,
        extra={
            "rooms": len(sizes),
            "identified": identified,
            "connect_failed": failed,
            "connect_s": round(connect_s, 2),
            "killed_gateway": args.kill,
            "killed_at_s": round(killed_at[0], 3) if killed_at else None,
            "sessions_on_killed_gateway": victims,
            "resumed_after_kill": len(resume),
            "all_resumed_s": round(resume[-1], 3) if resume else None,
            "resume_p50_s": round(resume[len(resume) // 2], 3) if resume else None,
        },
    )
