"""soak: steady load for ``--duration`` seconds; gateway memory sampled over time.

Flat RSS under steady load is the point: ring buffers, session tails and outbound buffers must
be bounded. Samples are ``[t_s, total gateway VmRSS KiB]`` every ``--sample-every`` seconds.
"""

from __future__ import annotations

import argparse
import time

from loadtest.memory import total_rss_kib
from loadtest.report import BenchResult, now_iso
from loadtest.scenarios.common import add_common, bench_run, counters_of, finish
from loadtest.scenarios.e2e import sizes_of


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, connections=1000, duration=60, rate=100)
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--account-wait", type=float, default=15.0)


def run(args: argparse.Namespace) -> BenchResult:
    started = now_iso()
    sizes = sizes_of(args)
    samples: list[list[float]] = []
    with bench_run("soak", args, sizes) as r:
        r.start_clients()
        pids = r.cluster.pids

        def during(elapsed: float) -> None:
            if elapsed >= len(samples) * args.sample_every:
                samples.append([round(elapsed, 1), total_rss_kib(pids)])

        t0 = time.monotonic()
        acked = r.harness.run(args.duration, args.rate, during=during)
        merged = r.harness.account(acked, args.account_wait)
        elapsed = time.monotonic() - t0
    growth = samples[-1][1] - samples[0][1] if len(samples) > 1 else 0
    return finish(
        "soak",
        args,
        started_at=started,
        duration_s=elapsed,
        counters=counters_of(merged),
        merged=merged,
        extra={"gateway_rss_kib": samples, "rss_growth_kib": growth},
    )
