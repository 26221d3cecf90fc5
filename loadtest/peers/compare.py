"""The peers comparison's output: one JSON wrapper over per-target BenchResults, one PNG.

``peers.json`` (``PeersResult``, ``schema_version`` 1):

- ``scenario`` "peers", ``started_at``, ``params`` (the shared load: the e2e options),
  ``machine``, ``targets_requested``;
- ``counters``: lost, duplicated, sent, delivered summed over the targets (the command's exit
  status is non-zero when lost or duplicated is), plus ``failed_targets``;
- ``summary``: one row per target, in run order: target, durable, persistence, server,
  connections identified, sent/acked/delivered/expected/lost/duplicated, delivered_per_s,
  latency_ms (count, mean, p50, p90, p99, p99_9, max), ack_latency_ms, cpu (server / clients /
  engines CPU seconds and percent of one core over the send phase, the engines' idle percent
  measured before the target started), cost (``cpu_costs``: CPU ms per acknowledged send and
  us per delivery of the server, the engines and both), for python-socketio
  ``server_gc_pauses`` (its garbage collections of 20 ms or more in the run), or ``error``;
- ``results``: the full BenchResult of each target (the schema of loadtest/report.py, as the
  e2e scenario writes it), whose ``extra`` carries target, durable, persistence, cpu, and
  ``latency_hdr`` (the merged HDR histogram, ``Latency.decode``-able) when known.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from loadtest.report import BenchResult, Latency, save_png

_COLORS = {
    "shardchat": "tab:blue",
    "centrifugo": "tab:red",
    "socketio-node": "tab:green",
    "python-socketio": "tab:orange",
}


class PeersResult(msgspec.Struct, kw_only=True):
    schema_version: int = 1
    scenario: str = "peers"
    started_at: str
    params: dict[str, Any]
    machine: dict[str, Any]
    targets_requested: list[str]
    counters: dict[str, int]
    summary: list[dict[str, Any]]
    results: list[BenchResult] = []


def summary_row(result: BenchResult) -> dict[str, Any]:
    c, x = result.counters, result.extra
    return {
        "target": x.get("target", result.scenario),
        "durable": x.get("durable"),
        "persistence": x.get("persistence", ""),
        "server": x.get("server", ""),
        "connections": result.params.get("connections"),
        "identified": x.get("identified"),
        "sent": c.get("sent", 0),
        "acked": c.get("acked", 0),
        "delivered": c.get("delivered", 0),
        "expected": c.get("expected", 0),
        "lost": c.get("lost", 0),
        "duplicated": c.get("duplicated", 0),
        "delivered_per_s": result.throughput.get("delivered_per_s", 0.0),
        "latency_ms": result.latency_ms,
        "ack_latency_ms": x.get("ack_latency_ms", {}),
        "cpu": x.get("cpu", {}),
        "cost": cpu_costs(x.get("cpu", {}), c.get("acked", 0), c.get("delivered", 0)),
    } | ({"server_gc_pauses": x["server_gc_pauses"]} if "server_gc_pauses" in x else {})


def cpu_costs(cpu: dict[str, Any], acked: int, delivered: int) -> dict[str, float]:
    """CPU per acknowledged send (ms) and per delivery (us) of the server processes, of the
    engines and of both (``total``), over the send window; the engines' idle CPU over the same
    window (from ``engines_idle_cpu_pct``, measured before the target started) beside it."""
    out: dict[str, float] = {}
    server = float(cpu.get("server_cpu_s", 0.0))
    engines = float(cpu.get("engines_cpu_s", 0.0))
    for name, secs in (("server", server), ("engines", engines), ("total", server + engines)):
        if name == "engines" and "engines_cpu_s" not in cpu:
            continue
        if acked:
            out[f"{name}_cpu_ms_per_ack"] = round(1000 * secs / acked, 3)
        if delivered:
            out[f"{name}_cpu_us_per_delivery"] = round(1e6 * secs / delivered, 1)
    idle_pct = cpu.get("engines_idle_cpu_pct")
    if idle_pct is not None and acked:
        idle_s = float(idle_pct) / 100 * float(cpu.get("window_s", 0.0))
        out["engines_idle_cpu_ms_per_ack"] = round(1000 * idle_s / acked, 3)
    return out


def totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    out = {"sent": 0, "delivered": 0, "lost": 0, "duplicated": 0, "failed_targets": 0}
    for row in rows:
        if "error" in row:
            out["failed_targets"] += 1
            continue
        for k in ("sent", "delivered", "lost", "duplicated"):
            out[k] += int(row.get(k, 0))
    return out


def _percentile_points(result: BenchResult, latency: Latency | None) -> list[tuple[float, float]]:
    if latency is not None and latency.count:
        return latency.distribution()
    lat = result.latency_ms  # the summary's points only
    keys = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9), ("max", 100.0))
    return [(pct, float(lat[k])) for k, pct in keys if k in lat]


def write_plot(
    entries: list[tuple[BenchResult, Latency | None]], path: str | os.PathLike[str]
) -> Path | None:
    """Latency by percentile per target (left, log-scaled both ways) and deliveries per second
    over time per target (right)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the bench extra is not installed: JSON is still written
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for result, latency in entries:
        target = str(result.extra.get("target", result.scenario))
        durable = "durable" if result.extra.get("durable") else "not durable"
        label = f"{target} ({durable})"
        color = _COLORS.get(target)
        pts = [(p, ms) for p, ms in _percentile_points(result, latency) if ms > 0]
        if pts:
            xs = [100.0 / max(100.0 - p, 0.001) for p, _ in pts]
            left.plot(xs, [ms for _, ms in pts], "o-", label=label, color=color)
        right.plot(
            [p.t for p in result.timeline],
            [p.delivered for p in result.timeline],
            label=label,
            color=color,
        )
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xticks([1, 2, 10, 100, 1000, 10000])
    left.set_xticklabels(["0%", "50%", "90%", "99%", "99.9%", "99.99%"])
    left.set_title("send -> every member: latency by percentile")
    left.set_ylabel("ms")
    left.grid(True, which="both", alpha=0.3)
    right.set_title("deliveries per second")
    right.set_xlabel("s since the send phase started")
    peak = max((p.delivered for r, _ in entries for p in r.timeline), default=0)
    right.set_ylim(0, max(1.0, peak * 1.25))  # headroom for the legend
    right.grid(True, alpha=0.3)
    if entries:
        left.legend(fontsize=8, loc="upper left")
        right.legend(fontsize=8, loc="upper center", ncols=len(entries))
        p = entries[0][0].params
        fig.suptitle(
            f"peers: {p.get('connections')} connections, rooms of {p.get('room_size')}, "
            f"{p.get('rate')} msgs/s for {p.get('duration')} s (same run)",
            fontsize=10,
        )
    return save_png(fig, path)
