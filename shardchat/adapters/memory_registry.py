"""In-process Registry: the embedded default (one process runs edge, router and gateway) and the
test double. Same guarantees as the Redis adapter (see ``shardchat.registry.Registry``).

Expiry is evaluated lazily against an injectable ``clock`` so TTL tests can advance time
instead of sleeping. Single event loop only; no locking needed because no method awaits in the
middle of a mutation.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence

from shardchat.registry import GatewayRecord, Subscription

Clock = Callable[[], float]


class MemoryRegistry:
    def __init__(self, *, clock: Clock = time.monotonic, max_pending: int = 10_000) -> None:
        self._clock = clock
        self._max_pending = max_pending
        # gateway id -> (record, expires_at)
        self._gateways: dict[str, tuple[GatewayRecord, float]] = {}
        self._draining: set[str] = set()
        # room id / partition -> gateway id -> expires_at
        self._rooms: dict[int, dict[str, float]] = {}
        self._partitions: dict[int, dict[str, float]] = {}
        self._presence: dict[int, tuple[str, float]] = {}
        # session id -> (blob, ownership epoch, expires_at)
        self._sessions: dict[str, tuple[bytes, int, float]] = {}
        # Weak: an abandoned, unreferenced Subscription is collected and unsubscribes itself.
        self._subs: dict[str, weakref.WeakSet[Subscription]] = {}
        self._not_before: dict[str, tuple[int, float]] = {}  # subject -> (ms, expires_at)
        self._backoff: dict[str, tuple[int, float, float]] = {}  # key -> (fails, until, expires)
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._closed = True
        subs = [s for group in self._subs.values() for s in group]
        self._subs.clear()
        for sub in subs:
            sub._end()

    async def ping(self) -> None:
        return None

    # -- gateways ------------------------------------------------------------------------------
    def _is_live(self, gateway_id: str) -> bool:
        entry = self._gateways.get(gateway_id)
        if entry is None:
            return False
        if entry[1] <= self._clock():
            del self._gateways[gateway_id]
            self._draining.discard(gateway_id)
            return False
        return True

    async def heartbeat_gateway(self, record: GatewayRecord, ttl_s: float) -> None:
        if not self._is_live(record.gateway_id):
            # Why: a drain mark belongs to one incarnation; a gateway that expired and comes
            # back under the same id starts clean.
            self._draining.discard(record.gateway_id)
        self._gateways[record.gateway_id] = (record, self._clock() + ttl_s)

    async def remove_gateway(self, gateway_id: str) -> None:
        self._gateways.pop(gateway_id, None)
        self._draining.discard(gateway_id)
        for group in (*self._rooms.values(), *self._partitions.values()):
            group.pop(gateway_id, None)

    async def mark_draining(self, gateway_id: str) -> bool:
        if not self._is_live(gateway_id):
            return False
        self._draining.add(gateway_id)
        return True

    async def live_gateways(self) -> list[GatewayRecord]:
        out: list[GatewayRecord] = []
        for gateway_id in sorted(self._gateways):
            if not self._is_live(gateway_id):
                continue
            record = self._gateways[gateway_id][0]
            if gateway_id in self._draining and not record.draining:
                record = GatewayRecord(
                    gateway_id=record.gateway_id,
                    url=record.url,
                    sessions=record.sessions,
                    draining=True,
                )
            out.append(record)
        return out

    # -- room / partition maps -----------------------------------------------------------------
    def _live_members(self, table: dict[int, dict[str, float]], key: int) -> set[str]:
        group = table.get(key)
        if not group:
            return set()
        now = self._clock()
        for gateway_id in [g for g, exp in group.items() if exp <= now]:
            del group[gateway_id]
        if not group:
            del table[key]
        return {g for g in group if self._is_live(g)}

    async def add_rooms(self, gateway_id: str, room_ids: Sequence[int], ttl_s: float) -> None:
        expires = self._clock() + ttl_s
        for room_id in room_ids:
            self._rooms.setdefault(room_id, {})[gateway_id] = expires

    async def remove_rooms(self, gateway_id: str, room_ids: Sequence[int]) -> None:
        for room_id in room_ids:
            group = self._rooms.get(room_id)
            if group is not None:
                group.pop(gateway_id, None)
                if not group:
                    del self._rooms[room_id]

    async def gateways_for_room(self, room_id: int) -> set[str]:
        return self._live_members(self._rooms, room_id)

    async def set_partitions(
        self, gateway_id: str, partitions: Sequence[int], ttl_s: float
    ) -> None:
        wanted = set(partitions)
        for partition in [p for p, g in self._partitions.items() if gateway_id in g]:
            if partition not in wanted:
                del self._partitions[partition][gateway_id]
                if not self._partitions[partition]:
                    del self._partitions[partition]
        expires = self._clock() + ttl_s
        for partition in wanted:
            self._partitions.setdefault(partition, {})[gateway_id] = expires

    async def gateways_for_partition(self, partition: int) -> set[str]:
        return self._live_members(self._partitions, partition)

    # -- presence / sessions -------------------------------------------------------------------
    async def set_presence(self, user_id: int, status: str, ttl_s: float) -> None:
        self._presence[user_id] = (status, self._clock() + ttl_s)

    async def get_presence(self, user_ids: Sequence[int]) -> dict[int, str]:
        now = self._clock()
        out: dict[int, str] = {}
        for user_id in user_ids:
            entry = self._presence.get(user_id)
            if entry is None:
                continue
            if entry[1] <= now:
                del self._presence[user_id]
            else:
                out[user_id] = entry[0]
        return out

    def _live_session(self, session_id: str) -> tuple[bytes, int, float] | None:
        entry = self._sessions.get(session_id)
        if entry is not None and entry[2] <= self._clock():
            del self._sessions[session_id]
            return None
        return entry

    # Atomic without a lock: nothing awaits between the epoch check and the write.
    async def save_session_if(self, session_id: str, blob: bytes, epoch: int, ttl_s: float) -> bool:
        entry = self._live_session(session_id)
        if entry is not None and entry[1] > epoch:
            return False
        self._sessions[session_id] = (blob, epoch, self._clock() + ttl_s)
        return True

    async def save_sessions_if(
        self, items: Sequence[tuple[str, bytes, int]], ttl_s: float
    ) -> list[bool]:
        return [await self.save_session_if(sid, blob, epoch, ttl_s) for sid, blob, epoch in items]

    async def claim_session(self, session_id: str, epoch: int, blob: bytes, ttl_s: float) -> bool:
        entry = self._live_session(session_id)
        if entry is not None and entry[1] != epoch:
            return False
        self._sessions[session_id] = (blob, epoch + 1, self._clock() + ttl_s)
        return True

    async def load_session(self, session_id: str) -> bytes | None:
        entry = self._live_session(session_id)
        return None if entry is None else entry[0]

    async def delete_session_if(self, session_id: str, epoch: int) -> bool:
        entry = self._live_session(session_id)
        if entry is not None and entry[1] > epoch:
            return False
        self._sessions.pop(session_id, None)
        return True

    async def delete_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    # -- pub/sub -------------------------------------------------------------------------------
    async def publish(self, channel: str, payload: bytes) -> int:
        # Why a copy: a subscriber's close() during delivery must not break the iteration.
        subs = list(self._subs.get(channel, ()))
        for sub in subs:
            sub._deliver(payload)
        return len(subs)

    def subscribe(self, channel: str) -> Subscription:
        sub = Subscription(
            channel,
            on_close=self._unsubscribe,
            wait_ready=_ready_now,
            max_pending=self._max_pending,
        )
        if self._closed:
            sub._end()
            return sub
        # Registered synchronously: a publish right after subscribe() returns is delivered.
        self._subs.setdefault(channel, weakref.WeakSet()).add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        group = self._subs.get(sub.channel)
        if group is not None:
            group.discard(sub)
            if not group:
                del self._subs[sub.channel]

    # -- token revocation / backoff ------------------------------------------------------------
    async def revoke_tokens(
        self, subjects: Sequence[str], not_before_ms: int, ttl_s: float
    ) -> None:
        now = self._clock()
        for subject in subjects:
            held = self._not_before.get(subject)
            if held is not None and held[1] > now and held[0] > not_before_ms:
                continue
            self._not_before[subject] = (not_before_ms, now + ttl_s)

    async def tokens_not_before(self, subjects: Sequence[str]) -> list[int]:
        now = self._clock()
        out = []
        for subject in subjects:
            held = self._not_before.get(subject)
            if held is not None and held[1] <= now:
                del self._not_before[subject]
                held = None
            out.append(0 if held is None else held[0])
        return out

    def _backoff_entry(self, key: str) -> tuple[int, float, float]:
        entry = self._backoff.get(key)
        if entry is not None and entry[2] <= self._clock():
            del self._backoff[key]
            entry = None
        return entry or (0, 0.0, 0.0)

    async def backoff_failure(
        self, key: str, free: int, base_s: float, max_s: float, forget_s: float
    ) -> float:
        now = self._clock()
        fails, until, _ = self._backoff_entry(key)
        fails += 1
        lock = 0.0
        if fails >= free:
            lock = min(base_s * 2 ** (fails - free), max_s)
            until = now + lock
        self._backoff[key] = (fails, until, now + forget_s + lock)
        return lock

    async def backoff_wait(self, key: str) -> float:
        return max(0.0, self._backoff_entry(key)[1] - self._clock())

    async def backoff_clear(self, key: str) -> None:
        self._backoff.pop(key, None)


async def _ready_now(channel: str) -> None:
    return None
