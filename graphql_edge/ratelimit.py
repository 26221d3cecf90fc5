"""Token buckets keyed by caller: mutations and queries (per user; per client IP before login),
and the auth mutations (per client IP, whatever token comes with them)."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBuckets:
    """``allow(key)`` takes one token from ``key``'s bucket: ``burst`` tokens, ``rate`` per second.

    Memory stays bounded: full buckets are indistinguishable from absent ones, so a sweep drops
    them once the table grows past ``max_keys``.
    """

    def __init__(
        self,
        burst: int,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.burst = float(burst)
        self.rate = rate
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated_at)

    def allow(self, key: str, cost: float = 1.0) -> bool:
        now = self._clock()
        tokens, updated = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate)
        ok = tokens >= cost
        if ok:
            tokens -= cost
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._sweep(now)
        return ok

    def _sweep(self, now: float) -> None:
        self._buckets = {
            k: (t, u)
            for k, (t, u) in self._buckets.items()
            if t + (now - u) * self.rate < self.burst
        }
