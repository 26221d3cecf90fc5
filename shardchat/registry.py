"""The Registry port: ephemeral cluster state (gateways, room/partition maps, presence, pub/sub).

Adapters: ``shardchat.adapters.memory_registry`` (embedded default) and
``shardchat.adapters.redis_registry``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import msgspec


class GatewayRecord(msgspec.Struct, frozen=True):
    gateway_id: str
    url: str
    sessions: int = 0
    draining: bool = False


class Registry(Protocol):
    """Ephemeral cluster state: live gateways, room/partition maps, presence, sessions, pub/sub.

    Nothing here is durable: after a loss (Redis flushed or restarted) gateways re-register and
    re-publish their maps on their next heartbeat, and sessions that were lost are INVALID.

    Guarantees:
    - a gateway registered with ``ttl_s`` is listed until ``ttl_s`` after its last heartbeat.
    - ``publish`` reaches every current ``subscribe`` iterator of that channel at most once, in
      publish order per publisher; nothing is kept for late subscribers.
    - ``save_session`` / ``load_session`` hold an opaque blob until its TTL passes.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def heartbeat_gateway(self, record: GatewayRecord, ttl_s: float) -> None: ...

    async def remove_gateway(self, gateway_id: str) -> None: ...

    async def live_gateways(self) -> list[GatewayRecord]: ...

    async def add_rooms(self, gateway_id: str, room_ids: Sequence[int], ttl_s: float) -> None: ...

    async def remove_rooms(self, gateway_id: str, room_ids: Sequence[int]) -> None: ...

    async def gateways_for_room(self, room_id: int) -> set[str]: ...

    async def set_partitions(
        self, gateway_id: str, partitions: Sequence[int], ttl_s: float
    ) -> None: ...

    async def gateways_for_partition(self, partition: int) -> set[str]: ...

    async def set_presence(self, user_id: int, status: str, ttl_s: float) -> None: ...

    async def get_presence(self, user_ids: Sequence[int]) -> dict[int, str]: ...

    async def save_session(self, session_id: str, blob: bytes, ttl_s: float) -> None: ...

    async def load_session(self, session_id: str) -> bytes | None: ...

    async def delete_session(self, session_id: str) -> None: ...

    async def publish(self, channel: str, payload: bytes) -> None: ...

    def subscribe(self, channel: str) -> AsyncIterator[bytes]: ...
