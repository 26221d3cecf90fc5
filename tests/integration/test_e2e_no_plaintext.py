"""An encrypted conversation on the real engines leaves no plaintext anywhere the server keeps
data (docs/e2e.md section 1): every PostgreSQL row of every table, every Kafka record (key,
value, headers) of the run's topic and every Redis key of the run's database (the registry and
the history cache) are read back and searched for the message texts.

The conversation uses both paths: GraphQL (the edge, in process) and the gateway WebSocket
(SEND with an ``encrypted`` payload; MESSAGE_CREATE and MESSAGE_UPDATE decrypted by the
receiver), with an edit, a reaction, a removal and the rotation after it. A control message in a
plain room IS found in all three engines: the search sees what it should.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from gateway.server import Gateway
from shardchat.client import EdgeClient, GatewayClient, ShardchatError
from shardchat.config import Settings
from shardchat.e2e.client import E2EClient
from shardchat.runtime import Core
from shardchat.services import build_edge_app
from tests.conftest import DEFAULT_REDIS_URL, DEFAULT_TOPIC_PARTITIONS
from tests.gateway_client import JWT_KEYS

PARTITIONS = DEFAULT_TOPIC_PARTITIONS  # as many as the fresh topic has
#: Redis database of this test alone (flushed before and after).
REDIS_URL = urlunsplit(
    urlsplit(os.environ.get("SHARDCHAT_REDIS_URL", DEFAULT_REDIS_URL))._replace(path="/9")
)


class NoPlacement:
    async def choose(self, key: str | None) -> Any:
        raise LookupError("not used here")


async def _wait_for(client: GatewayClient, t: str, message_id: str) -> dict[str, Any]:
    while True:
        event = await client.next_event(t, wait_s=20)
        if event.d["id"] == message_id:
            return dict(event.d)


@pytest.fixture
async def core(
    fresh_pg_dsn: str, fresh_topic: str, kafka_bootstrap: str
) -> AsyncIterator[tuple[Core, Settings]]:
    flush = aioredis.Redis.from_url(REDIS_URL)
    await flush.flushdb()
    settings = Settings(
        store="postgres",
        postgres_dsn=fresh_pg_dsn,
        event_log="kafka",
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic=fresh_topic,
        kafka_partitions=PARTITIONS,
        registry="redis",
        redis_url=REDIS_URL,
        history_cache=True,  # message pages and catch-up events in Redis too
        jwt_keys=JWT_KEYS,
        gateway_port=0,
        outbox_relay_after_ms=300,
        graphql_mutation_burst=10_000,
        graphql_mutation_per_s=1e4,
        graphql_query_burst=10_000,
        graphql_query_per_s=1e4,
    )
    c = await Core.open(settings)
    try:
        yield c, settings
    finally:
        await c.close()
        await flush.flushdb()
        await flush.aclose()


async def _pg_values(dsn: str) -> list[tuple[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        out: list[tuple[str, Any]] = []
        for t in tables:
            for row in await conn.fetch(f'SELECT * FROM "{t}"'):
                out.extend((f"postgres {t}.{k}", v) for k, v in row.items())
        return out
    finally:
        await conn.close()


async def _all_published(dsn: str, within_s: float = 30) -> None:
    """Until every stored room event is marked published to Kafka (the outbox is empty)."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(int(within_s * 10)):
            left = await conn.fetchval(
                "SELECT count(*) FROM room_events WHERE published_at_ms IS NULL"
            )
            if left == 0:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{left} room events never reached Kafka")
    finally:
        await conn.close()


