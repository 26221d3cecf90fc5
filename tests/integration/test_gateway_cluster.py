"""Two real gateway PROCESSES (``python -m shardchat.cli gateway``) on the real engines:
PostgreSQL (a fresh database), Kafka (a fresh topic), Redis (db 7, flushed: never the shared
db 0). The test process opens its own Core on the same engines to register users, create rooms
and send (an acknowledged send is a returned ``Message``).

Client-side rules these tests apply (docs/protocol.md, "Resume after a gateway crash"): a
client RESUMEs with ``rooms`` (the last room seq it holds), and drops a room event whose ``seq``
it already holds. With ``rooms`` the gateway replays from the client's own position, so even
after a gateway is killed there must be NO duplicate: they are counted and asserted zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from chat_core.models import Room
from shardchat.config import Settings
from shardchat.runtime import Core
from tests.conftest import DEFAULT_REDIS_URL
from tests.gateway_client import JWT_KEYS, Client, is_msg
from user_core.models import User

# The deploy/local Redis (SHARDCHAT_REDIS_URL), db 7 of its own: FLUSHDB here touches no one else.
REDIS_URL = urlunsplit(
    urlsplit(os.environ.get("SHARDCHAT_REDIS_URL", DEFAULT_REDIS_URL))._replace(path="/7")
)
ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GatewayProc:
    gateway_id: str
    port: int
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@dataclass
class Env:
    core: Core
    env: dict[str, str]
    gateways: list[GatewayProc] = field(default_factory=list)

    async def start_gateway(self, n: int) -> GatewayProc:
        port = _free_port()
        env = self.env | {
            "SHARDCHAT_GATEWAY_PORT": str(port),
            "SHARDCHAT_GATEWAY_ID": f"gw-{n}",
            "SHARDCHAT_WORKER_ID": str(100 + n),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shardchat.cli",
            "gateway",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        gw = GatewayProc(f"gw-{n}", port, proc)
        listening = asyncio.get_running_loop().create_future()

        async def pump() -> None:  # keep the pipe drained; keep the lines for failures
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                gw.lines.append(line)
                if "listening on" in line and not listening.done():
                    listening.set_result(None)
            if not listening.done():
                listening.set_exception(RuntimeError("\n".join(gw.lines[-30:])))

        gw.reader = asyncio.create_task(pump())
        self.gateways.append(gw)
        await asyncio.wait_for(listening, 30)
        return gw

    async def user(self, name: str) -> tuple[User, str]:
        tokens = await self.core.auth.register(name, "correct horse battery")
        return tokens.user, tokens.access_token

    async def room(self, owner: User, *others: User) -> Room:
        return await self.core.chat.create_room(owner.id, "room", [u.id for u in others])


@pytest.fixture
async def cluster(fresh_pg_dsn: str, fresh_topic: str, kafka_bootstrap: str) -> AsyncIterator[Env]:
    r = redis.Redis.from_url(REDIS_URL)
    r.flushdb()
    r.close()
    env = {
        "SHARDCHAT_STORE": "postgres",
        "SHARDCHAT_POSTGRES_DSN": fresh_pg_dsn,
        "SHARDCHAT_EVENT_LOG": "kafka",
        "SHARDCHAT_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SHARDCHAT_KAFKA_TOPIC": fresh_topic,
        "SHARDCHAT_KAFKA_PARTITIONS": str(PARTITIONS),
        "SHARDCHAT_REGISTRY": "redis",
        "SHARDCHAT_REDIS_URL": REDIS_URL,
        "SHARDCHAT_JWT_KEYS": json.dumps(JWT_KEYS),
        "SHARDCHAT_HEARTBEAT_INTERVAL_MS": "5000",
        "SHARDCHAT_GATEWAY_TTL_S": "3",
        "SHARDCHAT_OUTBOX_RELAY_AFTER_MS": "500",
        "SHARDCHAT_LOG_LEVEL": "WARNING",
    }
    settings = Settings(
        store="postgres",
        postgres_dsn=fresh_pg_dsn,
        event_log="kafka",
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic=fresh_topic,
        kafka_partitions=PARTITIONS,
        registry="redis",
        redis_url=REDIS_URL,
        jwt_keys=JWT_KEYS,
        worker_id=99,
        outbox_relay_after_ms=500,
    )
    core = await Core.open(settings)  # migrates the fresh database before any gateway starts
    e = Env(core, os.environ | env)
    try:
        yield e
    finally:
        for gw in e.gateways:
            if gw.proc.returncode is None:
                gw.proc.send_signal(signal.SIGTERM)
        for gw in e.gateways:
            try:
                await asyncio.wait_for(gw.proc.wait(), 15)
            except TimeoutError:
                gw.proc.kill()
                await gw.proc.wait()
            if gw.reader is not None:
                with contextlib.suppress(Exception):
                    await gw.reader
        await core.close()
        r = redis.Redis.from_url(REDIS_URL)
        r.flushdb()
        r.close()


class Member:
    """A client that follows the protocol's recovery rules across gateway failures.

    Heartbeats every second with its last ``s``; on a dropped connection it RESUMEs on the
    next gateway in ``urls``, listing in ``rooms`` the last room seq it holds; on
    INVALID_SESSION it IDENTIFYs and SUBSCRIBEs with ``after_seq`` = that seq. Records every
    MESSAGE_CREATE room seq.
    """

    def __init__(self, token: str, room_id: int, urls: list[str]) -> None:
        self.token = token
        self.room_id = room_id
        self.urls = urls
        self.seqs: list[int] = []  # room seqs in arrival order, duplicates dropped
        self.duplicates: list[int] = []
        self.live_duplicates = 0  # duplicates outside a RESUME replay: must stay 0
        self.resumes = 0
        self.invalidated = 0
        self.session_id = ""
        self.client: Client | None = None
        self.url = urls[0]
        self.position = 0  # last room seq held: ROOM_SUBSCRIBED's, then the newest event's

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    def _take(self, frame: dict[str, Any], replay: bool) -> None:
        d = frame.get("d")
        if (  # ROOM_SUBSCRIBED and this room's events move the position
            frame.get("op") == 0
            and isinstance(d, dict)
            and isinstance(d.get("seq"), int)
            and d.get("room_id") == str(self.room_id)
        ):
            self.position = max(self.position, d["seq"])
        if not is_msg(frame):
            return
        seq = frame["d"]["seq"]
        if seq <= self.last:
            self.duplicates.append(seq)
            if not replay:
                self.live_duplicates += 1
            return
        self.seqs.append(seq)

    async def connect(self, url: str) -> None:
        self.url = url
        self.client = await Client.open(url, "?v=1&encoding=json")
        ready = await self.client.identify(self.token, subscribe="all")
        self.session_id = ready["d"]["session_id"]
        sub = await self.client.until(lambda f: f.get("t") == "ROOM_SUBSCRIBED")  # live now
        self._take(sub, replay=False)

    async def _reconnect(self) -> None:
        assert self.client is not None
        last_s = self.client.last_s or 0
        for attempt in range(100):
            url = self.urls[(self.urls.index(self.url) + 1 + attempt) % len(self.urls)]
            try:
                client = await Client.open(url, "?v=1&encoding=json")
            except (OSError, InvalidHandshake):
                await asyncio.sleep(0.1)
                continue
            self.url, self.client = url, client
            client.last_s = last_s
            frames = await _resume(client, self.token, self.session_id, last_s, self.rooms())
            for frame in frames:
                self._take(frame, replay=True)
            if frames[-1]["op"] != 9:
                self.resumes += 1
                return
            self.invalidated += 1  # lost session (registry flushed): start over, recover
            await client.send(2, {"token": self.token, "subscribe": []})
            ready = await client.until(lambda f: f.get("t") == "READY")
            self.session_id = ready["d"]["session_id"]
            await client.send(
                4, {"rooms": [{"room_id": str(self.room_id), "after_seq": self.position}]}
            )
            while True:
                frame = await client.recv()
                self._take(frame, replay=True)
                if frame.get("t") == "ROOM_SUBSCRIBED":
                    assert frame["d"]["recovered"] is True
                    return
        raise AssertionError("no gateway to reconnect to")

    def rooms(self) -> dict[str, int]:
        """RESUME ``rooms``: the one room, at the last seq this member holds."""
        return {str(self.room_id): self.position}

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        beat = loop.time() + 1.0
        while not stop.is_set():
            assert self.client is not None
            if loop.time() >= beat:  # heartbeats every second, busy or not (as clients must)
                beat = loop.time() + 1.0
                with contextlib.suppress(ConnectionClosed):
                    await self.client.send(1, self.client.last_s)
            try:
                frame = await self.client.recv(wait_s=1.0)
            except TimeoutError:
                continue
            except ConnectionClosed:
                await self._reconnect()
                continue
            self._take(frame, replay=False)

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.ws.close()


async def _resume(
    client: Client, token: str, session_id: str, seq: int, rooms: dict[str, int]
) -> list[dict[str, Any]]:
    """HELLO, RESUME with ``rooms``; the frames up to RESUMED (or INVALID_SESSION)."""
    hello = await client.recv()
    assert hello["op"] == 10, hello
    await client.send(6, {"token": token, "session_id": session_id, "seq": seq, "rooms": rooms})
    frames: list[dict[str, Any]] = []
    while True:
        frame = await client.recv()
        frames.append(frame)
        if frame.get("t") == "RESUMED" or frame["op"] == 9:
            return frames


async def _send_many(
    env: Env, author: User, room: Room, n: int, tag: str, pause_s: float = 0.0
) -> list[int]:
    """Send ``n`` messages one after the other; the room seqs of the acknowledged ones."""
    acked = []
    for i in range(n):
        msg = await env.core.chat.send_message(author.id, room.id, f"{tag}{i}", f"{tag}{i}")
        acked.append(msg.seq)
        if pause_s:
            await asyncio.sleep(pause_s)
    return acked


async def _settle(members: list[Member], last_seq: int, within: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while any(m.last < last_seq for m in members) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


def _check_exact(member: Member, acked: list[int], first: int) -> None:
    """Every acknowledged seq exactly once, in order, nothing else but the room's events."""
    assert member.seqs == list(range(first, max(acked) + 1)), (member.seqs[:5], len(member.seqs))
    assert set(acked) <= set(member.seqs)
    assert member.live_duplicates == 0


