"""ChatService with the history cache on a real Redis: what ``messages`` and catch-up return is
exactly what the Store returns, while edits, deletes, reactions and sends from two processes
(two ChatServices sharing the cache) move the rooms on; and the reads really come from Redis."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chat_core import metrics
from chat_core.history_cache import CachedHistory
from chat_core.service import ChatService
from shardchat.adapters.redis_history_cache import RedisHistoryCache
from shardchat.adapters.sqlite_store import SqliteStore
from shardchat.errors import NotFound
from shardchat.migrate import migrate
from user_core.models import User

pytestmark = pytest.mark.integration


@pytest.fixture
async def services(
    tmp_path: Path, redis_url: str
) -> AsyncIterator[tuple[ChatService, ChatService, ChatService]]:
    """Two cached services (two processes sharing the cache) and an uncached reference."""
    store = SqliteStore(str(tmp_path / "chat.sqlite3"))
    await store.start()
    await migrate(store)
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    a, b = (
        ChatService(
            store, history_cache=CachedHistory(RedisHistoryCache(redis_url, prefix=prefix), 20)
        )
        for _ in range(2)
    )
    plain = ChatService(store)
    yield a, b, plain
    for chat in (a, b, plain):
        await chat.close()
    await store.close()


def hits() -> float:
    return float(metrics.HISTORY_HIT._value.get())


async def test_cached_pages_equal_the_stores(services: tuple[ChatService, ...]) -> None:
    a, b, plain = services
    users = [101, 102, 103]
    for u in users:
        assert await a.store.create_user(User(u, f"u{u}", 1), "x")
    room = await a.create_room(101, "r", [102, 103])
    rng = random.Random(7)
    sent: list[int] = []
    before = hits()
    for step in range(60):
        chat = a if step % 2 else b
        actor = rng.choice(users)
        op = rng.random()
        if op < 0.6 or not sent:
            # every third one @mentions someone: a deleted message must lose its mentions
            text = f"hi {step}" + (f" @u{rng.choice(users)}" if step % 3 == 0 else "")
            sent.append((await chat.send_message(actor, room.id, text, f"n{step}")).id)
        elif op < 0.7:
            mine = [
                m
                for m in (await plain.history(actor, room.id, None, None, 100))[0]
                if m.author_id == actor and not m.deleted
            ]
            if mine:
                await chat.edit_message(actor, rng.choice(mine).id, f"edited {step}")
        elif op < 0.8:
            mine = [
                m
                for m in (await plain.history(actor, room.id, None, None, 100))[0]
                if m.author_id == actor and not m.deleted
            ]
            if mine:
                await chat.delete_message(actor, rng.choice(mine).id)
        else:
            with contextlib.suppress(NotFound):  # a deleted message takes no reaction
                await chat.add_reaction(actor, rng.choice(sent), rng.choice(["👍", "🎉"]))
        await asyncio.sleep(0)  # let the cache updaters run as they would between requests
        viewer = rng.choice(users)
        for limit in (1, 5, 19, 50):
            want = await plain.history(viewer, room.id, None, None, limit)
            for chat_ in (a, b):
                assert await chat_.history(viewer, room.id, None, None, limit) == want, step
        last = (await plain.get_room(viewer, room.id)).last_seq
        for after in (last - 3, last - 1, max(0, last - 15)):
            n = last - after
            want_events = await plain.events_after(room.id, after, n)
            assert await a.events_after(room.id, after, n) == want_events
    # Most reads of the newest page were served by the cache, not the Store.
    assert hits() - before > 150


def test_the_benchmark_runs_and_counts_store_calls(
    pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    """A smoke run of loadtest.history_cache (tiny, seconds): it writes its JSON, and with the
    cache on fewer list_messages calls reach the Store per read."""
    import json

    from loadtest import history_cache

    out = tmp_path / "hc.json"
    history_cache.main(
        [
            "--rooms",
            "10",
            "--messages",
            "5",
            "--readers",
            "2",
            "--writers",
            "1",
            "--write-rate",
            "5",
            "--seconds",
            "1",
            "--dsn",
            pg_dsn,
            "--redis-url",
            redis_url,
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert result["cache_off"]["list_messages_per_read"] == 1.0
    assert result["cache_on"]["list_messages_per_read"] < 1.0
    assert result["cache_on"]["hit_ratio"] > 0
