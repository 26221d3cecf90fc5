"""Token bucket. Pure: the caller passes ``now`` (any monotonic clock, in seconds)."""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per ``per`` seconds, holding at most ``burst``; starts full.

    The default gateway limit "120 ops per 60 s, burst 20" is ``TokenBucket(120, 60, 20, now)``:
    20 ops at once, then 2 per second sustained.
    """

    __slots__ = ("_refill_per_s", "_tokens", "_updated", "burst")

    def __init__(self, rate: float, per: float, burst: int, now: float) -> None:
        if rate <= 0 or per <= 0 or burst < 1:
            raise ValueError("rate, per and burst must be positive")
        self.burst = burst
        self._refill_per_s = rate / per
        self._tokens = float(burst)
        self._updated = now

    def _refill(self, now: float) -> None:
        # A clock that steps back must neither refill nor drain the bucket.
        if now > self._updated:
            self._tokens = min(
                float(self.burst), self._tokens + (now - self._updated) * self._refill_per_s
            )
            self._updated = now

    def try_acquire(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if available; False (and nothing taken) otherwise."""
        self._refill(now)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def retry_after(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens will be available (0 if they are now)."""
        self._refill(now)
        missing = cost - self._tokens
        return 0.0 if missing <= 0 else missing / self._refill_per_s