@pytest.mark.timeout(60)
async def test_two_clients_on_two_gateways_see_each_other_in_seq_order(cluster: Env) -> None:
    gw1 = await cluster.start_gateway(1)
    gw2 = await cluster.start_gateway(2)
    alice, atok = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.room(alice, bob)  # seqs 1, 2: MEMBER_JOIN
    a, b = Client(await _ws(gw1.url)), Client(await _ws(gw2.url))
    await a.identify(atok)
    await b.identify(btok)
    await a.until(lambda f: f.get("t") == "ROOM_SUBSCRIBED")
    await b.until(lambda f: f.get("t") == "ROOM_SUBSCRIBED")

    async def send_and_collect(c: Client, tag: str) -> tuple[list[int], list[int]]:
        """Fire 15 SENDs (the op burst is 20), then read: the acked seqs, the seen seqs."""
        for i in range(15):
            await c.request(
                8, {"room_id": str(room.id), "content": f"{tag}{i}", "nonce": f"{tag}{i}"}
            )
        acked: list[int] = []
        seen: list[int] = []
        while len(acked) < 15 or len(seen) < 30:
            frame = await c.recv(wait_s=15)
            if frame["op"] == 13:
                assert frame["d"]["ok"], frame
                acked.append(frame["d"]["result"]["seq"])
            elif is_msg(frame):
                seen.append(frame["d"]["seq"])
        return acked, seen

    (acked_a, seen_a), (acked_b, seen_b) = await asyncio.gather(
        send_and_collect(a, "a"), send_and_collect(b, "b")
    )
    assert sorted(acked_a + acked_b) == list(range(3, 33))
    assert seen_a == list(range(3, 33))  # each sees both senders, in room seq order
    assert seen_b == list(range(3, 33))
    await a.ws.close()
    await b.ws.close()


