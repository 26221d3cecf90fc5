"""The gateway end to end: real websockets clients, real SQLite store, memory log/registry."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest

from gateway import metrics
from tests.unit.test_gateway_harness import Client, Cluster


@pytest.fixture
async def cluster(tmp_path):
    c = Cluster(tmp_path)
    await c.start()
    yield c
    await c.close()


def is_msg(frame) -> bool:
    return frame.get("t") == "MESSAGE_CREATE"


async def test_lifecycle_identify_send_and_fanout(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    alice, atok = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.chat.create_room("general", [alice.id, bob.id])
    a = await Client.open(gw)
    b = await Client.open(gw, "?v=1&encoding=json")
    ready = await a.identify(atok)
    assert ready["s"] == 1
    d = ready["d"]
    assert d["user"]["id"] == str(alice.id) and d["resume_url"] == gw.url
    assert d["rooms"] == [{"id": str(room.id), "name": "general", "last_seq": 2}]
    sub = await a.recv()
    assert sub["t"] == "ROOM_SUBSCRIBED" and sub["d"]["room_id"] == str(room.id)
    assert sub["d"]["seq"] == 2 and sub["s"] == 2
    await b.identify(btok)
    await b.recv()  # ROOM_SUBSCRIBED

    rid = await a.request(8, {"room_id": str(room.id), "content": "hi", "nonce": "n1"})
    reply = await a.until(lambda f: f["op"] == 13)
    assert reply["id"] == rid and reply["d"]["ok"] is True
    result = reply["d"]["result"]
    assert result["content"] == "hi" and result["seq"] == 3 and result["room_id"] == str(room.id)
    got = await b.until(is_msg)
    assert got["d"]["seq"] == 3 and got["d"]["content"] == "hi" and got["s"] == 3
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

    # non-member send is a REPLY error, not a close
    other = await cluster.chat.create_room("other", [bob.id])
    await a.request(8, {"room_id": str(other.id), "content": "x", "nonce": "n2"})
    err = await a.until(lambda f: f["op"] == 13)
    assert err["d"] == {"ok": False, "error": {"code": "FORBIDDEN", "message": "not a member"}}
    await a.ws.close()
    await b.ws.close()


async def test_many_messages_arrive_in_seq_order_without_gaps(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    alice, _atok = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.chat.create_room("r", [alice.id, bob.id])
    b = await Client.open(gw)
    await b.identify(btok)
    await b.recv()
    for i in range(50):
        await cluster.chat.send_message(alice.id, room.id, f"m{i}", f"n{i}")
    seqs = [(await b.until(is_msg))["d"]["seq"] for _ in range(50)]
    assert seqs == list(range(3, 53))
    await b.ws.close()


async def test_gap_in_log_is_filled_from_store(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    alice, _ = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.chat.create_room("r", [alice.id, bob.id])
    b = await Client.open(gw)
    await b.identify(btok)
    await b.recv()
    cluster.chat.publish = False  # seq 3, 4 stored but never published (lagging relay)
    await cluster.chat.send_message(alice.id, room.id, "lost1", "l1")
    await cluster.chat.send_message(alice.id, room.id, "lost2", "l2")
    cluster.chat.publish = True
    await cluster.chat.send_message(alice.id, room.id, "live", "l3")
    got = [(await b.until(is_msg))["d"]["content"] for _ in range(3)]
    assert got == ["lost1", "lost2", "live"]
    await b.ws.close()


async def test_subscribe_after_seq_recovers_exactly(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    alice, atok = await cluster.user("alice")
    room = await cluster.chat.create_room("r", [alice.id])
    for i in range(10):
        await cluster.chat.send_message(alice.id, room.id, f"m{i}", f"n{i}")  # seq 2..11
    a = await Client.open(gw)
    await a.identify(atok, subscribe=[])
    rid = await a.request(4, {"rooms": [{"room_id": str(room.id), "after_seq": 6}]})
    frames = [await a.recv() for _ in range(7)]
    assert [f["d"]["seq"] for f in frames[:5]] == [7, 8, 9, 10, 11]
    assert frames[5]["t"] == "ROOM_SUBSCRIBED"
    assert frames[5]["d"] == {"room_id": str(room.id), "seq": 11, "recovered": True}
    assert frames[6]["op"] == 13 and frames[6]["id"] == rid and frames[6]["d"]["ok"]
    await cluster.chat.send_message(alice.id, room.id, "live", "live")
    assert (await a.until(is_msg))["d"]["seq"] == 12
    # unsubscribe: no more events
    await a.send(5, {"rooms": [str(room.id)]})
    await cluster.chat.send_message(alice.id, room.id, "after", "after")
    await a.send(1, None)
    assert (await a.recv())["op"] == 11
    await a.ws.close()


async def test_resume_on_another_gateway_gets_exactly_the_missed(cluster: Cluster) -> None:
    gw1 = await cluster.gateway()
    gw2 = await cluster.gateway()
    alice, _atok = await cluster.user("alice")
    bob, btok = await cluster.user("bob")
    room = await cluster.chat.create_room("r", [alice.id, bob.id])
    b = await Client.open(gw1)
    ready = await b.identify(btok)
    await b.recv()
    await cluster.chat.send_message(alice.id, room.id, "seen", "s0")
    assert (await b.until(is_msg))["d"]["seq"] == 3
    last_s = b.last_s
    await b.ws.close(4000)  # a resumable close
    await asyncio.sleep(0.1)
    for i in range(100):
        await cluster.chat.send_message(alice.id, room.id, f"m{i}", f"n{i}")
    b2 = await Client.open(gw2)
    assert (await b2.recv())["op"] == 10
    await b2.send(6, {"token": btok, "session_id": ready["d"]["session_id"], "seq": last_s})
    frames = []
    while True:
        f = await b2.recv()
        frames.append(f)
        if f.get("t") == "RESUMED":
            break
    msgs = [f for f in frames if is_msg(f)]
    assert [m["d"]["seq"] for m in msgs] == list(range(4, 104))
    assert [m["s"] for m in msgs] == list(range(last_s + 1, last_s + 101))
    assert frames[-1]["d"] == {"replayed": 100}
    await cluster.chat.send_message(alice.id, room.id, "live", "live")
    assert (await b2.until(is_msg))["d"]["seq"] == 104
    # the session is now on gw2; a normal close ends it
    await b2.ws.close(1000)
    await asyncio.sleep(0.1)
    b3 = await Client.open(gw1)
    await b3.recv()
    await b3.send(6, {"token": btok, "session_id": ready["d"]["session_id"], "seq": 1})
    assert (await b3.recv()) ["op"] == 9
    await b3.ws.close()


async def test_resume_unknown_session_is_invalid(cluster: Cluster) -> None:
    gw = await cluster.gateway()
    _, tok = await cluster.user("u")
    c = await Client.open(gw)
    await c.recv()
    await c.send(6, {"token": tok, "session_id": "nope", "seq": 3})
    assert await c.recv() == {"op": 9, "d": {"resumable": False}, "s": None, "t": None,
                              "id": None}
    await c.send(2, {"token": tok})  # the connection stays usable: IDENTIFY instead
    assert (await c.recv())["t"] == "READY"
    await c.ws.close()


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (["not json"], 4002),
        (['{"op": 2}'], 4002),  # IDENTIFY without a token
        (['{"op": 8, "d": {"room_id": "1", "content": "x", "nonce": "n"}}'], 4003),
        (['{"op": 99}'], 4005),
        (['{"op": 2, "d": {"token": "forged"}}'], 4501),
        (["x" * 20000], 4502),
    ],
)
async def test_close_codes_before_identify(cluster: Cluster, frames, code) -> None:
    gw = await cluster.gateway()
    c = await Client.open(gw)
    await c.recv()
    for f in frames:
        await c.ws.send(f)
    assert await c.close_code() == code


async def test_already_identified_4004_and_rate_limit_4008(cluster: Cluster) -> None:
    gw = await cluster.gateway(ops_burst=5, ops_per_window=5, ops_window_s=60.0)
    _, tok = await cluster.user("u")
    c = await Client.open(gw)
    await c.identify(tok)
    await c.send(2, {"token": tok})
    assert await c.close_code() == 4004
    c = await Client.open(gw)
    await c.identify(tok)
    for _ in range(6):
        await c.send(1, None)
    assert await c.close_code() == 4008


async def test_identify_flood_per_ip_4008(cluster: Cluster) -> None:
    gw = await cluster.gateway(identify_per_window=2, identify_window_s=60.0)
    _, tok = await cluster.user("u")
    for _ in range(2):
        c = await Client.open(gw)
        await c.identify(tok)
        await c.ws.close()
    c = await Client.open(gw)
    await c.recv()
    await c.send(2, {"token": tok})
    assert await c.close_code() == 4008


async def test_query_and_origin_checks(cluster: Cluster) -> None:
    gw = await cluster.gateway(allowed_origins=("https://chat.example",))
    c = await Client.open(gw, "?v=2&encoding=json")
    assert await c.close_code() == 4504
    c = await Client.open(gw, "?v=1&encoding=xml", origin="https://chat.example")
    assert await c.close_code() == 4504
    c = await Client.open(gw, "?v=1&encoding=json", origin="https://evil.example")
    assert await c.close_code() == 4503
    c = await Client.open(gw, "?v=1&encoding=json", origin="https://chat.example")
    assert (await c.recv())["op"] == 10
    await c.ws.close()


async def test_heartbeat_timeout_4001(cluster: Cluster) -> None:
    gw = await cluster.gateway(heartbeat_interval_ms=200)
    c = await Client.open(gw)
    hello = await c.recv()
    assert hello["d"] == {"heartbeat_interval_ms": 200, "gateway_id": gw.gateway_id}
    assert await c.close_code() == 4001


async def test_msgpack_encoding(cluster: Cluster) -> None:
    import msgspec

    gw = await cluster.gateway()
    alice, tok = await cluster.user("alice")
    room = await cluster.chat.create_room("r", [alice.id])
    c = await Client.open(gw, "?v=1&encoding=msgpack")
    hello = msgspec.msgpack.decode(await c.ws.recv())
    assert hello["op"] == 10
    await c.ws.send(msgspec.msgpack.encode({"op": 2, "d": {"token": tok, "subscribe": "all"}}))
    assert msgspec.msgpack.decode(await c.ws.recv())["t"] == "READY"
    assert msgspec.msgpack.decode(await c.ws.recv())["t"] == "ROOM_SUBSCRIBED"
    await cluster.chat.send_message(alice.id, room.id, "hi", "n")
    frame = msgspec.msgpack.decode(await c.ws.recv())
    assert frame["t"] == "MESSAGE_CREATE" and frame["s"] == 3 and frame["d"]["content"] == "hi"
    await c.ws.close()


async def test_slow_consumer_is_cut_while_others_keep_receiving(cluster: Cluster) -> None:
    gw = await cluster.gateway(outbound_buffer_bytes=64 * 1024, heartbeat_interval_ms=60_000)
    alice, atok = await cluster.user("alice")
    slow_u, stok = await cluster.user("slow")
    room = await cluster.chat.create_room("r", [alice.id, slow_u.id])
    fast = await Client.open(gw)
    await fast.identify(atok)
    await fast.recv()
    # max_queue=1 and a tiny receive buffer: the slow client stops reading after READY.
    slow = await Client.open(gw, max_queue=1)
    await slow.identify(stok)
    await slow.recv()
    cuts = metrics.SLOW_CONSUMER_CUTS._value.get()
    big = "x" * 3900
    received = 0
    for i in range(4000):
        await cluster.chat.send_message(alice.id, room.id, big, f"n{i}")
        if i % 20 == 0:
            while True:  # the fast client keeps up
                try:
                    await asyncio.wait_for(fast.ws.recv(), 0.2)
                    received += 1
                except TimeoutError:
                    break
        if metrics.SLOW_CONSUMER_CUTS._value.get() > cuts:
            break
    assert metrics.SLOW_CONSUMER_CUTS._value.get() == cuts + 1
    # the fast client still gets new messages
    await cluster.chat.send_message(alice.id, room.id, "after", "after")
    assert (await fast.until(lambda f: f.get("d", {}).get("content") == "after"))
    assert await slow.close_code(wait_s=10) == 4010
    await fast.ws.close()


async def test_drain_sends_reconnect_then_4011(cluster: Cluster) -> None:
    gw1 = await cluster.gateway()
    gw2 = await cluster.gateway()
    _, tok = await cluster.user("u")
    c = await Client.open(gw1)
    await c.identify(tok)
    await cluster.registry.publish(f"gateway:{gw1.gateway_id}:control", b"drain")
    rec = await c.until(lambda f: f["op"] == 7)
    assert rec["d"] == {"url": gw2.url}
    assert await c.close_code() == 4011


async def test_http_probes(cluster: Cluster) -> None:
    gw = await cluster.gateway()

    def get(path: str) -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{gw.port}{path}") as resp:
            return resp.status, resp.read().decode()

    assert await asyncio.to_thread(get, "/healthz") == (200, "ok\n")
    assert (await asyncio.to_thread(get, "/readyz"))[0] == 200
    status, body = await asyncio.to_thread(get, "/metrics")
    assert status == 200 and "shardchat_gateway_connections" in body