async def _kafka_values(bootstrap: str, topic: str) -> list[tuple[str, Any]]:
    """Key, value and headers of every record of the topic, read up to its end offsets."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        assert sum(end.values()) > 0, "nothing was published"
        seen = {p: 0 for p in parts}
        out: list[tuple[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + 30
        while any(seen[p] < end[p] for p in parts):
            assert asyncio.get_running_loop().time() < deadline, f"read {seen} of {end}"
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    seen[tp] = r.offset + 1
                    where = f"kafka {tp.partition}@{r.offset}"
                    out += [(where, r.key), (where, r.value), *((where, v) for _, v in r.headers)]
        return out
    finally:
        await consumer.stop()


async def _redis_values(url: str) -> list[tuple[str, Any]]:
    r = aioredis.Redis.from_url(url)
    out: list[tuple[str, Any]] = []
    try:
        async for key in r.scan_iter(count=500):
            kind = (await r.type(key)).decode()
            where = f"redis {kind} {key!r}"
            out.append((where, key))
            if kind == "string":
                out.append((where, await r.get(key)))
            elif kind == "hash":
                out += [(where, x) for kv in (await r.hgetall(key)).items() for x in kv]
            elif kind == "list":
                out += [(where, x) for x in await r.lrange(key, 0, -1)]
            elif kind == "set":
                out += [(where, x) for x in await r.smembers(key)]
            elif kind == "zset":
                out += [(where, x) for x in await r.zrange(key, 0, -1)]
            elif kind == "stream":
                for _, fields in await r.xrange(key):
                    out += [(where, x) for kv in fields.items() for x in kv]
            else:
                raise AssertionError(f"unexpected Redis type {kind} at {key!r}")
    finally:
        await r.aclose()
    return out


def _hits(values: list[tuple[str, Any]], needles: list[str]) -> list[str]:
    found = []
    for where, value in values:
        blob = value if isinstance(value, bytes | bytearray | memoryview) else str(value).encode()
        for n in needles:
            if n.encode() in bytes(blob):
                found.append(f"{n!r} in {where}")
    return found


async def test_an_encrypted_conversation_leaves_no_plaintext_in_postgres_kafka_or_redis(
    core: tuple[Core, Settings], tmp_path: Path, kafka_bootstrap: str
) -> None:
    c, settings = core
    gateway = Gateway(settings, c.auth, c.chat, c.event_log, c.registry)
    await gateway.start()
    app = build_edge_app(settings, c, NoPlacement())
    run = uuid.uuid4().hex[:8]
    secret = [f"plaintext-{run}-{i}" for i in range(6)]
    control = f"control-{run}"
    gw_clients: list[GatewayClient] = []
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge"
        ) as http:
            people: dict[str, E2EClient] = {}
            for name in ("alice", "bob", "carol"):
                edge = EdgeClient("http://edge", http=http)
                await edge.register(f"{name}-{run}", "correct horse battery")
                people[name] = E2EClient(edge, tmp_path / name)
                await people[name].setup()
            alice, bob, carol = people["alice"], people["bob"], people["carol"]
            room = await alice.create_room(f"room-{run}", [bob.user_id, carol.user_id])
            rid = int(room["id"])

            bob_gw = await GatewayClient.connect(gateway.url, await bob.edge.access_token())
            alice_gw = await GatewayClient.connect(gateway.url, await alice.edge.access_token())
            gw_clients += [bob_gw, alice_gw]
            await bob_gw.subscribe([rid])

            # 1. over the gateway: SEND with an encrypted payload, decrypted by bob
            nonce = f"g-{run}"
            wire = await alice.encrypt(rid, secret[0], nonce)
            stored = await alice_gw.send(rid, None, nonce, encrypted=wire)
            assert stored["content"] == "" and stored["encrypted"]["epoch"] == 1
            got = await _wait_for(bob_gw, "MESSAGE_CREATE", stored["id"])
            assert (await bob.decrypt(got)).text == secret[0]
            # the gateway's REPLY names why a send is refused
            with pytest.raises(ShardchatError) as stale:
                await alice_gw.send(rid, None, f"s-{run}", encrypted=dict(wire, epoch=9))
            assert (stale.value.code, stale.value.reason) == ("BAD_USER_INPUT", "STALE_EPOCH")
            with pytest.raises(ShardchatError) as plain_text:
                await alice_gw.send(rid, secret[5], f"p-{run}")
            assert plain_text.value.reason == "ENCRYPTED_ROOM"
            # 2. over GraphQL, an edit (MESSAGE_UPDATE decrypted with the author) and a reaction
            first = await carol.send(rid, secret[1])
            got = await _wait_for(bob_gw, "MESSAGE_CREATE", first["id"])
            assert (await bob.decrypt(got)).text == secret[1]
            await carol.edit(rid, int(first["id"]), secret[2])
            update = await _wait_for(bob_gw, "MESSAGE_UPDATE", first["id"])
            decrypted = await bob.decrypt(update, author_id=carol.user_id, edited=True)
            assert decrypted.text == secret[2]
            await bob.edge.graphql(
                'mutation($m: ID!) { addReaction(messageId: $m, emoji: "🔒") }', {"m": first["id"]}
            )
            # 3. carol is removed; the next message is under epoch 2, which she never gets
            assert await alice.edge.remove_member(rid, carol.user_id)
            after = await alice.send(rid, secret[3])
            assert after["encrypted"]["epoch"] == 2
            assert (await carol.decrypt(after)).status == "no_key"
            got = await _wait_for(bob_gw, "MESSAGE_CREATE", after["id"])
            assert (await bob.decrypt(got)).text == secret[3]
            await bob.send(rid, secret[4])
            assert [d.text for d in await bob.history(rid)] == [
                secret[0], secret[2], secret[3], secret[4]
            ]  # fmt: skip
            # the history cache served (and so holds) the newest page of the room
            assert [d.text for d in await alice.history(rid)][-1] == secret[4]
            # 4. the control: plain text in a plain room, found everywhere below
            plain = await alice.edge.create_room(f"plain-{run}")
            await alice.edge.graphql(
                "mutation($r: ID!, $c: String!) { sendMessage(roomId: $r, content: $c,"
                ' nonce: "c1") { id } }',
                {"r": plain["id"], "c": control},
            )
            await alice.edge.graphql(
                "query($r: ID!) { messages(roomId: $r) { items { id } } }", {"r": plain["id"]}
            )
            await _all_published(settings.postgres_dsn)
    finally:
        for g in gw_clients:
            await g.close()
        await gateway.close()

    pg = await _pg_values(settings.postgres_dsn)
    kafka = await _kafka_values(kafka_bootstrap, settings.kafka_topic)
    cache = await _redis_values(REDIS_URL)
    assert any("room_keys" in where for where, _ in pg)  # the sealed keys are there, sealed
    for name, values in (("postgres", pg), ("kafka", kafka), ("redis", cache)):
        assert _hits(values, [control]), f"the control message is not in {name}: scan is blind"
        assert _hits(values, secret) == [], f"plaintext in {name}"