async def _ws(url: str) -> Any:
    from websockets.asyncio.client import connect

    return await connect(url + "?v=1&encoding=json")


@pytest.mark.timeout(60)
async def test_resume_on_the_other_gateway_gets_exactly_the_missed_100(cluster: Env) -> None:
    gw1 = await cluster.start_gateway(1)
    gw2 = await cluster.start_gateway(2)
    alice, _ = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.room(alice, bob)
    b = Client(await _ws(gw1.url))
    sid = (await b.identify(btok))["d"]["session_id"]
    await b.until(lambda f: f.get("t") == "ROOM_SUBSCRIBED")
    await _send_many(cluster, alice, room, 5, "pre")
    assert [(await b.until(is_msg))["d"]["seq"] for _ in range(5)] == list(range(3, 8))
    last_s = b.last_s
    assert last_s is not None
    await b.ws.close(4000)  # not 1000/1001: the session stays resumable
    acked = await _send_many(cluster, alice, room, 100, "m")
    assert acked == list(range(8, 108))
    b2 = Client(await _ws(gw2.url))
    frames = await b2.resume(btok, sid, last_s)
    msgs = [f["d"]["seq"] for f in frames if is_msg(f)]
    assert msgs == acked  # exactly the 100, in order, no more, no less
    assert [f["s"] for f in frames] == list(range(last_s + 1, last_s + 102))
    assert frames[-1]["t"] == "RESUMED" and frames[-1]["d"] == {"replayed": 100}
    await _send_many(cluster, alice, room, 1, "live")
    assert (await b2.until(is_msg, wait_s=10))["d"]["seq"] == 108
    await b2.ws.close()


