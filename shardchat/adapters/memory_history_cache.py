"""In-process HistoryCache: the embedded default and the test double of the Redis adapter."""

from __future__ import annotations

import time
from collections.abc import Callable

from chat_core.history_cache import CachedRoom


class MemoryHistoryCache:
    """Entries in a dict with a TTL; ``max_rooms`` bounds it (the oldest stored goes first)."""

    def __init__(
        self,
        ttl_s: float = 300.0,
        max_rooms: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_rooms = max_rooms
        self._clock = clock
        self._entries: dict[int, tuple[float, CachedRoom]] = {}

    async def get(self, room_id: int) -> CachedRoom | None:
        item = self._entries.get(room_id)
        if item is None:
            return None
        if item[0] <= self._clock():
            del self._entries[room_id]
            return None
        return item[1]

    async def put(self, room_id: int, entry: CachedRoom, *, replaces: int | None) -> bool:
        current = await self.get(room_id)
        if replaces is None:
            if current is not None and current.last_seq >= entry.last_seq:
                return False
        elif current is None or current.last_seq != replaces:
            return False
        self._entries.pop(room_id, None)  # re-inserted last: dict order is the eviction order
        if len(self._entries) >= self._max_rooms:
            del self._entries[next(iter(self._entries))]
        self._entries[room_id] = (self._clock() + self._ttl_s, entry)
        return True

    async def delete(self, room_id: int) -> None:
        self._entries.pop(room_id, None)

    async def close(self) -> None:
        self._entries.clear()
