"""Snowflake ids for the services: ``protocol.snowflake`` plus a clock.

``protocol.snowflake.SnowflakeGenerator`` is pure (the caller passes the time); this wrapper
reads the clock so services can just call ``next_id()``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from protocol.snowflake import MAX_WORKER_ID, SnowflakeGenerator


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class IdGenerator:
    """Strictly increasing snowflakes for one worker (one per event loop).

    ``worker_id`` must be unique among live writers; when omitted a random one is picked
    (collision odds 1/1024 per pair of processes: give explicit ids in a cluster).
    """

    def __init__(
        self, worker_id: int | None = None, clock_ms: Callable[[], int] = _wall_ms
    ) -> None:
        if worker_id is None:
            worker_id = secrets.randbelow(MAX_WORKER_ID + 1)
        self._gen = SnowflakeGenerator(worker_id)
        self.worker_id = worker_id
        self._clock_ms = clock_ms

    def next_id(self) -> int:
        return int(self._gen.next_id(self._clock_ms()))