@pytest.mark.timeout(60)
async def test_sigkill_a_gateway_mid_stream_loses_nothing(cluster: Env) -> None:
    gw1 = await cluster.start_gateway(1)
    gw2 = await cluster.start_gateway(2)
    alice, _ = await cluster.user("alice")
    carol, _ = await cluster.user("carol")
    users = [await cluster.user(f"member{i}") for i in range(3)]
    room = await cluster.room(alice, carol, *(u for u, _ in users))  # seqs 1..5
    urls = [gw1.url, gw2.url]
    members = [Member(tok, room.id, urls) for _, tok in users]
    await members[0].connect(gw1.url)
    await members[1].connect(gw1.url)
    await members[2].connect(gw2.url)
    stop = asyncio.Event()
    readers = [asyncio.create_task(m.run(stop)) for m in members]
    senders = [
        asyncio.create_task(_send_many(cluster, alice, room, 150, "a", pause_s=0.01)),
        asyncio.create_task(_send_many(cluster, carol, room, 150, "c", pause_s=0.01)),
    ]
    while max(m.last for m in members) < 80:  # noqa: ASYNC110 - waits for traffic
        await asyncio.sleep(0.01)
    gw1.proc.send_signal(signal.SIGKILL)  # no drain, no save: a crash
    acked = sorted((await senders[0]) + (await senders[1]))
    await _settle(members, max(acked))
    stop.set()
    await asyncio.gather(*readers)
    for m in members:
        _check_exact(m, acked, first=6)
    assert members[0].resumes + members[0].invalidated >= 1
    assert members[1].resumes + members[1].invalidated >= 1
    # The killed gateway's saved state lags what it had sent by up to a second, but RESUME
    # ``rooms`` makes the replay start at each member's own position: nothing repeats.
    assert [m.duplicates for m in members] == [[], [], []]
    for m in members:
        await m.close()


