"""Garbage-collector settings for processes that hold many long-lived objects.

Why: a gateway (or a load-test client worker) holds tens of thousands of connection and session
objects for hours. CPython's cyclic collector rescans every one of them on each full (gen2)
collection: 100-350 ms with the loop stopped at 5,000 sessions, which is the whole e2e tail.
Two changes make it go away:

- ``gc.freeze()`` once the objects exist (after start-up, then each second while IDENTIFYs
  arrive): frozen objects sit in the permanent generation and are never scanned again.
- A larger gen0 threshold: fewer young collections on a path that allocates a lot of short-lived,
  non-cyclic objects (frames, futures), each still scanning only the young objects.

What it costs: cyclic garbage among frozen objects (a closed connection's websockets objects)
is only reclaimed after ``gc.unfreeze()``; :class:`GcFreezer` unfreezes and collects once enough
of what it froze may be garbage (connections closed since), a rare full pause instead of a
leak. ``SHARDCHAT_GC_TUNE=0`` turns all this off (A/B runs); ``SHARDCHAT_GC_TRACE=path`` logs
every collection slower than 1 ms to ``path``, with its generation and duration.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any, Final, TextIO

#: gen0 / gen1 / gen2 thresholds (CPython's defaults are 700 / 10 / 10).
THRESHOLDS: Final = (20_000, 20, 1_000)

_trace: TextIO | None = None
_started = 0.0


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
        return
    ms = (time.perf_counter() - _started) * 1000
    if _trace is not None and ms >= 1.0:
        _trace.write(
            f"{time.time():.3f} pid={os.getpid()} gen={info['generation']} {ms:.1f}ms "
            f"collected={info['collected']}\n"
        )
        _trace.flush()


def enabled() -> bool:
    """``SHARDCHAT_GC_TUNE=0`` keeps CPython's defaults (for A/B measurements)."""
    return os.environ.get("SHARDCHAT_GC_TUNE", "1") != "0"


def tune(*, freeze: bool = True) -> None:
    """Raise the thresholds, freeze what exists now, start tracing if asked to."""
    global _trace
    if enabled():
        gc.set_threshold(*THRESHOLDS)
        if freeze:
            gc.collect()
            gc.freeze()
    path = os.environ.get("SHARDCHAT_GC_TRACE")
    if path and _trace is None:
        _trace = open(path, "a", encoding="utf-8")  # noqa: SIM115 - process lifetime
        gc.callbacks.append(_on_gc)


class GcFreezer:
    """Freeze new long-lived objects as connections arrive; thaw after heavy churn.

    ``poll(opened, closed)`` takes the running totals of connections opened and closed, once
    per sweep (about a second). When connections were opened since the last poll, everything
    tracked now is frozen: no collection first (a gen1 collection in the middle of an IDENTIFY
    burst costs 200 ms at 5,000 sessions), so the young collections keep scanning only about a
    second's worth of objects. When more connections closed since the last thaw than half of
    those still open, everything is unfrozen and fully collected once, which reclaims the
    cyclic garbage the closed ones left among the frozen objects.
    """

    def __init__(self) -> None:
        self._frozen_opened = 0
        self._thawed_closed = 0

    def poll(self, opened: int, closed: int) -> str:
        if not enabled():
            return ""
        if closed - self._thawed_closed > max(1000, (opened - closed) // 2):
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self._thawed_closed = closed
            self._frozen_opened = opened
            return "thawed"
        if opened > self._frozen_opened:
            gc.freeze()
            self._frozen_opened = opened
            return "frozen"
        return ""
