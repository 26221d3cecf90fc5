"""One contract for the HistoryCache port: in memory, on a real Redis and on the Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chat_core.history_cache import CachedRoom, HistoryCache
from chat_core.models import Message, RoomEvent
from shardchat.adapters.memory_history_cache import MemoryHistoryCache
from shardchat.adapters.redis_history_cache import RedisHistoryCache

TTL = 0.4


def entry(seq: int, *ids: int) -> CachedRoom:
    messages = tuple(Message(i, 7, i, 1, f"m{i}", None, 1_700_000_000_000 + i) for i in ids)
    events = (RoomEvent(7, seq, "MEMBER_JOIN", {"room_id": "7", "seq": seq, "user_id": "1"}, 1),)
    return CachedRoom(seq, messages, complete=len(ids) < 3, events=events)


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[HistoryCache]:
    impl: Any
    if request.param == "memory":
        impl = MemoryHistoryCache(ttl_s=TTL)
    else:
        cluster = request.param == "redis-cluster"
        url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
        impl = RedisHistoryCache(
            url, cluster=cluster, prefix=f"test:{uuid.uuid4().hex[:12]}:", ttl_s=TTL
        )
    yield impl
    for room in (1, 2):
        await impl.delete(room)
    await impl.close()


async def test_fill_then_get(cache: HistoryCache) -> None:
    assert await cache.get(1) is None
    assert await cache.put(1, entry(5, 3, 2), replaces=None)
    assert await cache.get(1) == entry(5, 3, 2)
    assert await cache.get(2) is None


async def test_a_fill_never_replaces_an_entry_as_new_or_newer(cache: HistoryCache) -> None:
    assert await cache.put(1, entry(5, 3), replaces=None)
    assert not await cache.put(1, entry(5, 9), replaces=None)
    assert not await cache.put(1, entry(4, 9), replaces=None)
    assert await cache.put(1, entry(6, 4, 3), replaces=None)
    assert await cache.get(1) == entry(6, 4, 3)


async def test_an_update_needs_the_seq_it_replaces(cache: HistoryCache) -> None:
    assert not await cache.put(1, entry(6, 4), replaces=5)  # nothing stored
    assert await cache.put(1, entry(5, 3), replaces=None)
    assert not await cache.put(1, entry(7, 4), replaces=6)
    assert await cache.put(1, entry(6, 4, 3), replaces=5)
    assert await cache.get(1) == entry(6, 4, 3)


async def test_racing_updates_one_wins(cache: HistoryCache) -> None:
    assert await cache.put(1, entry(5, 3), replaces=None)
    results = await asyncio.gather(*(cache.put(1, entry(6, n), replaces=5) for n in range(10)))
    assert sum(results) == 1
    winner = results.index(True)
    assert await cache.get(1) == entry(6, winner)


async def test_delete_and_ttl(cache: HistoryCache) -> None:
    assert await cache.put(1, entry(5, 3), replaces=None)
    await cache.delete(1)
    assert await cache.get(1) is None
    assert await cache.put(2, entry(5, 3), replaces=None)
    await asyncio.sleep(TTL / 2)
    assert await cache.put(2, entry(6, 4), replaces=5)  # an update restarts the TTL
    await asyncio.sleep(TTL / 2 + 0.1)
    assert await cache.get(2) == entry(6, 4)
    await asyncio.sleep(TTL)
    assert await cache.get(2) is None


@pytest.mark.integration
async def test_redis_down_is_a_miss_not_an_error() -> None:
    dead = RedisHistoryCache("redis://127.0.0.1:1/0", socket_timeout_s=0.5)
    assert await dead.get(1) is None
    assert not await dead.put(1, entry(5, 3), replaces=None)
    await dead.delete(1)
    await dead.close()