@pytest.mark.timeout(60)
async def test_redis_flush_mid_stream_changes_nothing_visible(cluster: Env) -> None:
    gw1 = await cluster.start_gateway(1)
    gw2 = await cluster.start_gateway(2)
    alice, _ = await cluster.user("alice")
    users = [await cluster.user(f"member{i}") for i in range(2)]
    room = await cluster.room(alice, *(u for u, _ in users))  # seqs 1..3
    members = [Member(tok, room.id, [gw1.url, gw2.url]) for _, tok in users]
    await members[0].connect(gw1.url)
    await members[1].connect(gw2.url)
    stop = asyncio.Event()
    readers = [asyncio.create_task(m.run(stop)) for m in members]
    sender = asyncio.create_task(_send_many(cluster, alice, room, 200, "m", pause_s=0.01))
    while max(m.last for m in members) < 60:  # noqa: ASYNC110 - waits for traffic
        await asyncio.sleep(0.01)
    r = redis.Redis.from_url(REDIS_URL)
    r.flushdb()  # sessions, gateway records, room/partition maps: all gone
    r.close()
    await asyncio.sleep(0.05)
    # A client drops its connection right after the flush: its saved session may be gone
    # (INVALID_SESSION, then IDENTIFY + SUBSCRIBE after_seq) or already re-saved (RESUME).
    assert members[0].client is not None
    await members[0].client.ws.close(4000)
    acked = await sender
    await _settle(members, max(acked))
    stop.set()
    await asyncio.gather(*readers)
    for m in members:
        _check_exact(m, acked, first=4)
        assert not m.duplicates  # no crash here: nothing may repeat
    assert members[0].resumes + members[0].invalidated == 1
    # Gateways re-registered on their next heartbeat (ttl 3 s / 3).
    r = redis.Redis.from_url(REDIS_URL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while loop.time() < deadline and not r.hlen("shardchat:{gw}:rec"):  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    assert set(r.hkeys("shardchat:{gw}:rec")) == {b"gw-1", b"gw-2"}
    r.close()
    for m in members:
        await m.close()


@pytest.mark.timeout(90)
async def test_a_log_jump_past_unread_records_is_filled_from_the_store(
    cluster: Env, kafka_bootstrap: str
) -> None:
    """The gateway is paused while records of a quiet room are appended, and the log drops
    them before it reads again (retention, an unclean leader election): its position is out of
    range and resets to the end. The room's events must still arrive, from the Store."""
    gw = await cluster.start_gateway(1)
    alice, _ = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.room(alice, bob)
    c = Client(await _ws(gw.url))
    await c.identify(btok)
    await c.until(lambda f: f.get("t") == "ROOM_SUBSCRIBED")
    gw.proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(0.5)  # its fetch in flight has been answered (empty)
        acked = await _send_many(cluster, alice, room, 3, "q")
        topic = cluster.core.settings.kafka_topic
        partition = cluster.core.event_log.partition_for(str(room.id).encode())
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            tp = TopicPartition(topic, partition)
            while True:  # published (the outbox hands them over right after commit)
                reader = cluster.core.event_log.reader()
                try:
                    end = (await reader.end_offsets([partition]))[partition]
                finally:
                    await reader.close()
                if end >= 3 or loop.time() > deadline:
                    break
                await asyncio.sleep(0.1)
            await admin.delete_records({tp: RecordsToDelete(end)})
        finally:
            await admin.close()
    finally:
        gw.proc.send_signal(signal.SIGCONT)
    got: list[int] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while len(got) < len(acked) and loop.time() < deadline:
        try:
            frame = await c.recv(wait_s=1.0)
        except TimeoutError:
            await c.send(1, c.last_s)  # heartbeat: the skip is noticed within two lag samples
            continue
        if is_msg(frame):
            got.append(frame["d"]["seq"])
    assert got == acked, "\n".join(gw.lines[-20:])
    await c.ws.close()
