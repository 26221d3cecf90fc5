"""One contract for every EventLog adapter: the in-process memory log, real Kafka, Redis Streams
and NATS JetStream.

The server variants run against the private engines of deploy/local on a fresh topic (Kafka
topic, set of streams) per test, deleted after it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from shardchat.adapters.kafka_log import KafkaEventLog
from shardchat.adapters.memory_log import MemoryEventLog
from shardchat.adapters.nats_log import NatsEventLog
from shardchat.adapters.redis_streams_log import RedisStreamsEventLog
from shardchat.eventlog import EventLog, LogReader, LogRecord, room_key
from shardchat.partitioner import partition_for


@pytest.fixture(params=["memory", "kafka", "redis-streams", "nats"])
def log_target(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """``(kind, server address, topic)``; resolved outside the event loop because the engine
    fixtures run their own probes with ``asyncio.run``."""
    kind = request.param
    if kind == "memory":
        return kind, "", "contract"
    if kind == "kafka":
        return kind, request.getfixturevalue("kafka_bootstrap"), request.getfixturevalue(
            "fresh_topic"
        )
    topic = f"contract-{uuid.uuid4().hex[:12]}"
    if kind == "redis-streams":
        return kind, request.getfixturevalue("redis_url"), topic
    return kind, request.getfixturevalue("nats_url"), topic


@pytest.fixture
async def log(log_target: tuple[str, str, str]) -> AsyncIterator[EventLog]:
    kind, address, topic = log_target
    event_log: EventLog
    if kind == "memory":
        event_log = MemoryEventLog(num_partitions=8, topic=topic)
    elif kind == "kafka":
        event_log = KafkaEventLog(address, topic, num_partitions=8)
    elif kind == "redis-streams":
        event_log = RedisStreamsEventLog(address, topic, num_partitions=8)
    else:
        event_log = NatsEventLog(address, topic, num_partitions=8)
    await event_log.start()
    try:
        yield event_log
    finally:
        if isinstance(event_log, RedisStreamsEventLog | NatsEventLog):
            await event_log.delete()
        await event_log.close()


def keys_in_distinct_partitions(log: EventLog, count: int) -> list[bytes]:
    """Room keys whose partitions all differ."""
    found: dict[int, bytes] = {}
    room = 1
    while len(found) < count:
        key = room_key(room)
        found.setdefault(log.partition_for(key), key)
        room += 1
    return list(found.values())


async def collect(reader: LogReader, count: int, within: float = 15.0) -> list[LogRecord]:
    """Fetch until ``count`` records arrived (or fail after ``within`` seconds)."""
    out: list[LogRecord] = []
    deadline = asyncio.get_running_loop().time() + within
    while len(out) < count:
        assert asyncio.get_running_loop().time() < deadline, f"got {len(out)} of {count}"
        out.extend(await reader.fetch(timeout_ms=200))
    return out


async def quiet(reader: LogReader, ms: int = 500) -> list[LogRecord]:
    """Everything a reader returns within ``ms`` (expected: nothing)."""
    out: list[LogRecord] = []
    deadline = asyncio.get_running_loop().time() + ms / 1000
    while asyncio.get_running_loop().time() < deadline:
        out.extend(await reader.fetch(timeout_ms=100))
    return out


async def test_append_returns_partition_of_key_and_offsets_from_zero(log: EventLog) -> None:
    assert log.num_partitions == 8
    seen: dict[int, list[int]] = {}
    for room in range(1, 41):
        key = room_key(room)
        partition, offset = await log.append(key, b"v%d" % room)
        assert partition == partition_for(key, log.num_partitions) == log.partition_for(key)
        seen.setdefault(partition, []).append(offset)
    for offsets in seen.values():
        assert offsets == list(range(len(offsets)))


def test_partition_for_is_kafkas_default_partitioner(log: EventLog) -> None:
    """The producer's own partitioner (aiokafka's murmur2) picks the same partitions."""
    from aiokafka.partitioner import DefaultPartitioner

    everything = list(range(log.num_partitions))
    for room in [*range(1, 500), 2**62 + 12345, 384484138897002496]:
        key = room_key(room)
        assert log.partition_for(key) == DefaultPartitioner()(key, everything, everything)


async def test_append_many_keeps_batch_order_per_key(log: EventLog) -> None:
    key_a, key_b = keys_in_distinct_partitions(log, 2)
    batch = [(key_a if i % 3 else key_b, b"%d" % i, ()) for i in range(300)]
    results = await log.append_many(batch)
    assert len(results) == len(batch)
    for (key, _, _), (partition, _) in zip(batch, results, strict=True):
        assert partition == log.partition_for(key)
    reader = log.reader()
    try:
        await reader.assign({log.partition_for(key_a): 0, log.partition_for(key_b): 0})
        records = await collect(reader, 300)
    finally:
        await reader.close()
    for key in (key_a, key_b):
        got = [r.value for r in records if r.key == key]
        assert got == [value for k, value, _ in batch if k == key]
    assert sorted((r.partition, r.offset) for r in records) == sorted(results)


async def test_headers_round_trip(log: EventLog) -> None:
    key = room_key(7)
    await log.append(key, b"x", [("traceparent", b"00-abc-def-01")])
    reader = log.reader()
    try:
        await reader.assign({log.partition_for(key): 0})
        (record,) = await collect(reader, 1)
    finally:
        await reader.close()
    assert record.headers == (("traceparent", b"00-abc-def-01"),)
    assert record.timestamp_ms > 0


async def test_assign_from_offset_and_from_end(log: EventLog) -> None:
    key = room_key(42)
    partition = log.partition_for(key)
    for i in range(5):
        await log.append(key, b"%d" % i)
    from_two, from_end = log.reader(), log.reader()
    try:
        await from_two.assign({partition: 2})
        assert [r.offset for r in await collect(from_two, 3)] == [2, 3, 4]
        await from_end.assign({partition: None})
        assert await quiet(from_end, 300) == []
        await log.append(key, b"5")
        assert [(r.offset, r.value) for r in await collect(from_end, 1)] == [(5, b"5")]
        assert [r.offset for r in await collect(from_two, 1)] == [5]
    finally:
        await from_two.close()
        await from_end.close()


async def test_adding_a_partition_keeps_the_others_position(log: EventLog) -> None:
    """The aiokafka trap: assign() replaces the assignment and resets kept positions."""
    key_a, key_b = keys_in_distinct_partitions(log, 2)
    pa, pb = log.partition_for(key_a), log.partition_for(key_b)
    await log.append_many([(key_a, b"a%d" % i, ()) for i in range(20)])
    await log.append_many([(key_b, b"b%d" % i, ()) for i in range(5)])
    reader = log.reader()
    try:
        await reader.assign({pa: 0})
        first = [r.offset for r in await reader.fetch(timeout_ms=5000, max_records=7)]
        while not first:
            first = [r.offset for r in await reader.fetch(timeout_ms=1000, max_records=7)]
        await reader.assign({pb: 0})
        assert reader.assignment() == frozenset({pa, pb})
        await log.append_many([(key_a, b"a%d" % i, ()) for i in range(20, 30)])
        rest = await collect(reader, 30 - len(first) + 5)
        assert await quiet(reader, 300) == []
    finally:
        await reader.close()
    a_offsets = first + [r.offset for r in rest if r.partition == pa]
    assert a_offsets == list(range(30)), "lost or duplicated records of the kept partition"
    assert [r.offset for r in rest if r.partition == pb] == list(range(5))


async def test_concurrent_assignment_changes_lose_and_duplicate_nothing(log: EventLog) -> None:
    keys = keys_in_distinct_partitions(log, 4)
    parts = [log.partition_for(k) for k in keys]
    kept, others = parts[0], parts[1:]
    reader = log.reader()
    received: list[LogRecord] = []
    stop = asyncio.Event()

    async def consume() -> None:
        while not stop.is_set():
            received.extend(await reader.fetch(timeout_ms=50, max_records=13))

    async def produce() -> None:
        for i in range(40):
            await log.append_many([(k, b"%d" % i, ()) for k in keys])
            await asyncio.sleep(0.005)

    try:
        await reader.assign({kept: 0})
        consumer = asyncio.create_task(consume())
        producer = asyncio.create_task(produce())
        for round_ in range(6):
            # Changes issued together are coalesced; the kept partition must never notice.
            await asyncio.gather(
                reader.assign({p: None for p in others[: 1 + round_ % 3]}),
                reader.unassign(others[1 + round_ % 3 :]),
            )
            await asyncio.sleep(0.02)
        await producer
        await reader.unassign(others)
        deadline = asyncio.get_running_loop().time() + 15
        while len([r for r in received if r.partition == kept]) < 40:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        stop.set()
        await consumer
    finally:
        stop.set()
        await reader.close()
    assert [r.offset for r in received if r.partition == kept] == list(range(40))
    for p in others:
        offsets = [r.offset for r in received if r.partition == p]
        assert offsets == sorted(set(offsets)), f"partition {p} duplicated or reordered"


async def test_unassign_stops_delivery(log: EventLog) -> None:
    key_a, key_b = keys_in_distinct_partitions(log, 2)
    pa, pb = log.partition_for(key_a), log.partition_for(key_b)
    reader = log.reader()
    try:
        await reader.assign({pa: None, pb: None})
        await log.append_many([(key_a, b"a0", ()), (key_b, b"b0", ())])
        assert {r.partition for r in await collect(reader, 2)} == {pa, pb}
        await reader.unassign([pb])
        assert reader.assignment() == frozenset({pa})
        await log.append_many([(key_a, b"a1", ()), (key_b, b"b1", ())])
        got = await collect(reader, 1)
        got += await quiet(reader, 300)
        assert [(r.partition, r.value) for r in got] == [(pa, b"a1")]
        await reader.unassign([pa])
        assert reader.assignment() == frozenset()
        await log.append(key_a, b"a2")
        assert await quiet(reader, 300) == []
    finally:
        await reader.close()


async def test_end_offsets(log: EventLog) -> None:
    key_a, key_b = keys_in_distinct_partitions(log, 2)
    pa, pb = log.partition_for(key_a), log.partition_for(key_b)
    await log.append_many([(key_a, b"x", ())] * 3)
    reader = log.reader()
    try:
        assert await reader.end_offsets([pa, pb]) == {pa: 3, pb: 0}
        await log.append(key_b, b"y")
        assert await reader.end_offsets([pb]) == {pb: 1}
        assert reader.assignment() == frozenset(), "end_offsets must not assign"
    finally:
        await reader.close()
