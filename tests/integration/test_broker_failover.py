"""kill -9 a process of a replicated back end while it takes writes; nothing acknowledged is lost.

- the 3-node Kafka cluster (RF 3, min.insync.replicas 2, acks=all + idempotence): the broker
  leading a partition dies while records are appended; every acknowledged (partition, offset)
  is read back with its value, in order, without a duplicate.
- the Redis Cluster (3 masters + 3 replicas): the master of the gateway slot and of the pub/sub
  slot dies while a gateway heartbeats and saves sessions; the registry answers only
  ``RegistryUnavailable`` meanwhile, works again after the replica took over, keeps the
  sessions acknowledged before the kill and delivers on the subscription again.

Each test starts the killed node again (it rejoins: Kafka as a follower, Redis as a replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition

from shardchat.adapters.kafka_log import KafkaEventLog, delete_topic
from shardchat.adapters.redis_registry import RedisRegistry
from shardchat.eventlog import AppendError, LogRecord, room_key
from shardchat.registry import GatewayRecord, RegistryUnavailable
from tests import engine_control

pytestmark = pytest.mark.integration


async def _read_all(log: KafkaEventLog, ends: dict[int, int]) -> list[LogRecord]:
    reader = log.reader()
    out: list[LogRecord] = []
    try:
        await reader.assign(dict.fromkeys(ends, 0))
        deadline = asyncio.get_running_loop().time() + 60
        while len(out) < sum(ends.values()):
            assert asyncio.get_running_loop().time() < deadline, f"read {len(out)} of {ends}"
            out.extend(await reader.fetch(timeout_ms=500))
    finally:
        await reader.close()
    return out


async def test_kafka_broker_kill_loses_nothing_acknowledged(kafka3_bootstrap: str) -> None:
    topic = f"failover-{uuid.uuid4().hex[:12]}"
    log = KafkaEventLog(
        kafka3_bootstrap, topic, num_partitions=3, replication_factor=3, request_timeout_ms=20_000
    )
    await log.start()
    acked: dict[tuple[int, int], bytes] = {}
    failed = 0
    killed = asyncio.Event()
    after_kill = 0
    keys = [room_key(r) for r in range(1, 31)]
    try:
        leader = log._producer.client.cluster.leader_for_partition(TopicPartition(topic, 0))
        assert leader in (1, 2, 3), f"no leader for partition 0: {leader}"

        async def send() -> None:
            nonlocal failed, after_kill
            i = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 90
            while after_kill < 300 and loop.time() < deadline:
                batch = [(k, b"v%d" % (i + n), ()) for n, k in enumerate(keys)]
                i += len(batch)
                try:
                    results: list[Any] = await log.append_many(batch)
                except AppendError as exc:
                    results = exc.results
                    failed += sum(r is None for r in results)
                for (_, value, _), result in zip(batch, results, strict=True):
                    if result is not None:
                        acked[result] = value
                        after_kill += killed.is_set()

        sender = asyncio.create_task(send())
        for _ in range(300):
            if len(acked) >= 300 or sender.done():
                break
            await asyncio.sleep(0.1)
        assert len(acked) >= 300, f"{len(acked)} acknowledged before the kill ({failed} failed)"
        await engine_control.kill("kafka3", leader)
        killed.set()
        await sender
        assert after_kill >= 300, f"{after_kill} acknowledged after the kill ({failed} failed)"
        ends: dict[int, int] = {}
        for p, offset in acked:
            ends[p] = max(ends.get(p, 0), offset + 1)
        records = await _read_all(log, ends)  # from the two brokers left
    finally:
        await log.close()
        await engine_control.start("kafka3")
    stored = {(r.partition, r.offset): r.value for r in records}
    lost = [pos for pos, value in acked.items() if stored.get(pos) != value]
    assert lost == [], f"{len(lost)} acknowledged records lost or changed, e.g. {lost[:5]}"
    values = [r.value for r in records]
    assert len(values) == len(set(values)), "a record was written twice"
    for key in keys:  # per-key order: the values of one key only grow
        mine = [int(r.value[1:]) for r in records if r.key == key]
        assert mine == sorted(mine)
    await delete_topic(kafka3_bootstrap, topic)


async def _master_of(url: str, key: str) -> int:
    """The deploy/local node number (1..6) of the master serving ``key``'s slot."""
    raw = aioredis.RedisCluster.from_url(url)
    try:
        await raw.initialize()
        node = raw.get_node_from_key(key)
        assert node is not None
        base = int(url.rsplit(":", 1)[1].split("/")[0])
        return int(node.port) - base + 1
    finally:
        await raw.aclose()


async def _until_available(call: Any, within: float = 60.0) -> Any:
    """Retry ``call()`` while it raises RegistryUnavailable (and only that)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await call()
        except RegistryUnavailable:
            assert loop.time() < deadline, "the registry did not come back after the failover"
            await asyncio.sleep(0.2)


async def test_redis_cluster_master_kill_is_survived(redis_cluster_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    reg = RedisRegistry(redis_cluster_url, prefix=prefix, cluster=True, poll_s=0.2, ping_after_s=1)
    await reg.start()
    # The master of the gateway slot; the pub/sub slot's master is killed too when it is the
    # same node (the subscription then moves to the new master).
    victim = await _master_of(redis_cluster_url, f"{prefix}{{gw}}:exp")
    record = GatewayRecord("gw-a", "ws://gw-a.test/ws", 3)
    sessions = {f"s{i}": b"blob%d" % i for i in range(200)}
    try:
        sub = reg.subscribe("ctl")
        await sub.ready()
        await reg.heartbeat_gateway(record, 60)
        await reg.add_rooms("gw-a", list(range(1, 101)), 60)
        assert all(await reg.save_sessions_if([(s, b, 1) for s, b in sessions.items()], 60))
        await asyncio.sleep(0.5)  # replication to the replicas is asynchronous
        await engine_control.kill("redis-cluster", victim)
        outcomes: list[str] = []

        async def beat() -> None:
            await reg.heartbeat_gateway(record, 60)
            await reg.save_session_if("s0", sessions["s0"], 1, 60)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while loop.time() < deadline:  # what a gateway does through the outage
            try:
                await beat()
                outcomes.append("ok")
                if outcomes.count("ok") >= 5 and "down" in outcomes:
                    break
            except RegistryUnavailable:
                outcomes.append("down")
            await asyncio.sleep(0.2)
        assert "down" in outcomes, "the master kill was never noticed"
        assert outcomes[-1] == "ok", f"not recovered: {outcomes[-10:]}"
        assert await _until_available(reg.live_gateways) == [record]
        assert await _until_available(lambda: reg.gateways_for_room(7)) == {"gw-a"}
        for sid, blob in sessions.items():
            assert await _until_available(lambda s=sid: reg.load_session(s)) == blob, sid
        # The subscription's shard may have moved: it re-subscribes on its own.
        for _ in range(100):
            await _until_available(lambda: reg.publish("ctl", b"after failover"))
            with contextlib.suppress(TimeoutError):
                assert await asyncio.wait_for(sub.__anext__(), 0.3) == b"after failover"
                break
        else:
            raise AssertionError("the subscription never delivered after the failover")
        assert not sub.closed
        await sub.aclose()
    finally:
        await reg.close()
        await engine_control.start("redis-cluster")
