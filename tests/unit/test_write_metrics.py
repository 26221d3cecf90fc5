"""Write-path metrics (chat_core.metrics) from real sends on SQLite and the memory log.

Values are read from prometheus_client's process-wide registry, which other tests also feed:
every assertion is on the change a test made (``Reading.delta``), never an absolute value.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from chat_core import metrics
from chat_core.models import RoomEvent
from chat_core.outbox import OutboxPublisher, OutboxRelay
from chat_core.service import ChatService
from shardchat.adapters.memory_log import MemoryEventLog
from shardchat.adapters.sqlite_store import SqliteStore
from shardchat.errors import BadInput, NotFound
from shardchat.migrate import migrate
from shardchat.store import NewMessage, SendOutcome
from user_core.models import User

T0 = 1_750_000_000_000
OUTCOMES = (
    "ok",
    "duplicate",
    "unauthenticated",
    "forbidden",
    "not_found",
    "bad_user_input",
    "rate_limited",
    "internal",
)
_ids = itertools.count(1000)


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} is not exported"
    return value


class Reading:
    """Snapshot of every write-path sample, to assert on what one test changed."""

    def __init__(self) -> None:
        self.before = self._now()

    @staticmethod
    def _now() -> dict[str, float]:
        out = {f"sends:{o}": sample("shardchat_chat_sends_total", outcome=o) for o in OUTCOMES}
        out["latency_count"] = sample("shardchat_chat_send_latency_seconds_count")
        out["latency_sum"] = sample("shardchat_chat_send_latency_seconds_sum")
        for path in ("fast", "relay"):
            out[f"published:{path}"] = sample("shardchat_outbox_published_total", path=path)
        return out

    def delta(self) -> dict[str, float]:
        now = self._now()
        return {k: now[k] - self.before[k] for k in now if now[k] != self.before[k]}


@dataclass
class Cluster:
    store: SqliteStore
    log: MemoryEventLog
    publisher: OutboxPublisher
    chat: ChatService

    async def user(self, name: str) -> int:
        uid = next(_ids)
        assert await self.store.create_user(User(uid, name, T0), "x")
        return uid


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    store = SqliteStore(str(tmp_path / "chat.sqlite3"))
    await store.start()
    await migrate(store)
    log = MemoryEventLog(8)
    publisher = OutboxPublisher(log, store)
    await publisher.start()
    chat = ChatService(store, on_commit=publisher.submit)
    yield Cluster(store, log, publisher, chat)
    await chat.close()
    await publisher.close()
    await store.close()


def test_every_series_is_exported_before_any_traffic() -> None:
    # Pre-bound children: the dashboards see 0 for every outcome and path, not "no data".
    for outcome in OUTCOMES:
        sample("shardchat_chat_sends_total", outcome=outcome)
    for path in ("fast", "relay"):
        sample("shardchat_outbox_published_total", path=path)
    sample("shardchat_outbox_pending")
    sample("shardchat_chat_send_latency_seconds_bucket", le="0.0005")


async def test_send_outcomes_latency_and_fast_path(cluster: Cluster) -> None:
    a, b, outsider = [await cluster.user(n) for n in ("a", "b", "outsider")]
    room = await cluster.chat.create_room(a, "general", [b])  # 2 MEMBER_JOIN events
    assert await cluster.publisher.flush(5)  # their publication is counted before the reading
    reading = Reading()

    first = await cluster.chat.send_message(a, room.id, "one", "n1")
    await cluster.chat.send_message(b, room.id, "two", "n2")
    again = await cluster.chat.send_message(a, room.id, "one (retry)", "n1")
    assert again.id == first.id
    with pytest.raises(NotFound):  # a non-member learns no more than of an unknown room
        await cluster.chat.send_message(outsider, room.id, "hi", "n3")
    with pytest.raises(NotFound):
        await cluster.chat.send_message(a, 987_654_321, "hi", "n4")
    with pytest.raises(BadInput):
        await cluster.chat.send_message(a, room.id, "", "n5")
    assert await cluster.publisher.flush(5)

    delta = reading.delta()
    assert delta.pop("latency_sum") > 0
    assert delta == {
        "sends:ok": 2,
        "sends:duplicate": 1,
        "sends:not_found": 2,
        "sends:bad_user_input": 1,
        "latency_count": 3,  # acknowledged sends only (ok + duplicate)
        "published:fast": 2,  # the two MESSAGE_CREATEs
    }


async def test_group_commit_counts_each_send_once(cluster: Cluster) -> None:
    a = await cluster.user("a")
    room = await cluster.chat.create_room(a, "busy")
    assert await cluster.publisher.flush(5)
    reading = Reading()
    # Same tick: the committer writes them in one transaction; nonce 0 twice is one duplicate.
    nonces = [f"n{i}" for i in range(20)] + ["n0"]
    await asyncio.gather(*(cluster.chat.send_message(a, room.id, "x", n) for n in nonces))
    assert await cluster.publisher.flush(5)
    delta = reading.delta()
    delta.pop("latency_sum")
    assert delta == {
        "sends:ok": 20,
        "sends:duplicate": 1,
        "latency_count": 21,
        "published:fast": 20,
    }


class BrokenStore(SqliteStore):
    """A store whose message writes fail with a bug-like error (not a ChatError)."""

    async def insert_messages(self, rows: Sequence[NewMessage]) -> list[SendOutcome]:
        raise RuntimeError("disk on fire")


async def test_unexpected_error_counts_as_internal(tmp_path: Path) -> None:
    store = BrokenStore(str(tmp_path / "broken.sqlite3"))
    await store.start()
    await migrate(store)
    chat = ChatService(store)
    try:
        uid = next(_ids)
        await store.create_user(User(uid, "u", T0), "x")
        room = await chat.create_room(uid, "r")
        reading = Reading()
        with pytest.raises(RuntimeError):
            await chat.send_message(uid, room.id, "hi", "n1")
        assert reading.delta() == {"sends:internal": 1}
    finally:
        await chat.close()
        await store.close()


async def test_relay_path_and_pending_gauge(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "relay.sqlite3"))
    await store.start()
    await migrate(store)
    log = MemoryEventLog(8)
    lost: list[RoomEvent] = []
    # The fast-path hand-off is lost (as if the writer died after commit): only the relay sends.
    chat = ChatService(store, on_commit=lost.extend)
    relay = OutboxRelay(log, store, owner="me", after_ms=0)
    try:
        uid = next(_ids)
        await store.create_user(User(uid, "u", T0), "x")
        room = await chat.create_room(uid, "r")
        for i in range(3):
            await chat.send_message(uid, room.id, f"m{i}", f"n{i}")
        assert len(lost) == 4  # 1 MEMBER_JOIN + 3 MESSAGE_CREATE
        await asyncio.sleep(0.002)  # after_ms=0 takes rows created strictly before "now"
        reading = Reading()

        assert await relay.run_once() == 4
        assert sample("shardchat_outbox_pending") == 4  # what the sweep found, before publishing
        assert reading.delta() == {"published:relay": 4}
        assert sum(log.end_offset(p) for p in range(8)) == 4

        assert await relay.run_once() == 0
        assert sample("shardchat_outbox_pending") == 0  # all published: a healthy 0
    finally:
        await chat.close()
        await store.close()


async def test_pending_counts_the_publishers_queue_while_the_log_is_down(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "down.sqlite3"))
    await store.start()
    await migrate(store)
    log = MemoryEventLog(8)
    publisher = OutboxPublisher(log, store, backoff_initial_s=0.01, backoff_max_s=0.02)
    await publisher.start()
    chat = ChatService(store, on_commit=publisher.submit)
    relay = OutboxRelay(log, store, owner="me", after_ms=0, publisher=publisher)
    try:
        log.set_available(False)
        uid = next(_ids)
        await store.create_user(User(uid, "u", T0), "x")
        room = await chat.create_room(uid, "r")
        await chat.send_message(uid, room.id, "m", "n")
        await asyncio.sleep(0.002)
        reading = Reading()
        await relay.run_once()
        # Both events sit in the publisher (the relay skips them, so they count once).
        assert publisher.queued == 2
        assert sample("shardchat_outbox_pending") == 2
        assert reading.delta() == {}

        log.set_available(True)
        assert await publisher.flush(5)
        await relay.run_once()
        assert sample("shardchat_outbox_pending") == 0
        assert reading.delta() == {"published:fast": 2}
    finally:
        await chat.close()
        await publisher.close()
        await store.close()


def test_error_children_are_bound_once() -> None:
    # The hot path must find a ready child for every ChatError code (no .labels() per send).
    assert set(metrics.SEND_ERRORS) == {
        "UNAUTHENTICATED",
        "FORBIDDEN",
        "NOT_FOUND",
        "BAD_USER_INPUT",
        "RATE_LIMITED",
        "INTERNAL",
    }
    assert metrics.SEND_OK is metrics.SENDS.labels("ok")  # the same child, not a new one
