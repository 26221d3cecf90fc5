"""Delivery and recovery on the real engines: every acknowledged event reaches a member once, in
room seq order, across big backlogs, cuts, concurrent RESUMEs, leaves, Registry outages and log
jumps (issue 10). Gateways run in this process on one real Core: PostgreSQL (a fresh database),
Kafka (a fresh topic), Redis (db 8 of the configured server, flushed before and after).

Where a fault must land at one exact step (a Store error on the second room of a RESUME, a slow
Store read during a catch-up), the gateway is given the real ChatService behind ``FaultyChat``,
which delegates every call and adds the delay or the error the test asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import pytest
import redis

from chat_core.models import Room, RoomEvent
from gateway.server import Gateway, serve_gateway
from gateway.session import load_blob
from shardchat.config import Settings
from shardchat.runtime import Core
from tests import engine_control
from tests.conftest import DEFAULT_REDIS_URL
from tests.gateway_client import JWT_KEYS, Client, Frame, is_msg
from user_core.models import User

pytestmark = pytest.mark.integration

REDIS_URL = urlunsplit(
    urlsplit(os.environ.get("SHARDCHAT_REDIS_URL", DEFAULT_REDIS_URL))._replace(path="/8")
)
BIG = "x" * 4000  # the longest message content: about 4 KiB per frame


class FaultyChat:
    """The real ChatService, with a delay on ``events_after`` and errors on chosen calls."""

    def __init__(self, chat: Any) -> None:
        self._chat = chat
        self.events_after_delay_s = 0.0
        self.fail_get_room: Callable[[int, int], bool] = lambda actor, room_id: False

    async def get_room(self, actor: int, room_id: int) -> Room:
        if self.fail_get_room(actor, room_id):
            raise ConnectionError("injected: the Store is unreachable")
        room: Room = await self._chat.get_room(actor, room_id)
        return room

    async def events_after(self, room_id: int, after_seq: int, limit: int) -> list[RoomEvent]:
        if self.events_after_delay_s:
            await asyncio.sleep(self.events_after_delay_s)
        events: list[RoomEvent] = await self._chat.events_after(room_id, after_seq, limit)
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chat, name)


@dataclass
class Real:
    core: Core
    settings: Settings
    gateways: list[Gateway] = field(default_factory=list)
    _n: int = 0

    async def gateway(self, chat: Any = None, **overrides: Any) -> Gateway:
        self._n += 1
        settings = msgspec.structs.replace(self.settings, gateway_id=f"gw-r{self._n}", **overrides)
        gw = await serve_gateway(
            settings,
            self.core.auth,
            chat if chat is not None else self.core.chat,
            self.core.event_log,
            self.core.registry,
            drain_grace_s=0.5,
            partition_linger_s=0.2,
        )
        self.gateways.append(gw)
        return gw

    async def user(self, name: str) -> tuple[User, str]:
        self._n += 1
        tokens = await self.core.auth.register(f"{name}{self._n}", "correct horse battery")
        return tokens.user, tokens.access_token

    async def send(self, author: User, room: Room, n: int, content: str, tag: str) -> list[int]:
        """``n`` acknowledged sends, 50 at a time; their room seqs in order."""
        seqs: list[int] = []
        for start in range(0, n, 50):
            msgs = await asyncio.gather(
                *(
                    self.core.chat.send_message(author.id, room.id, content, f"{tag}{i}")
                    for i in range(start, min(n, start + 50))
                )
            )
            seqs += [m.seq for m in msgs]
        return sorted(seqs)


@pytest.fixture
async def real(
    fresh_pg_dsn: str, fresh_topic: str, kafka_bootstrap: str, redis_url: str
) -> AsyncIterator[Real]:
    r = redis.Redis.from_url(REDIS_URL)
    r.flushdb()
    r.close()
    settings = Settings(
        store="postgres",
        postgres_dsn=fresh_pg_dsn,
        event_log="kafka",
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic=fresh_topic,
        kafka_partitions=8,
        registry="redis",
        redis_url=REDIS_URL,
        jwt_keys=JWT_KEYS,
        host="127.0.0.1",
        gateway_port=0,
        heartbeat_interval_ms=5000,
        gateway_ttl_s=3.0,
        worker_id=98,
        outbox_relay_after_ms=500,
        identify_per_window=1000,
    )
    core = await Core.open(settings)
    env = Real(core, settings)
    try:
        yield env
    finally:
        for gw in env.gateways:
            with contextlib.suppress(Exception):
                await gw.close()
        await core.close()
        r = redis.Redis.from_url(REDIS_URL)
        r.flushdb()
        r.close()


# ---------------------------------------------------------------------------------------------
# A reading client
# ---------------------------------------------------------------------------------------------
@dataclass
class Reader:
    """Reads a session's frames, heartbeats its last ``s`` every second, keeps room seqs."""

    client: Client
    seqs: dict[str, list[int]] = field(default_factory=dict)  # room -> MESSAGE_CREATE seqs
    frames: list[Frame] = field(default_factory=list)
    closed: int | None = None

    async def read(self, until: Callable[[Frame], bool], within: float = 60.0) -> Frame | None:
        """Read until a frame matches ``until`` (returned) or the server closes (None)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        beat = loop.time() + 1.0
        while loop.time() < deadline:
            try:
                frame = await self.client.recv(wait_s=0.5)
            except TimeoutError:
                frame = None
            except Exception:
                self.closed = self.client.ws.close_code
                return None
            if loop.time() > beat:
                beat = loop.time() + 1.0
                with contextlib.suppress(Exception):
                    await self.client.send(1, self.client.last_s)
            if frame is None:
                continue
            self.frames.append(frame)
            if is_msg(frame):
                self.seqs.setdefault(frame["d"]["room_id"], []).append(frame["d"]["seq"])
            if until(frame):
                return frame
        raise AssertionError(f"nothing matched within {within}s; last {self.frames[-3:]}")


def t_is(name: str) -> Callable[[Frame], bool]:
    return lambda f: f.get("t") == name


async def _away(gw: Gateway, token: str, **identify: Any) -> tuple[str, int]:
    """IDENTIFY (subscribe all), heartbeat, close with 4000: the session id and last ``s``."""
    c = await Client.open(gw.port)
    ready = await c.identify(token, **identify)
    await c.until(t_is("ROOM_SUBSCRIBED"))
    await c.send(1, c.last_s)
    await c.until(lambda f: f["op"] == 11)
    await asyncio.sleep(1.2)  # a periodic save with the acknowledged position
    await c.ws.close(4000)
    assert c.last_s is not None
    return ready["d"]["session_id"], c.last_s


async def _resume(
    gw: Gateway, token: str, sid: str, seq: int, rooms: dict[str, int] | None = None
) -> Reader:
    c = await Client.open(gw.port)
    hello = await c.recv()
    assert hello["op"] == 10
    d: dict[str, Any] = {"token": token, "session_id": sid, "seq": seq}
    if rooms is not None:
        d["rooms"] = rooms
    await c.send(6, d)
    c.last_s = seq
    return Reader(c)


# ---------------------------------------------------------------------------------------------
# Big backlogs: catch-up is paced by the socket, never cut as a slow consumer
# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(180)
async def test_resume_over_a_multi_mib_backlog_delivers_it_all_once_in_order(real: Real) -> None:
    gw1, gw2 = await real.gateway(), await real.gateway()
    alice, _ = await real.user("alice")
    bob, btok = await real.user("bob")
    room = await real.core.chat.create_room(alice.id, "busy", [bob.id])  # seqs 1, 2
    sid, last_s = await _away(gw1, btok)
    acked = await real.send(alice, room, 600, BIG, "m")  # about 2.4 MiB of frames
    reader = await _resume(gw2, btok, sid, last_s, {str(room.id): 2})
    resumed = await reader.read(t_is("RESUMED"), within=120)
    assert resumed is not None, f"closed with {reader.closed} after {len(reader.frames)} frames"
    assert reader.seqs[str(room.id)] == acked
    assert resumed["d"] == {"replayed": 600}
    s = [f["s"] for f in reader.frames if f["op"] == 0]
    assert s == list(range(last_s + 1, last_s + 602))


@pytest.mark.timeout(180)
async def test_subscribe_after_seq_over_a_multi_mib_backlog_delivers_it_all(real: Real) -> None:
    gw = await real.gateway()
    alice, _ = await real.user("alice")
    bob, btok = await real.user("bob")
    room = await real.core.chat.create_room(alice.id, "busy", [bob.id])
    acked = await real.send(alice, room, 600, BIG, "m")
    c = await Client.open(gw.port)
    await c.identify(btok, subscribe=[])
    await c.request(4, {"rooms": [{"room_id": str(room.id), "after_seq": 2}]})
    reader = Reader(c)
    sub = await reader.read(t_is("ROOM_SUBSCRIBED"), within=120)
    assert sub is not None, f"closed with {reader.closed} after {len(reader.frames)} frames"
    assert sub["d"] == {"room_id": str(room.id), "seq": acked[-1], "recovered": True}
    assert reader.seqs[str(room.id)] == acked
    reply = await reader.read(lambda f: f["op"] == 13)
    assert reply is not None and reply["d"]["ok"] is True


@pytest.mark.timeout(180)
@pytest.mark.parametrize("with_rooms", [True, False])
async def test_a_cut_mid_replay_keeps_the_position_at_what_the_client_acknowledged(
    real: Real, with_rooms: bool
) -> None:
    """The client drops the connection after reading part of the replay; the next RESUME
    continues exactly where it stopped, whether it sends ``rooms`` or relies on the saved
    state (which must hold its acknowledged position, not the position the replay reached)."""
    gw = await real.gateway()
    alice, _ = await real.user("alice")
    bob, btok = await real.user("bob")
    room = await real.core.chat.create_room(alice.id, "busy", [bob.id])
    sid, last_s = await _away(gw, btok)
    acked = await real.send(alice, room, 600, BIG, "m")
    got: list[int] = []
    seq = last_s
    for attempt in range(10):
        rooms = {str(room.id): got[-1] if got else 2} if with_rooms else None
        reader = await _resume(gw, btok, sid, seq, rooms)
        stop_at = 2 + len(got) + 150  # read 150 more, then drop the connection

        def stop(f: Frame, stop_at: int = stop_at) -> bool:
            return f.get("t") == "RESUMED" or (is_msg(f) and f["d"]["seq"] >= stop_at)

        done = await reader.read(stop, within=60)
        assert reader.frames and reader.frames[0]["op"] != 9, f"attempt {attempt}: invalid"
        got += reader.seqs.get(str(room.id), [])
        seq = reader.client.last_s or seq
        if done is not None and done.get("t") == "RESUMED":
            break
        # Tell the server what was received, let a periodic save run, then drop the socket.
        await reader.client.send(1, seq)
        await asyncio.sleep(1.2)
        await reader.client.ws.close(4000)
        await asyncio.sleep(0.2)
    assert got == acked  # nothing lost, nothing repeated, in order, across the cuts


# ---------------------------------------------------------------------------------------------
# RESUME is fenced
# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
async def test_concurrent_resumes_of_one_session_leave_exactly_one_connection(real: Real) -> None:
    gw1, gw2 = await real.gateway(), await real.gateway()
    alice, _ = await real.user("alice")
    bob, btok = await real.user("bob")
    room = await real.core.chat.create_room(alice.id, "r", [bob.id])
    sid, last_s = await _away(gw1, btok)
    await real.send(alice, room, 5, "hi", "m")
    readers = [
        await _resume(gw1, btok, sid, last_s, {str(room.id): 2}),
        await _resume(gw2, btok, sid, last_s, {str(room.id): 2}),
    ]
    outcomes = await asyncio.gather(
        *(r.read(lambda f: f.get("t") == "RESUMED" or f["op"] == 9, within=10) for r in readers)
    )
    await asyncio.sleep(1.5)  # periodic saves: a second holder of one epoch would stay
    alive = []
    for reader, outcome in zip(readers, outcomes, strict=True):
        if outcome is None or outcome["op"] == 9:
            assert outcome is not None or reader.closed == 4000
            continue
        await reader.client.send(1, reader.client.last_s)
        with contextlib.suppress(Exception):
            await reader.client.until(lambda f: f["op"] == 11, wait_s=2)
            alive.append(reader)
    assert len(alive) == 1
    await real.send(alice, room, 1, "after", "a")
    await alive[0].read(is_msg, within=10)
    assert alive[0].seqs[str(room.id)][-1] == 8


@pytest.mark.timeout(60)
async def test_resume_with_someone_elses_session_id_does_not_touch_their_socket(
    real: Real,
) -> None:
    gw = await real.gateway()
    alice, _ = await real.user("alice")
    bob, btok = await real.user("bob")
    _, mtok = await real.user("mallory")
    room = await real.core.chat.create_room(alice.id, "r", [bob.id])
    b = await Client.open(gw.port)
    ready = await b.identify(btok)
    await b.until(t_is("ROOM_SUBSCRIBED"))
    mallory = await _resume(gw, mtok, ready["d"]["session_id"], 1)
    invalid = await mallory.read(lambda f: f["op"] == 9, within=10)
    assert invalid is not None and invalid["d"] == {"resumable": False}
    await real.send(alice, room, 1, "still here", "s")
    got = await b.until(is_msg)  # bob's socket was not kicked
    assert got["d"]["seq"] == 3


# ---------------------------------------------------------------------------------------------
# Failures during RESUME leave the saved state intact
# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(90)
async def test_a_store_error_mid_resume_loses_no_room(real: Real) -> None:
    alice, _ = await real.user("alice")
    bob, btok = await real.user("bob")
    rooms = [await real.core.chat.create_room(alice.id, f"r{i}", [bob.id]) for i in range(3)]
    gw1 = await real.gateway()
    c = await Client.open(gw1.port)
    ready = await c.identify(btok)
    for _ in rooms:
        await c.until(t_is("ROOM_SUBSCRIBED"))
    await c.send(1, c.last_s)
    await c.until(lambda f: f["op"] == 11)
    await asyncio.sleep(1.2)
    await c.ws.close(4000)
    sid, last_s = ready["d"]["session_id"], c.last_s
    assert last_s is not None
    acked = {str(r.id): await real.send(alice, r, 3, "m", f"m{r.id}-") for r in rooms}
    faulty = FaultyChat(real.core.chat)
    broken = {rooms[1].id}
    faulty.fail_get_room = lambda actor, room_id: room_id in broken
    gw2 = await real.gateway(chat=faulty)
    first = await _resume(gw2, btok, sid, last_s)
    outcome = await first.read(lambda f: f.get("t") == "RESUMED" or f["op"] == 9, within=10)
    assert outcome is None and first.closed == 4000  # a transient error: retry later
    broken.clear()
    again = await _resume(gw2, btok, sid, last_s)
    assert await again.read(t_is("RESUMED"), within=10) is not None
    assert again.seqs == acked  # every room, exactly its missed events


@pytest.mark.timeout(90)
async def test_a_save_during_a_slow_resume_keeps_every_room(real: Real) -> None:
    """Periodic saves (and a TAKE) can run while a RESUME is still catching its rooms up:
    what they save must already hold every room of the session."""
    alice, _ = await real.user("alice")
    bob, btok = await real.user("bob")
    rooms = [await real.core.chat.create_room(alice.id, f"r{i}", [bob.id]) for i in range(3)]
    gw1 = await real.gateway()
    sid, last_s = await _away(gw1, btok)
    for r in rooms:
        await real.send(alice, r, 300, "m", f"m{r.id}-")  # past the ring: read from the Store
    faulty = FaultyChat(real.core.chat)
    faulty.events_after_delay_s = 1.0
    gw2 = await real.gateway(chat=faulty)
    reader = await _resume(gw2, btok, sid, last_s)
    reading = asyncio.create_task(reader.read(t_is("RESUMED"), within=60))
    await asyncio.sleep(2.5)  # the first room is being replayed; saves ran meanwhile
    raw = await real.core.registry.load_session(sid)
    assert raw is not None
    blob = load_blob(raw)
    assert blob is not None
    assert set(blob.acked) == {r.id for r in rooms}
    assert await reading is not None


# ---------------------------------------------------------------------------------------------
# Leaving ends the room on every path
# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.parametrize("path", ["resume", "subscribe"])
async def test_a_leave_during_catch_up_ends_the_room(real: Real, path: str) -> None:
    alice, _ = await real.user("alice")
    bob, btok = await real.user("bob")
    room = await real.core.chat.create_room(alice.id, "r", [bob.id])
    gw1 = await real.gateway()
    faulty = FaultyChat(real.core.chat)
    gw2 = await real.gateway(chat=faulty)
    sid, last_s = await _away(gw1, btok)
    await real.send(alice, room, 1200, "m", "m")  # past the ring: Store pages
    faulty.events_after_delay_s = 0.4
    if path == "resume":
        reader = await _resume(gw2, btok, sid, last_s, {str(room.id): 2})
        end = t_is("RESUMED")
    else:
        c = await Client.open(gw2.port)
        await c.identify(btok, subscribe=[])
        await c.request(4, {"rooms": [{"room_id": str(room.id), "after_seq": 2}]})
        reader, end = Reader(c), (lambda f: f["op"] == 13)
    reading = asyncio.create_task(reader.read(end, within=60))
    await asyncio.sleep(0.6)  # the catch-up is reading the Store
    await real.core.chat.leave_room(bob.id, room.id)
    secrets = await real.send(alice, room, 3, "secret", "s")
    assert await reading is not None
    await asyncio.sleep(1.5)
    with contextlib.suppress(AssertionError):
        await reader.read(lambda f: False, within=1.5)
    leaves = [f for f in reader.frames if f.get("t") == "MEMBER_LEAVE"]
    assert [f["d"]["user_id"] for f in leaves] == [str(bob.id)]
    assert not set(secrets) & set(reader.seqs.get(str(room.id), []))
    assert max(reader.seqs[str(room.id)]) < leaves[0]["d"]["seq"]


# ---------------------------------------------------------------------------------------------
# Positions a client cannot hold
# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
async def test_a_position_beyond_the_room_is_clamped_not_skipped(real: Real) -> None:
    gw = await real.gateway()
    alice, _ = await real.user("alice")
    bob, btok = await real.user("bob")
    room = await real.core.chat.create_room(alice.id, "r", [bob.id])  # last seq 2
    c = await Client.open(gw.port)
    await c.identify(btok, subscribe=[])
    await c.request(4, {"rooms": [{"room_id": str(room.id), "after_seq": 50}]})
    sub = await c.until(t_is("ROOM_SUBSCRIBED"))
    assert sub["d"] == {"room_id": str(room.id), "seq": 2, "recovered": False}
    acked = await real.send(alice, room, 3, "hi", "m")
    assert [(await c.until(is_msg))["d"]["seq"] for _ in acked] == acked


@pytest.mark.timeout(60)
async def test_a_resume_position_beyond_the_room_is_clamped(real: Real) -> None:
    gw = await real.gateway()
    alice, _ = await real.user("alice")
    bob, btok = await real.user("bob")
    room = await real.core.chat.create_room(alice.id, "r", [bob.id])
    sid, last_s = await _away(gw, btok)
    reader = await _resume(gw, btok, sid, last_s, {str(room.id): 40})
    assert await reader.read(t_is("RESUMED"), within=10) is not None
    acked = await real.send(alice, room, 3, "hi", "m")
    await reader.read(lambda f: is_msg(f) and f["d"]["seq"] == acked[-1], within=10)
    assert reader.seqs[str(room.id)] == acked


# ---------------------------------------------------------------------------------------------
# Registry outage: the final save of a closed connection is kept until it lands
# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
async def test_same_gateway_resume_after_a_failed_final_save_is_exact(real: Real) -> None:
    gw = await real.gateway()
    alice, _ = await real.user("alice")
    bob, btok = await real.user("bob")
    room = await real.core.chat.create_room(alice.id, "r", [bob.id])
    c = await Client.open(gw.port)
    ready = await c.identify(btok)
    await c.until(t_is("ROOM_SUBSCRIBED"))
    first = await real.send(alice, room, 5, "a", "a")
    for _ in first:
        await c.until(is_msg)
    await c.send(1, c.last_s)
    await asyncio.sleep(1.5)  # saved with seq 7 acknowledged
    await engine_control.stop("redis")
    try:
        second = await real.send(alice, room, 5, "b", "b")
        for _ in second:
            await c.until(is_msg)
        await c.send(1, c.last_s)
        await c.until(lambda f: f["op"] == 11)
        await c.ws.close(4000)  # the final save fails: Redis is down
        await asyncio.sleep(0.5)
    finally:
        await engine_control.start("redis")
    third = await real.send(alice, room, 2, "c", "c")
    assert c.last_s is not None
    reader = await _resume(gw, btok, ready["d"]["session_id"], c.last_s)
    assert await reader.read(t_is("RESUMED"), within=30) is not None
    if third[-1] not in reader.seqs.get(str(room.id), []):
        await reader.read(lambda f: is_msg(f) and f["d"]["seq"] == third[-1], within=10)
    assert reader.seqs[str(room.id)] == third  # the 5 received before the close: not again
