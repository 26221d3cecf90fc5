"""One result schema for every load-test scenario, HDR latency histograms, JSON and PNG output.

Schema (``schema_version`` 1), documented in docs/benchmarks.md:
``scenario``, ``started_at`` (ISO UTC), ``duration_s``, ``params`` (the scenario's knobs),
``machine`` (cpus, python, platform), ``counters`` (sent, delivered, errors, reconnects, lost,
duplicated, plus scenario extras), ``throughput`` (per second), ``latency_ms`` (count, mean, p50,
p90, p99, p99_9, max), ``timeline`` (one point per second: t, sent, delivered, p99_ms), ``extra``.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from hdrh.histogram import HdrHistogram

_LOWEST_US = 1
_HIGHEST_US = 120_000_000  # two minutes
_DIGITS = 3


class Latency:
    """An HDR histogram of latencies recorded in microseconds, reported in milliseconds."""

    def __init__(self) -> None:
        self.hist = HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)

    def record_ms(self, ms: float) -> None:
        self.hist.record_value(min(max(int(ms * 1000), _LOWEST_US), _HIGHEST_US))

    def merge(self, other: Latency) -> None:
        self.hist.add(other.hist)

    def encode(self) -> bytes:
        encoded: bytes = self.hist.encode()
        return encoded

    @classmethod
    def decode(cls, raw: bytes) -> Latency:
        lat = cls()
        lat.hist.add(HdrHistogram.decode(raw))
        return lat

    @property
    def count(self) -> int:
        return int(self.hist.get_total_count())

    def percentile_ms(self, pct: float) -> float:
        return float(self.hist.get_value_at_percentile(pct)) / 1000.0

    def summary(self) -> dict[str, float]:
        if self.count == 0:
            return {"count": 0}
        return {
            "count": self.count,
            "mean": round(self.hist.get_mean_value() / 1000.0, 3),
            "p50": self.percentile_ms(50),
            "p90": self.percentile_ms(90),
            "p99": self.percentile_ms(99),
            "p99_9": self.percentile_ms(99.9),
            "max": float(self.hist.get_max_value()) / 1000.0,
        }

    def distribution(self) -> list[tuple[float, float]]:
        """(percentile, ms) points for a latency-by-percentile plot."""
        points = []
        for pct in (0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 100):
            points.append((float(pct), self.percentile_ms(pct)))
        return points


class TimelinePoint(msgspec.Struct):
    t: int
    sent: int = 0
    delivered: int = 0
    p99_ms: float = 0.0


class Timeline:
    """Per-second counts and tail latency, for the throughput-over-time plot."""

    def __init__(self, start: float | None = None) -> None:
        self.start = time.monotonic() if start is None else start
        self._points: dict[int, TimelinePoint] = {}
        self._lat: dict[int, Latency] = {}

    def _point(self, now: float) -> tuple[int, TimelinePoint]:
        second = int(now - self.start)
        point = self._points.get(second)
        if point is None:
            point = self._points[second] = TimelinePoint(t=second)
        return second, point

    def sent(self, n: int = 1, now: float | None = None) -> None:
        self._point(time.monotonic() if now is None else now)[1].sent += n

    def delivered(self, latency_ms: float, now: float | None = None) -> None:
        second, point = self._point(time.monotonic() if now is None else now)
        point.delivered += 1
        lat = self._lat.get(second)
        if lat is None:
            lat = self._lat[second] = Latency()
        lat.record_ms(latency_ms)

    def merge(self, other: list[TimelinePoint]) -> None:
        for p in other:
            mine = self._points.setdefault(p.t, TimelinePoint(t=p.t))
            mine.sent += p.sent
            mine.delivered += p.delivered
            mine.p99_ms = max(mine.p99_ms, p.p99_ms)

    def points(self) -> list[TimelinePoint]:
        for second, lat in self._lat.items():
            self._points[second].p99_ms = lat.percentile_ms(99)
        return [self._points[k] for k in sorted(self._points)]


class BenchResult(msgspec.Struct, kw_only=True):
    schema_version: int = 1
    scenario: str
    started_at: str
    duration_s: float
    params: dict[str, Any]
    machine: dict[str, Any]
    counters: dict[str, int]
    throughput: dict[str, float]
    latency_ms: dict[str, float]
    timeline: list[TimelinePoint] = []
    extra: dict[str, Any] = {}


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def build_result(
    scenario: str,
    *,
    started_at: str,
    duration_s: float,
    params: Mapping[str, Any],
    counters: Mapping[str, int],
    latency: Latency | None = None,
    timeline: Timeline | None = None,
    extra: Mapping[str, Any] | None = None,
) -> BenchResult:
    base = {"sent": 0, "delivered": 0, "errors": 0, "reconnects": 0, "lost": 0, "duplicated": 0}
    base.update(counters)
    per_s = {
        f"{k}_per_s": round(v / duration_s, 1) if duration_s > 0 else 0.0
        for k, v in base.items()
        if k in ("sent", "delivered")
    }
    return BenchResult(
        scenario=scenario,
        started_at=started_at,
        duration_s=round(duration_s, 3),
        params=dict(params),
        machine=machine_info(),
        counters=base,
        throughput=per_s,
        latency_ms=latency.summary() if latency else {"count": 0},
        timeline=timeline.points() if timeline else [],
        extra=dict(extra or {}),
    )


def write_json(result: msgspec.Struct | dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """A result (BenchResult, or a wrapper of them) as indented JSON, its folder made."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
    return out


def write_plot(
    result: BenchResult, latency: Latency | None, path: str | os.PathLike[str]
) -> Path | None:
    """Latency by percentile (left) and throughput over time (right), as one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the bench extra is not installed: JSON is still written
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if latency is not None and latency.count:
        pts = latency.distribution()
        left.plot([100.0 / max(100.0 - p, 0.001) for p, _ in pts], [ms for _, ms in pts], "o-")
        left.set_xscale("log")
        left.set_xticks([1, 2, 10, 100, 1000, 10000])
        left.set_xticklabels(["0%", "50%", "90%", "99%", "99.9%", "99.99%"])
    left.set_title(f"{result.scenario}: latency by percentile")
    left.set_ylabel("ms")
    left.grid(True, alpha=0.3)
    ts = [p.t for p in result.timeline]
    right.plot(ts, [p.delivered for p in result.timeline], label="delivered/s")
    right.plot(ts, [p.sent for p in result.timeline], label="sent/s")
    right.set_title("throughput over time")
    right.set_xlabel("s")
    right.legend()
    right.grid(True, alpha=0.3)
    return save_png(fig, path)


def save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Lay out a pyplot figure, write it as a PNG (its folder made as needed), close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


class Progress:
    """A live one-line progress display on stderr, at most once per second."""

    def __init__(self, scenario: str, enabled: bool = True) -> None:
        self.scenario = scenario
        self.enabled = enabled and sys.stderr.isatty()
        self._last = 0.0
        self._start = time.monotonic()

    def update(self, **fields: Any) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 1.0:
            return
        self._last = now
        parts = " ".join(f"{k}={v}" for k, v in fields.items())
        sys.stderr.write(f"\r[{self.scenario} {now - self._start:6.1f}s] {parts}\x1b[K")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
