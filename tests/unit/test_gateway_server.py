"""The gateway end to end: real websockets clients, the real AuthService/ChatService on a SQLite
store, memory log and registry (shardchat.runtime.Core), one or more in-process gateways."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgspec
import pytest

from chat_core.models import RoomEvent
from chat_core.service import ChatService
from gateway import metrics
from gateway.server import Gateway
from gateway.session import load_blob
from shardchat.registry import gateway_control_channel
from tests.gateway_client import Client, Cluster, Frame, is_msg

METRICS_MD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "METRICS.md"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    await c.start()
    yield c
    await c.close()


async def test_lifecycle_identify_send_and_fanout(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    alice, atok = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.room(alice, bob, name="general")
    a = await Client.open(gw.port)
    b = await Client.open(gw.port)
    ready = await a.identify(atok)
    assert ready["s"] == 1 and list(ready) == ["op", "t", "s", "id", "d"]
    d = ready["d"]
    assert d["user"] == {"id": str(alice.id), "username": alice.username, "status": "online"}
    assert d["resume_url"] == gw.url
    assert d["rooms"] == [{"id": str(room.id), "name": "general", "last_seq": 2}]
    sub = await a.recv()
    assert sub["t"] == "ROOM_SUBSCRIBED" and sub["s"] == 2
    assert sub["d"] == {"room_id": str(room.id), "seq": 2, "recovered": False}
    await b.identify(btok)
    await b.recv()  # ROOM_SUBSCRIBED

    rid = await a.request(8, {"room_id": str(room.id), "content": "hi", "nonce": "n1"})
    reply = await a.until(lambda f: f["op"] == 13)
    assert reply["id"] == rid and reply["d"]["ok"] is True
    result = reply["d"]["result"]
    assert result["content"] == "hi" and result["seq"] == 3 and result["room_id"] == str(room.id)
    got = await b.until(is_msg)
    assert got["d"] == result and got["s"] == 3
    echo = await a.until(is_msg)
    assert echo["d"]["id"] == result["id"]

    # idempotent retry: same result, no second event
    await a.request(8, {"room_id": str(room.id), "content": "hi", "nonce": "n1"})
    again = await a.until(lambda f: f["op"] == 13)
    assert again["d"]["result"]["id"] == result["id"]

    # heartbeat ack, typing to the other member only
    await a.send(1, a.last_s)
    assert (await a.until(lambda f: f["op"] == 11))["d"] is None
    await a.send(12, {"room_id": str(room.id)})
    typing = await b.until(lambda f: f.get("t") == "TYPING_START")
    assert typing["d"] == {"room_id": str(room.id), "user_id": str(alice.id)}

    # business errors are REPLY errors, not closes
    other = await cluster.room(bob, name="other")
    await a.request(8, {"room_id": str(other.id), "content": "x", "nonce": "n2"})
    err = await a.until(lambda f: f["op"] == 13)
    assert err["d"]["ok"] is False and err["d"]["error"]["code"] == "NOT_FOUND"  # as unknown
    await a.request(8, {"room_id": str(room.id), "content": "x", "nonce": "n" * 33})
    err = await a.until(lambda f: f["op"] == 13)
    assert err["d"]["error"]["code"] == "BAD_USER_INPUT"
    await a.ws.close()
    await b.ws.close()


async def test_many_messages_arrive_in_seq_order_without_gaps(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    alice, _ = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.room(alice, bob)
    b = await Client.open(gw.port)
    await b.identify(btok)
    await b.recv()
    await asyncio.gather(
        *(cluster.core.chat.send_message(alice.id, room.id, f"m{i}", f"n{i}") for i in range(50))
    )
    seqs = [(await b.until(is_msg))["d"]["seq"] for _ in range(50)]
    assert seqs == list(range(3, 53))
    await b.ws.close()


async def test_gap_in_log_is_filled_from_store(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    alice, _ = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.room(alice, bob)
    b = await Client.open(gw.port)
    await b.identify(btok)
    await b.recv()
    chat = cluster.core.chat
    publish = chat.on_commit

    def lagging(events: Sequence[RoomEvent]) -> None:  # stored, not published yet
        return None

    chat.on_commit = lagging
    await chat.send_message(alice.id, room.id, "lost1", "l1")
    await chat.send_message(alice.id, room.id, "lost2", "l2")
    chat.on_commit = publish
    before = metrics.GAP_FILLS._value.get()
    await chat.send_message(alice.id, room.id, "live", "l3")
    got = [(await b.until(is_msg))["d"]["content"] for _ in range(3)]
    assert got == ["lost1", "lost2", "live"]
    assert metrics.GAP_FILLS._value.get() > before
    await b.ws.close()


async def test_subscribe_after_seq_recovers_exactly(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    alice, atok = await cluster.user("alice")
    room = await cluster.room(alice)
    for i in range(10):
        await cluster.core.chat.send_message(alice.id, room.id, f"m{i}", f"n{i}")  # seq 2..11
    a = await Client.open(gw.port)
    await a.identify(atok, subscribe=[])
    rid = await a.request(4, {"rooms": [{"room_id": str(room.id), "after_seq": 6}]})
    frames = [await a.recv() for _ in range(7)]
    assert [f["d"]["seq"] for f in frames[:5]] == [7, 8, 9, 10, 11]
    assert frames[5]["t"] == "ROOM_SUBSCRIBED"
    assert frames[5]["d"] == {"room_id": str(room.id), "seq": 11, "recovered": True}
    assert frames[6]["op"] == 13 and frames[6]["id"] == rid and frames[6]["d"]["ok"]
    await cluster.core.chat.send_message(alice.id, room.id, "live", "live")
    assert (await a.until(is_msg))["d"]["seq"] == 12
    # unsubscribe: no more events
    await a.send(5, {"rooms": [str(room.id)]})
    await cluster.core.chat.send_message(alice.id, room.id, "after", "after")
    await a.send(1, None)
    assert (await a.recv())["op"] == 11
    await a.ws.close()


async def _resume_frames(
    gw_port: int, token: str, sid: str, seq: int
) -> tuple[Client, list[Frame]]:
    c = await Client.open(gw_port)
    return c, await c.resume(token, sid, seq)


async def test_resume_on_another_gateway_gets_exactly_the_missed(cluster: Cluster) -> None:
    gw1 = await cluster.gateway()
    gw2 = await cluster.gateway()
    alice, _ = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.room(alice, bob)
    chat = cluster.core.chat
    b = await Client.open(gw1.port)
    ready = await b.identify(btok)
    sid = ready["d"]["session_id"]
    await b.recv()
    await chat.send_message(alice.id, room.id, "seen", "s0")
    assert (await b.until(is_msg))["d"]["seq"] == 3
    last_s = b.last_s
    assert last_s is not None
    await b.ws.close(4000)  # a resumable close
    await asyncio.sleep(0.1)
    for i in range(100):
        await chat.send_message(alice.id, room.id, f"m{i}", f"n{i}")
    b2, frames = await _resume_frames(gw2.port, btok, sid, last_s)
    msgs = [f for f in frames if is_msg(f)]
    assert [m["d"]["seq"] for m in msgs] == list(range(4, 104))
    assert [f["s"] for f in frames] == list(range(last_s + 1, last_s + 102))
    assert frames[-1]["d"] == {"replayed": 100}
    await chat.send_message(alice.id, room.id, "live", "live")
    assert (await b2.until(is_msg))["d"]["seq"] == 104
    # the session is now on gw2; a normal close ends it
    await b2.ws.close(1000)
    await asyncio.sleep(0.1)
    b3, frames = await _resume_frames(gw1.port, btok, sid, 1)
    assert frames[-1] == {"op": 9, "t": None, "s": None, "id": None, "d": {"resumable": False}}
    await b3.ws.close()


async def test_resume_kicks_the_old_connection_and_continues_exactly(cluster: Cluster) -> None:
    gw1 = await cluster.gateway()
    gw2 = await cluster.gateway()
    alice, _ = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.room(alice, bob)
    chat = cluster.core.chat
    old = await Client.open(gw1.port)
    sid = (await old.identify(btok))["d"]["session_id"]
    await old.recv()
    for i in range(5):
        await chat.send_message(alice.id, room.id, f"a{i}", f"a{i}")
    got = [(await old.until(is_msg))["d"]["seq"] for _ in range(3)]  # reads only 3 of 5
    assert got == [3, 4, 5]
    seen = old.last_s
    assert seen is not None
    # The old socket is a zombie to the client: it RESUMEs on gw2 while gw1 still holds it.
    new, frames = await _resume_frames(gw2.port, btok, sid, seen)
    assert [f["d"]["seq"] for f in frames if is_msg(f)] == [6, 7]
    assert await old.close_code() == 4000  # kicked
    for i in range(3):
        await chat.send_message(alice.id, room.id, f"b{i}", f"b{i}")
    assert [(await new.until(is_msg))["d"]["seq"] for _ in range(3)] == [8, 9, 10]
    # Same gateway: a RESUME of a session live here kicks the local holder too.
    again, frames = await _resume_frames(gw2.port, btok, sid, new.last_s or 0)
    assert frames[-1]["d"] == {"replayed": 0}
    assert await new.close_code() == 4000
    await again.ws.close()


async def test_resume_ahead_of_a_released_session_is_invalid(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    _, tok = await cluster.user("u")
    c = await Client.open(gw.port)
    sid = (await c.identify(tok))["d"]["session_id"]
    await c.ws.close(4000)
    await asyncio.sleep(0.1)
    c2, frames = await _resume_frames(gw.port, tok, sid, 50)
    assert frames[-1]["op"] == 9
    await c2.ws.close()


async def test_resume_unknown_session_is_invalid(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    _, tok = await cluster.user("u")
    c = await Client.open(gw.port)
    frames = await c.resume(tok, "nope", 3)
    assert frames == [{"op": 9, "t": None, "s": None, "id": None, "d": {"resumable": False}}]
    await c.send(2, {"token": tok})  # the connection stays usable: IDENTIFY instead
    assert (await c.recv())["t"] == "READY"
    await c.ws.close()


async def test_a_save_that_meets_a_newer_owner_kicks_its_connection(cluster: Cluster) -> None:
    """This gateway missed the TAKE: its next save meets a higher epoch, is refused by the
    Registry's compare-and-set, and its own connection is closed with 4000; the newer state
    stays as it is."""
    gw = await cluster.gateway()
    _, tok = await cluster.user("owner")
    c = await Client.open(gw.port)
    sid = (await c.identify(tok))["d"]["session_id"]
    session = gw.hub.sessions[sid]
    registry = cluster.core.registry
    newer = b"saved by the gateway the client resumed on"
    assert await registry.save_session_if(sid, newer, session.epoch + 1, 60)
    await gw.save_now(session)
    assert await c.close_code() == 4000
    assert sid not in gw.hub.sessions
    await asyncio.sleep(0.1)  # the connection's end must not overwrite it either
    assert await registry.load_session(sid) == newer


async def test_an_idle_session_is_kept_alive_by_refreshes_and_only_while_connected(
    cluster: Cluster,
) -> None:
    """Unchanged sessions are re-saved every resume_window_s / 3 (from a wheel, not a scan of
    every session each second), so an idle connection's state never expires; a closed one is
    no longer refreshed."""
    gw = await cluster.gateway(resume_window_s=1.5, heartbeat_interval_ms=2000)
    _, tok = await cluster.user("idle")
    registry = cluster.core.registry
    c = await Client.open(gw.port)
    sid = (await c.identify(tok))["d"]["session_id"]
    first = load_blob(await registry.load_session(sid) or b"")
    assert first is not None
    for _ in range(3):  # 2.1 s > the 1.5 s window: alive only because it was refreshed
        await asyncio.sleep(0.7)
        await c.send(1, None)
        assert (await c.recv())["op"] == 11
    later = load_blob(await registry.load_session(sid) or b"")
    assert later is not None and later.owner == gw.gateway_id
    assert later.expires_at_ms > first.expires_at_ms
    assert len(gw._refresh) == 1
    await c.ws.close(4000)  # resumable: saved once as released, then left to expire
    await asyncio.sleep(0.2)
    assert len(gw._refresh) == 0
    await asyncio.sleep(1.6)
    assert await registry.load_session(sid) is None


async def test_session_saves_read_nothing_back(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saving while live and on close is one conditional write each: no read round trip."""
    gw = await cluster.gateway()
    _, tok = await cluster.user("owner")
    registry = cluster.core.registry
    reads: list[str] = []
    load = registry.load_session

    async def counting_load(session_id: str) -> bytes | None:
        reads.append(session_id)
        return await load(session_id)

    monkeypatch.setattr(registry, "load_session", counting_load)
    c = await Client.open(gw.port)
    sid = (await c.identify(tok))["d"]["session_id"]  # saved at once (owner = gw)
    await gw.save_now(gw.hub.sessions[sid])
    await c.ws.close(4000)  # resumable: saved as released
    await asyncio.sleep(0.1)
    assert reads == []
    raw = await load(sid)
    blob = load_blob(raw) if raw is not None else None
    assert blob is not None and blob.owner == "" and blob.epoch == 0


