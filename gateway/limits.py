"""Per-key token buckets (IDENTIFY per client IP), built on ``protocol.ratelimit.TokenBucket``.

``protocol`` has the bucket itself; the keyed map lives here because bounding it (forgetting
idle keys) is a server memory concern, not a protocol rule.
"""

from __future__ import annotations

from protocol.ratelimit import TokenBucket

#: Above this many keys, buckets that have refilled completely are forgotten.
MAX_KEYS = 10_000


class KeyedBuckets:
    """``rate`` takes per ``per`` seconds and key, at most ``burst`` at once."""

    def __init__(self, rate: float, per: float, burst: int) -> None:
        self._rate = rate
        self._per = per
        self._burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_KEYS:
                # A full bucket is indistinguishable from a new one: dropping it loses nothing.
                self._buckets = {k: b for k, b in self._buckets.items() if b.tokens(now) < b.burst}
            bucket = self._buckets[key] = TokenBucket(self._rate, self._per, self._burst, now)
        return bucket.try_acquire(now)

    def __len__(self) -> int:
        return len(self._buckets)
