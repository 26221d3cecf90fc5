"""Token buckets for client ops (per connection) and IDENTIFY (per IP).

Private to the gateway until ``protocol/`` ships its buckets; the clock is passed in so the
logic stays pure.
"""

from __future__ import annotations


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second; ``take`` spends one if it can."""

    __slots__ = ("_at", "_tokens", "capacity", "rate")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self._tokens = capacity
        self._at = now

    def take(self, now: float) -> bool:
        tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    def full(self, now: float) -> bool:
        return self._tokens + (now - self._at) * self.rate >= self.capacity


class KeyedBuckets:
    """One bucket per key (IP); full buckets are forgotten so the map stays small."""

    def __init__(self, capacity: float, rate: float) -> None:
        self._capacity = capacity
        self._rate = rate
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 10_000:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full(now)}
            bucket = self._buckets[key] = TokenBucket(self._capacity, self._rate, now)
        return bucket.take(now)
