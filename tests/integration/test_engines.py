"""Smoke tests: each real local engine works from Python the way shardchat uses it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shardchat.partitioner import partition_for
from tests import engine_control

pytestmark = pytest.mark.integration

MakeTopic = Callable[..., Awaitable[str]]


async def test_postgres_round_trip(fresh_pg_dsn: str) -> None:
    conn = await asyncpg.connect(fresh_pg_dsn)
    try:
        await conn.execute("CREATE TABLE smoke (id bigint PRIMARY KEY, body text NOT NULL)")
        await conn.executemany(
            "INSERT INTO smoke (id, body) VALUES ($1, $2)", [(1, "one"), (2, "two")]
        )
        rows = await conn.fetch("SELECT id, body FROM smoke ORDER BY id")
        assert [(r["id"], r["body"]) for r in rows] == [(1, "one"), (2, "two")]
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await conn.close()


async def test_redis_pubsub(redis_url: str, unique_name: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(unique_name)
            confirm = await pubsub.get_message(timeout=5)
            assert confirm is not None and confirm["type"] == "subscribe"
            assert await client.publish(unique_name, b"hello") == 1
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            assert message is not None
            assert message["data"] == b"hello"
    finally:
        await client.aclose()


async def _produce(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes, int, int]]:
    """Produce keyed records idempotently; returns (key, value, partition, offset) per record."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        out = []
        for key, value in records:
            md = await producer.send_and_wait(topic, value=value, key=key)
            out.append((key, value, md.partition, md.offset))
        return out
    finally:
        await producer.stop()


async def _consume(
    bootstrap: str, tp: TopicPartition, offset: int, count: int, within: float = 20
) -> list[tuple[bytes | None, bytes | None, int]]:
    """Read ``count`` records of one partition from ``offset``: no group, manual assign + seek."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, offset)
        got: list[tuple[bytes | None, bytes | None, int]] = []
        deadline = asyncio.get_running_loop().time() + within
        while len(got) < count:
            assert asyncio.get_running_loop().time() < deadline, f"only {len(got)}/{count}"
            batches = await consumer.getmany(tp, timeout_ms=500)
            got.extend((r.key, r.value, r.offset) for r in batches.get(tp, []))
        assert consumer.assignment() == {tp}
        return got
    finally:
        await consumer.stop()


async def test_kafka_keyed_produce_and_assign_seek(
    kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    partitions = 6
    topic = await make_topic(partitions)
    records = [(f"room-{i % 10}".encode(), f"event-{i}".encode()) for i in range(60)]
    produced = await _produce(kafka_bootstrap, topic, records)

    # The producer's default partitioner (murmur2) agrees with shardchat.partitioner.
    for key, _value, partition, _offset in produced:
        assert partition == partition_for(key, partitions), key
    used = {p for _k, _v, p, _o in produced}
    assert len(used) > 1, "keys should spread over several partitions"

    # Consume exactly one chosen partition, from a chosen offset.
    chosen = max(used, key=lambda p: sum(1 for r in produced if r[2] == p))
    in_chosen = sorted((r for r in produced if r[2] == chosen), key=lambda r: r[3])
    start = in_chosen[2][3]
    expected = [(k, v, o) for k, v, _p, o in in_chosen if o >= start]
    got = await _consume(kafka_bootstrap, TopicPartition(topic, chosen), start, len(expected))
    assert got[: len(expected)] == expected
    assert all(partition_for(k or b"", partitions) == chosen for k, _v, _o in got)


async def test_kafka_data_survives_broker_restart(
    kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    topic = await make_topic(2)
    produced = await _produce(
        kafka_bootstrap, topic, [(b"room-1", f"m{i}".encode()) for i in range(5)]
    )
    partition = produced[0][2]
    assert {p for _k, _v, p, _o in produced} == {partition}

    await engine_control.stop("kafka")
    await engine_control.start("kafka")

    got = await _consume(kafka_bootstrap, TopicPartition(topic, partition), produced[0][3], 5)
    assert [(k, v, o) for k, v, o in got] == [(k, v, o) for k, v, _p, o in produced]
