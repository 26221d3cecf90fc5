"""Snowflake ids: 41-bit ms timestamp since 2024-01-01 UTC, 10-bit worker id, 12-bit sequence.

Ids are ``int`` in Python and canonical decimal strings on the wire (JavaScript numbers lose
precision above 2**53). ``Snowflake`` is the ``int`` subclass the wire Structs use, so msgspec's
hooks can turn it into a string and back; it compares and hashes like the plain int.
"""

from __future__ import annotations

from typing import Final

#: 2024-01-01T00:00:00Z in Unix milliseconds.
EPOCH_MS: Final = 1_704_067_200_000
TIMESTAMP_BITS: Final = 41
WORKER_BITS: Final = 10
SEQUENCE_BITS: Final = 12
MAX_WORKER_ID: Final = (1 << WORKER_BITS) - 1
MAX_SEQUENCE: Final = (1 << SEQUENCE_BITS) - 1
MAX_TIMESTAMP_OFFSET: Final = (1 << TIMESTAMP_BITS) - 1
_WORKER_SHIFT: Final = SEQUENCE_BITS
_TIMESTAMP_SHIFT: Final = SEQUENCE_BITS + WORKER_BITS

#: Every wire id must fit a signed int64 (PostgreSQL BIGINT, msgpack int64).
INT64_MAX: Final = (1 << 63) - 1
_INT64_MAX_DIGITS: Final = len(str(INT64_MAX))


class Snowflake(int):
    """An id: an ``int`` that travels as a decimal string."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Snowflake({int(self)})"


def parse_snowflake(text: str) -> Snowflake:
    """Parse a wire id: canonical ASCII decimal (no sign, no leading zero), 0 <= id <= INT64_MAX.

    Raises ValueError otherwise. Canonical-only keeps string ids and ints one-to-one.
    """
    if (
        not text
        or len(text) > _INT64_MAX_DIGITS
        or not (text.isascii() and text.isdigit())
        or (text[0] == "0" and len(text) > 1)
    ):
        raise ValueError("snowflake must be a canonical decimal string")
    value = int(text)
    if value > INT64_MAX:
        raise ValueError("snowflake out of int64 range")
    return Snowflake(value)


def snowflake_timestamp_ms(snowflake: int) -> int:
    """Unix milliseconds at which ``snowflake`` was generated."""
    return (snowflake >> _TIMESTAMP_SHIFT) + EPOCH_MS


def snowflake_worker(snowflake: int) -> int:
    return (snowflake >> _WORKER_SHIFT) & MAX_WORKER_ID


def snowflake_sequence(snowflake: int) -> int:
    return snowflake & MAX_SEQUENCE


def snowflake_at(unix_ms: int) -> int:
    """The smallest id of millisecond ``unix_ms``: a bound for "ids created before/after t"."""
    offset = unix_ms - EPOCH_MS
    if not 0 <= offset <= MAX_TIMESTAMP_OFFSET:
        raise ValueError("time outside the snowflake range")
    return offset << _TIMESTAMP_SHIFT


class SnowflakeGenerator:
    """Makes strictly increasing, unique ids for one worker.

    The caller passes the time (``now_ms``, Unix milliseconds) so this stays pure. It is
    wait-free: when the clock steps back, or 4096 ids are taken in one millisecond, it borrows
    the next millisecond instead of sleeping; ids run a little ahead of the wall clock until the
    clock catches up. Not thread-safe: one generator per event loop.
    """

    __slots__ = ("_last_ms", "_sequence", "worker_id")

    def __init__(self, worker_id: int) -> None:
        if not 0 <= worker_id <= MAX_WORKER_ID:
            raise ValueError(f"worker_id must be in 0..{MAX_WORKER_ID}")
        self.worker_id = worker_id
        self._last_ms = -1
        self._sequence = 0

    def next_id(self, now_ms: int) -> Snowflake:
        offset = now_ms - EPOCH_MS
        if offset < 0:
            raise ValueError("clock is before the snowflake epoch")
        if offset > self._last_ms:
            self._last_ms = offset
            self._sequence = 0
        elif self._sequence < MAX_SEQUENCE:
            # Same millisecond, or the clock went back: stay on the last one we used.
            self._sequence += 1
        else:
            # Sequence exhausted: borrow from the future.
            self._last_ms += 1
            self._sequence = 0
        if self._last_ms > MAX_TIMESTAMP_OFFSET:
            raise ValueError("snowflake timestamp space exhausted")
        return Snowflake(
            (self._last_ms << _TIMESTAMP_SHIFT) | (self.worker_id << _WORKER_SHIFT) | self._sequence
        )