async def test_a_stale_save_in_flight_spares_the_session_resumed_on_the_same_gateway(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save of the old copy that started before a local RESUME is refused (lower epoch) and
    must not close the NEW connection, which now holds the session id on this gateway."""
    gw = await cluster.gateway()
    _, tok = await cluster.user("owner")
    registry = cluster.core.registry
    old_conn = await Client.open(gw.port)
    sid = (await old_conn.identify(tok))["d"]["session_id"]
    old = gw.hub.sessions[sid]
    save = registry.save_session_if
    gate = asyncio.Event()
    held: list[int] = []

    async def slow_first_save(session_id: str, blob: bytes, epoch: int, ttl_s: float) -> bool:
        if not held:  # hold only the first call: the old copy's periodic save
            held.append(epoch)
            await gate.wait()
        return await save(session_id, blob, epoch, ttl_s)

    monkeypatch.setattr(registry, "save_session_if", slow_first_save)
    in_flight = asyncio.create_task(gw.save_now(old))
    await asyncio.sleep(0.05)
    assert held == [0]
    new_conn, frames = await _resume_frames(gw.port, tok, sid, old_conn.last_s or 0)
    assert frames[-1]["t"] == "RESUMED"
    assert await old_conn.close_code() == 4000
    gate.set()
    await in_flight
    assert gw.hub.sessions[sid].epoch == 1
    await new_conn.send(1, new_conn.last_s)
    assert (await new_conn.until(lambda f: f["op"] == 11))["op"] == 11  # still connected
    await new_conn.ws.close()


async def test_member_leave_ends_the_subscription(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    alice, _ = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.room(alice, bob)
    b = await Client.open(gw.port)
    await b.identify(btok)
    await b.recv()
    await cluster.core.chat.leave_room(bob.id, room.id)
    leave = await b.until(lambda f: f.get("t") == "MEMBER_LEAVE")
    assert leave["d"]["user_id"] == str(bob.id)
    await cluster.core.chat.send_message(alice.id, room.id, "secret", "s")
    await b.send(1, None)
    assert (await b.recv())["op"] == 11  # the message never came
    await b.ws.close()


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (["not json"], 4002),
        (['{"op": 2}'], 4002),  # IDENTIFY without a token
        (['{"op": 8, "d": {"room_id": "1", "content": "x", "nonce": "n"}}'], 4003),
        (['{"op": 99}'], 4005),
        (['{"op": 0}'], 4005),  # a server op from a client
        (['{"op": 2, "d": {"token": "forged"}}'], 4501),
        (["x" * 20000], 4502),
        (["x" * 200_000], 4502),  # far over the limit: refused from its header, still 4502
    ],
)
async def test_close_codes_before_identify(cluster: Cluster, frames: list[str], code: int) -> None:
    gw = await cluster.gateway()
    c = await Client.open(gw.port)
    await c.recv()
    for f in frames:
        await c.ws.send(f)
    assert await c.close_code() == code


async def test_already_identified_4004_and_rate_limit_4008(cluster: Cluster) -> None:
    gw = await cluster.gateway(ops_burst=5, ops_per_window=5, ops_window_s=60.0)
    alice, tok = await cluster.user("u")
    room = await cluster.room(alice)
    c = await Client.open(gw.port)
    await c.identify(tok)
    await c.send(2, {"token": tok})
    assert await c.close_code() == 4004
    c = await Client.open(gw.port)
    await c.identify(tok)  # one token
    for _ in range(10):  # heartbeats never count against the limit
        await c.send(1, None)
    for _ in range(5):  # 4 typing ops fit, the 5th is over
        await c.send(12, {"room_id": str(room.id)})
    assert await c.close_code() == 4008


async def test_identify_flood_per_ip_4008(cluster: Cluster) -> None:
    gw = await cluster.gateway(identify_per_window=2, identify_window_s=60.0)
    _, tok = await cluster.user("u")
    for _ in range(2):
        c = await Client.open(gw.port)
        await c.identify(tok)
        await c.ws.close()
    c = await Client.open(gw.port)
    await c.recv()
    await c.send(2, {"token": tok})
    assert await c.close_code() == 4008


async def test_query_and_origin_checks(cluster: Cluster) -> None:
    gw = await cluster.gateway(allowed_origins=("https://chat.example",))
    for query in ("?v=2&encoding=json", "?v=1&encoding=xml", "?v=1&encoding="):
        c = await Client.open(gw.port, query, origin="https://chat.example")
        assert await c.close_code() == 4504, query
    c = await Client.open(gw.port, "?v=1&encoding=json", origin="https://evil.example")
    assert await c.close_code() == 4503
    c = await Client.open(gw.port, "", origin="https://chat.example")  # defaults: v1, json
    assert (await c.recv())["op"] == 10
    await c.ws.close()


async def test_heartbeat_timeout_4001(cluster: Cluster) -> None:
    gw = await cluster.gateway(heartbeat_interval_ms=200)
    c = await Client.open(gw.port)
    hello = await c.recv()
    assert hello["d"] == {"heartbeat_interval_ms": 200, "gateway_id": gw.gateway_id}
    assert await c.close_code() == 4001


async def test_heartbeating_connection_outlives_deadlines_a_silent_one_beside_it_does_not(
    cluster: Cluster,
) -> None:
    """The sweep looks only at connections due (a deadline wheel): one whose deadline keeps
    moving is filed again each time, never closed; a silent one is closed within a sweep."""
    gw = await cluster.gateway(heartbeat_interval_ms=200)  # timeout 300 ms, sweep 50 ms
    alive = await Client.open(gw.port)
    silent = await Client.open(gw.port)
    await alive.recv()
    await silent.recv()
    opened = time.monotonic()
    for _ in range(12):  # 1.2 s: four timeouts
        await alive.send(1, None)
        assert (await alive.recv())["op"] == 11
        await asyncio.sleep(0.1)
    assert await silent.close_code() == 4001
    assert time.monotonic() - opened >= 0.3
    assert alive.ws.close_code is None
    assert len(gw._deadlines) == 1  # the closed one is forgotten
    await alive.ws.close()


async def test_msgpack_encoding(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    alice, tok = await cluster.user("alice")
    room = await cluster.room(alice)
    c = await Client.open(gw.port, "?v=1&encoding=msgpack")
    await c.identify(tok)
    assert (await c.recv())["t"] == "ROOM_SUBSCRIBED"
    await cluster.core.chat.send_message(alice.id, room.id, "hi", "n")
    raw = await c.ws.recv()
    assert isinstance(raw, bytes)  # binary frames for msgpack
    frame = msgspec.msgpack.decode(raw)
    assert frame["t"] == "MESSAGE_CREATE" and frame["s"] == 3 and frame["d"]["content"] == "hi"
    await c.ws.close()


async def test_slow_consumer_is_cut_while_others_keep_receiving(cluster: Cluster) -> None:
    gw = await cluster.gateway(outbound_buffer_bytes=64 * 1024, heartbeat_interval_ms=60_000)
    alice, atok = await cluster.user("alice")
    slow_u, stok = await cluster.user("slow")
    room = await cluster.room(alice, slow_u)
    fast = await Client.open(gw.port)
    await fast.identify(atok)
    await fast.recv()
    # max_queue=1: the slow client stops reading after READY; the socket buffers fill up.
    slow = await Client.open(gw.port, max_queue=1)
    await slow.identify(stok)
    await slow.recv()
    cuts = metrics.SLOW_CONSUMER_CUTS._value.get()
    big = "x" * 3900
    chat = cluster.core.chat
    for i in range(0, 4000, 5):
        await asyncio.gather(
            *(chat.send_message(alice.id, room.id, big, f"n{i + j}") for j in range(5))
        )
        while True:  # the fast client keeps up
            try:
                await asyncio.wait_for(fast.ws.recv(), 0.05)
            except TimeoutError:
                break
        if metrics.SLOW_CONSUMER_CUTS._value.get() > cuts:
            break
    assert metrics.SLOW_CONSUMER_CUTS._value.get() == cuts + 1
    await chat.send_message(alice.id, room.id, "after", "after")
    assert await fast.until(lambda f: f.get("d", {}).get("content") == "after")
    assert await slow.close_code(wait_s=10) == 4010
    await fast.ws.close()


async def test_drain_sends_reconnect_then_4011(cluster: Cluster) -> None:
    gw1 = await cluster.gateway()
    gw2 = await cluster.gateway()
    _, tok = await cluster.user("u")
    c = await Client.open(gw1.port)
    await c.identify(tok)
    await cluster.core.registry.publish(gateway_control_channel(gw1.gateway_id), b"drain")
    rec = await c.until(lambda f: f["op"] == 7)
    assert rec["d"] == {"url": gw2.url}
    assert await c.close_code() == 4011


def _get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as resp:
        return int(resp.status), resp.read().decode()


def gateway_metric_names() -> list[str]:
    """Every metric name of the Gateway table of deploy/grafana/METRICS.md."""
    text = METRICS_MD.read_text()
    section = text.split("## Gateway", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(shardchat_gateway_[a-z_]+)`", section, flags=re.M)


async def test_http_probes_and_every_contract_metric_is_exported(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    alice, tok = await cluster.user("alice")
    room = await cluster.room(alice)
    c = await Client.open(gw.port)
    await c.identify(tok)
    await c.recv()
    await cluster.core.chat.send_message(alice.id, room.id, "hi", "n")
    await c.until(is_msg)
    await asyncio.sleep(0.3)  # the consumer samples partition lag right after assigning
    assert await asyncio.to_thread(_get, gw.port, "/healthz") == (200, "ok\n")
    assert (await asyncio.to_thread(_get, gw.port, "/readyz"))[0] == 200
    status, body = await asyncio.to_thread(_get, gw.port, "/metrics")
    assert status == 200
    names = gateway_metric_names()
    assert len(names) >= 17
    exported = set(
        re.findall(
            r"^(shardchat_gateway_[a-z_]+?)(?:_bucket|_count|_sum|_created)?[{ ]", body, flags=re.M
        )
    )
    missing = [n for n in names if n not in exported]
    assert not missing, missing
    assert re.search(r'^shardchat_gateway_partition_lag\{partition="\d+"\} ', body, re.M)
    await c.ws.close()


# --- RESUME ``rooms`` (client-held positions) and saves on subscription changes --------------


async def _until_saved(cluster: Cluster, sid: str) -> None:
    """Until the Registry holds the session (IDENTIFY saves it once its rooms are set up)."""
    for _ in range(200):
        if await cluster.core.registry.load_session(sid) is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("session never saved")


def _crash(monkeypatch: pytest.MonkeyPatch, gw: Gateway) -> None:
    """From now on ``gw`` acts, toward the Registry, like a SIGKILLed gateway: it saves nothing
    and never answers a TAKE, so a RESUME elsewhere gets its last saved (stale) state. Its
    sockets stay open; the test client simply stops reading the old one."""

    async def nothing(*_args: object) -> None:
        return None

    monkeypatch.setattr(gw, "_save", nothing)
    monkeypatch.setattr(gw, "_release", nothing)


async def _resume_with(c: Client, token: str, sid: str, seq: int, rooms: object) -> list[Frame]:
    """Like ``Client.resume``, with the RESUME ``rooms`` extension (omitted when None)."""
    assert (await c.recv())["op"] == 10
    d: dict[str, object] = {"token": token, "session_id": sid, "seq": seq}
    if rooms is not None:
        d["rooms"] = rooms
    await c.send(6, d)
    frames: list[Frame] = []
    while True:
        frame = await c.recv()
        frames.append(frame)
        if frame.get("t") == "RESUMED" or frame["op"] == 9:
            return frames


@pytest.mark.parametrize("send_rooms", [True, False], ids=["rooms", "no-rooms"])
async def test_resume_after_a_crash_replays_from_the_clients_room_positions(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, send_rooms: bool
) -> None:
    """The crashed gateway's last save is older than what the client got. With RESUME
    ``rooms`` the replay starts after the client's own position: no duplicate, no gap. Without
    it, it starts at the saved position and repeats what the client has (v1, documented)."""
    gw1 = await cluster.gateway()
    gw2 = await cluster.gateway()
    alice, _ = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.room(alice, bob)  # seqs 1, 2
    chat = cluster.core.chat
    b = await Client.open(gw1.port)
    sid = (await b.identify(btok))["d"]["session_id"]
    assert (await b.recv())["d"]["seq"] == 2  # ROOM_SUBSCRIBED
    await _until_saved(cluster, sid)
    _crash(monkeypatch, gw1)
    for i in range(5):
        await chat.send_message(alice.id, room.id, f"a{i}", f"a{i}")
    assert [(await b.until(is_msg))["d"]["seq"] for _ in range(5)] == [3, 4, 5, 6, 7]
    seen = b.last_s
    assert seen is not None
    for i in range(3):  # written to the dying socket, never read by the client
        await chat.send_message(alice.id, room.id, f"b{i}", f"b{i}")
    c = await Client.open(gw2.port)
    frames = await _resume_with(c, btok, sid, seen, {str(room.id): 7} if send_rooms else None)
    assert frames[-1]["t"] == "RESUMED"
    replayed = [f["d"]["seq"] for f in frames if is_msg(f)]
    assert replayed == ([8, 9, 10] if send_rooms else [3, 4, 5, 6, 7, 8, 9, 10])
    assert [f["s"] for f in frames] == list(range(seen + 1, seen + 2 + len(replayed)))
    await chat.send_message(alice.id, room.id, "live", "live")
    assert (await c.until(is_msg))["d"]["seq"] == 11  # live after the replay, nothing between
    await c.ws.close()
    await b.ws.close()


async def test_resume_rooms_bring_back_a_room_the_crashed_gateway_never_saved(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SUBSCRIBE, then a crash before its save: the saved session lacks the room. A listed
    room is subscribed again (membership checked: a room the user isn't in is ignored)."""
    gw1 = await cluster.gateway()
    gw2 = await cluster.gateway()
    alice, _ = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.room(alice, bob)  # seqs 1, 2
    foreign = await cluster.room(alice)  # bob is not a member
    chat = cluster.core.chat
    b = await Client.open(gw1.port)
    sid = (await b.identify(btok, subscribe=[]))["d"]["session_id"]
    await _until_saved(cluster, sid)
    _crash(monkeypatch, gw1)  # the SUBSCRIBE's save below never reaches the Registry
    await b.request(4, {"rooms": [{"room_id": str(room.id), "after_seq": 2}]})
    assert (await b.until(lambda f: f["op"] == 13))["d"]["ok"] is True
    await chat.send_message(alice.id, room.id, "seen", "seen")
    assert (await b.until(is_msg))["d"]["seq"] == 3
    seen = b.last_s
    assert seen is not None
    await chat.send_message(alice.id, room.id, "missed", "missed")  # seq 4, never read
    c = await Client.open(gw2.port)
    rooms = {str(room.id): 3, str(foreign.id): 0}
    frames = await _resume_with(c, btok, sid, seen, rooms)
    assert [f["d"]["seq"] for f in frames if is_msg(f)] == [4]
    assert gw2.hub.sessions[sid].rooms == {room.id}
    await chat.send_message(alice.id, room.id, "live", "live")
    assert (await c.until(is_msg))["d"]["seq"] == 5
    await c.ws.close()
    await b.ws.close()


async def test_subscribe_and_unsubscribe_are_saved_before_the_next_op(cluster: Cluster) -> None:
    """Not on the periodic sweep: the SUBSCRIBE REPLY comes once the room is saved, and an
    UNSUBSCRIBE is saved before the next frame is served."""
    gw = await cluster.gateway()
    alice, _ = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.room(alice, bob)
    registry = cluster.core.registry
    b = await Client.open(gw.port)
    sid = (await b.identify(btok, subscribe=[]))["d"]["session_id"]
    await _until_saved(cluster, sid)

    async def saved_rooms() -> set[int]:
        raw = await registry.load_session(sid)
        blob = load_blob(raw) if raw is not None else None
        assert blob is not None
        return set(blob.acked)

    assert await saved_rooms() == set()
    await b.request(4, {"rooms": [{"room_id": str(room.id)}]})
    assert (await b.until(lambda f: f["op"] == 13))["d"]["ok"] is True
    assert await saved_rooms() == {room.id}
    await b.send(5, {"rooms": [str(room.id)]})
    await b.send(1, b.last_s)
    await b.until(lambda f: f["op"] == 11)  # served after the UNSUBSCRIBE (and its save)
    assert await saved_rooms() == set()
    await b.ws.close()


async def test_a_room_listed_twice_or_subscribed_again_is_sent_once(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    alice, atok = await cluster.user("alice")
    room = await cluster.room(alice)
    for i in range(3):
        await cluster.core.chat.send_message(alice.id, room.id, f"m{i}", f"n{i}")  # seq 2..4
    a = await Client.open(gw.port)
    await a.identify(atok, subscribe=[])
    twice = {"room_id": str(room.id), "after_seq": 1}
    await a.request(4, {"rooms": [twice, twice]})
    frames = [await a.recv() for _ in range(5)]
    assert [f["d"]["seq"] for f in frames[:3]] == [2, 3, 4]
    assert frames[3]["t"] == "ROOM_SUBSCRIBED"
    reply = frames[4]
    assert reply["op"] == 13 and len(reply["d"]["result"]["rooms"]) == 1
    # Again, from further back: nothing already sent on this session comes twice.
    await a.request(4, {"rooms": [{"room_id": str(room.id), "after_seq": 0}]})
    again = await a.recv()
    assert again["t"] == "ROOM_SUBSCRIBED"
    assert again["d"] == {"room_id": str(room.id), "seq": 4, "recovered": True}
    assert (await a.recv())["op"] == 13
    await cluster.core.chat.send_message(alice.id, room.id, "live", "live")
    assert (await a.until(is_msg))["d"]["seq"] == 5
    await a.ws.close()


async def test_a_live_burst_over_the_limit_is_paced_for_a_reader_that_keeps_up(
    cluster: Cluster,
) -> None:
    """A batch of a room that alone passes the outbound limit (a big log fetch after a pause)
    is not a slow consumer: the room catches up paced, nothing is cut or lost."""
    gw = await cluster.gateway(outbound_buffer_bytes=64 * 1024)
    alice, _ = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.room(alice, bob)  # seqs 1, 2
    b = await Client.open(gw.port)
    await b.identify(btok)
    await b.until(lambda f: f.get("t") == "ROOM_SUBSCRIBED")
    chat = cluster.core.chat
    msgs = [await chat.send_message(alice.id, room.id, "x" * 3900, f"n{i}") for i in range(60)]
    got = [(await b.until(is_msg))["d"]["seq"] for _ in range(60)]  # live, one by one
    assert got == [m.seq for m in msgs]
    cuts = metrics.SLOW_CONSUMER_CUTS._value.get()
    # A burst the gateway's consumer takes in one fetch (it was paused): stored by a writer
    # whose fast publish path is off, then handed to the gateway as ONE batch.
    quiet = ChatService(cluster.core.store, cluster.settings)
    for i in range(60):
        await quiet.send_message(alice.id, room.id, "y" * 3900, f"b{i}")  # about 240 KiB
    burst = await chat.events_after(room.id, got[-1], 100)
    assert len(burst) == 60
    assert gw.hub.rooms.on_events(burst) == 0  # four times the limit for bob, in one go
    seqs = [(await b.until(is_msg))["d"]["seq"] for _ in range(60)]
    assert seqs == [e.seq for e in burst]
    assert metrics.SLOW_CONSUMER_CUTS._value.get() == cuts
    await b.ws.close()


async def test_a_revoked_login_ends_its_live_session_and_cannot_resume(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    alice, _ = await cluster.user("alice")
    tokens = await cluster.core.auth.login(alice.username, "correct horse battery")
    other = await cluster.core.auth.login(alice.username, "correct horse battery")
    c = await Client.open(gw.port)
    ready = await c.identify(tokens.access_token)
    keep = await Client.open(gw.port)
    await keep.identify(other.access_token)
    assert await cluster.core.auth.logout(tokens.refresh_token)
    assert await c.close_code() == 4501  # terminal: the session ended with it
    again = await Client.open(gw.port)
    await again.recv()
    await again.send(
        6, {"token": tokens.access_token, "session_id": ready["d"]["session_id"], "seq": 1}
    )
    assert await again.close_code() == 4501
    await keep.send(1, None)  # the other login of the same user is untouched
    assert (await keep.until(lambda f: f["op"] == 11))["d"] is None


async def test_identify_limit_keys_on_the_client_behind_a_trusted_proxy(cluster: Cluster) -> None:
    gw = await cluster.gateway(
        identify_per_window=1, identify_window_s=60.0, trusted_proxies=("127.0.0.1",)
    )
    _, tok = await cluster.user("proxied")
    for client in ("203.0.113.1", "203.0.113.2"):  # two clients behind one proxy: one each
        c = await Client.open(gw.port, additional_headers={"X-Forwarded-For": client})
        await c.identify(tok)
        await c.ws.close()
    c = await Client.open(gw.port, additional_headers={"X-Forwarded-For": "203.0.113.1"})
    await c.recv()
    await c.send(2, {"token": tok})
    assert await c.close_code() == 4008  # the first one again


async def test_forwarded_for_over_several_header_lines_is_one_list(cluster: Cluster) -> None:
    """A client's forged X-Forwarded-For line, then the proxy's own: the proxy's hop counts."""
    gw = await cluster.gateway(
        identify_per_window=1, identify_window_s=60.0, trusted_proxies=("127.0.0.1",)
    )
    _, tok = await cluster.user("proxied")

    def lines(forged: str) -> list[tuple[str, str]]:
        return [("X-Forwarded-For", forged), ("X-Forwarded-For", "203.0.113.9")]

    c = await Client.open(gw.port, additional_headers=lines("10.9.9.9"))
    await c.identify(tok)
    await c.ws.close()
    c = await Client.open(gw.port, additional_headers=lines("10.9.9.8"))
    await c.recv()
    await c.send(2, {"token": tok})
    assert await c.close_code() == 4008  # the same client, whatever it forged


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(cluster: Cluster) -> None:
    gw = await cluster.gateway(identify_per_window=1, identify_window_s=60.0)
    _, tok = await cluster.user("proxied")
    c = await Client.open(gw.port, additional_headers={"X-Forwarded-For": "198.51.100.7"})
    await c.identify(tok)
    await c.ws.close()
    c = await Client.open(gw.port, additional_headers={"X-Forwarded-For": "198.51.100.8"})
    await c.recv()
    await c.send(2, {"token": tok})
    assert await c.close_code() == 4008  # both were the peer 127.0.0.1


async def test_read_state_reaches_the_readers_own_sessions_on_every_gateway(
    cluster: Cluster,
) -> None:
    gw1, gw2 = await cluster.gateway(), await cluster.gateway()
    alice, atok = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.room(alice, bob)
    await cluster.core.chat.send_message(alice.id, room.id, "hi @" + bob.username, "n1")
    a, b1, b2 = (
        await Client.open(gw1.port),
        await Client.open(gw1.port),
        await Client.open(gw2.port),
    )
    for client, token in ((a, atok), (b1, btok), (b2, btok)):
        await client.identify(token)
        await client.until(lambda f: f.get("t") == "ROOM_SUBSCRIBED")
    both = {gw1.gateway_id, gw2.gateway_id}
    registry = cluster.core.registry
    # the room map is written in the background
    while await registry.gateways_for_room(room.id) != both:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    state = await cluster.core.chat.mark_read(bob.id, room.id, 3)
    want = {
        "room_id": str(room.id),
        "last_read_seq": 3,
        "unread_count": 0,
        "mention_count": 0,
        "muted": False,
    }
    assert state.last_read_seq == 3
    for b in (b1, b2):  # the same gateway's other session, and the other gateway's
        assert (await b.until(lambda f: f.get("t") == "READ_STATE"))["d"] == want
    await cluster.core.chat.set_room_muted(bob.id, room.id, True)
    assert (await b2.until(lambda f: f.get("t") == "READ_STATE"))["d"] == want | {"muted": True}
    # alice is in the room but these are bob's: the next thing she sees is bob typing
    await b1.send(12, {"room_id": str(room.id)})
    seen = await a.until(lambda f: f.get("t") in ("READ_STATE", "TYPING_START"))
    assert seen["t"] == "TYPING_START"
    for client in (a, b1, b2):
        await client.ws.close()


class _NoTransport:
    def write(self, data: object) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


async def test_saves_made_in_one_tick_share_one_registry_call(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions whose rooms changed together (an IDENTIFY burst) are saved in one Registry call,
    each still conditional on its epoch and answered on its own."""
    from gateway.outbound import Outbound
    from gateway.session import Session
    from protocol.codec import Encoding

    gw = await cluster.gateway()
    calls: list[int] = []
    real = gw.registry.save_sessions_if

    async def counting(items: Sequence[tuple[str, bytes, int]], ttl_s: float) -> list[bool]:
        calls.append(len(items))
        return await real(items, ttl_s)

    monkeypatch.setattr(gw.registry, "save_sessions_if", counting)
    out = Outbound(
        _NoTransport(), gw.hub.flusher, text=True, limit=1 << 20, on_overflow=lambda: None
    )
    sessions = [Session(f"batch-{i}", 100 + i, Encoding.JSON, out) for i in range(5)]
    await asyncio.gather(*(gw.save_now(s) for s in sessions))
    assert calls == [5]
    for s in sessions:
        raw = await gw.registry.load_session(s.session_id)
        blob = load_blob(raw) if raw is not None else None
        assert blob is not None and blob.user_id == s.user_id and blob.owner == gw.gateway_id
