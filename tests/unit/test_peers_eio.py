"""The Engine.IO v4 / Socket.IO v5 codec of the peers' load-test client (loadtest/peers/eio.py),
plus the pure helpers around it (CPU accounting from /proc text, population, output rows)."""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest import memory
from loadtest.harness import HarnessOptions, plan_clients
from loadtest.peers import compare, cpu, eio
from loadtest.peers.node_deps import STAMP, installed
from loadtest.peers.runner import gc_pauses, load_params, population_of, target_info
from loadtest.report import BenchResult, Latency, build_result, write_json

# --- encode -------------------------------------------------------------------------------------


def test_socketio_url() -> None:
    want = "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
    assert eio.socketio_url("ws://127.0.0.1:3000/socket.io/") == want
    assert eio.socketio_url("http://127.0.0.1:3000") == want
    assert (
        eio.socketio_url("https://h:1/x", path="/io/") == "wss://h:1/io/?EIO=4&transport=websocket"
    )
    with pytest.raises(ValueError):
        eio.socketio_url("tcp://127.0.0.1:3000")
    with pytest.raises(ValueError):
        eio.socketio_url("ws://")


def test_encode_connect_and_disconnect() -> None:
    assert eio.encode_connect() == "40"
    assert eio.encode_connect("/chat") == "40/chat,"
    assert eio.encode_connect(auth={"token": "t"}) == '40{"token":"t"}'
    assert eio.encode_connect("/chat", {"a": 1}) == '40/chat,{"a":1}'
    assert eio.encode_disconnect() == "41"
    assert eio.encode_disconnect("/chat") == "41/chat,"
    with pytest.raises(ValueError):
        eio.encode_connect("chat")


def test_encode_event_and_ack() -> None:
    assert eio.encode_event("join", "r1") == '42["join","r1"]'
    assert eio.encode_event("join", "r1", ack_id=0) == '420["join","r1"]'
    assert eio.encode_event("ping") == '42["ping"]'
    sent = eio.encode_event("send", {"room": "3", "nonce": 7}, ack_id=12, namespace="/chat")
    assert sent == '42/chat,12["send",{"room":"3","nonce":7}]'
    assert eio.encode_event("x", "é") == '42["x","é"]'  # UTF-8 text, not escapes
    assert eio.encode_ack(1, True) == "431[true]"
    assert eio.encode_ack(5, {"ok": True}, namespace="/a") == '43/a,5[{"ok":true}]'
    assert eio.encode_ack(2) == "432[]"
    with pytest.raises(ValueError):
        eio.encode_event("send", ack_id=-1)


# --- decode -------------------------------------------------------------------------------------


def test_decode_open_and_handshake() -> None:
    raw = '0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1e6}'
    p = eio.decode(raw)
    assert p.eio == eio.EIO_OPEN and p.sio is None
    hs = eio.handshake(p)
    assert hs == eio.Handshake("abc", 25000, 20000, 1_000_000, ())
    no_max = eio.decode('0{"sid":"s","pingInterval":1,"pingTimeout":2}')
    assert eio.handshake(no_max).max_payload == 1_000_000
    with pytest.raises(eio.ProtocolError):
        eio.handshake(eio.decode("2"))
    with pytest.raises(eio.ProtocolError):
        eio.handshake(eio.decode('0{"sid":"s"}'))


@pytest.mark.parametrize(
    ("raw", "kind", "data"),
    [
        ("2", eio.EIO_PING, None),
        ("3", eio.EIO_PONG, None),
        ("2probe", eio.EIO_PING, "probe"),
        ("1", eio.EIO_CLOSE, None),
        ("6", eio.EIO_NOOP, None),
        ("5", eio.EIO_UPGRADE, None),
    ],
)
def test_decode_engine_control_packets(raw: str, kind: str, data: Any) -> None:
    p = eio.decode(raw)
    assert (p.eio, p.sio, p.data) == (kind, None, data)
    assert eio.PING == "2" and eio.PONG == "3"  # in v4 the server pings, the client pongs


def test_decode_socketio_packets() -> None:
    c = eio.decode('40{"sid":"x"}')
    assert (c.eio, c.sio, c.namespace, c.ack_id, c.data) == (
        "4",
        eio.SIO_CONNECT,
        "/",
        None,
        {"sid": "x"},
    )
    ns = eio.decode('40/chat,{"sid":"y"}')
    assert (ns.namespace, ns.data) == ("/chat", {"sid": "y"})
    bare = eio.decode("40/chat")  # a namespace that runs to the end, no payload
    assert (bare.namespace, bare.data) == ("/chat", None)
    d = eio.decode("41")
    assert (d.sio, d.data) == (eio.SIO_DISCONNECT, None)
    ev = eio.decode('42["message",{"room":"1","nonce":3,"content":"9 x"}]')
    assert ev.sio == eio.SIO_EVENT and ev.event == "message" and ev.ack_id is None
    assert ev.args == [{"room": "1", "nonce": 3, "content": "9 x"}]
    asked = eio.decode('4217["join","r"]')
    assert (asked.ack_id, asked.event, asked.args) == (17, "join", ["r"])
    ack = eio.decode('431[{"ok":true,"nonce":5}]')
    assert (ack.sio, ack.ack_id, ack.args, ack.event) == (
        eio.SIO_ACK,
        1,
        [{"ok": True, "nonce": 5}],
        None,
    )
    nsack = eio.decode("43/admin,7[1,2]")
    assert (nsack.namespace, nsack.ack_id, nsack.args) == ("/admin", 7, [1, 2])
    err = eio.decode('44{"message":"not authorized"}')
    assert (err.sio, err.data) == (eio.SIO_CONNECT_ERROR, {"message": "not authorized"})
    binary = eio.decode('451-["up",{"_placeholder":true,"num":0}]')
    assert (binary.sio, binary.attachments, binary.event) == (eio.SIO_BINARY_EVENT, 1, "up")
    bin_ack = eio.decode('4612-/x,3[{"_placeholder":true,"num":0}]')
    assert (bin_ack.attachments, bin_ack.namespace, bin_ack.ack_id) == (12, "/x", 3)
    assert eio.decode(b'42["a"]').event == "a"  # bytes: decoded as UTF-8 text


@pytest.mark.parametrize(
    "raw",
    [
        "",  # empty
        "9",  # no such Engine.IO type
        "x",
        "4",  # MESSAGE without a Socket.IO type
        "4x",
        "47[]",  # no such Socket.IO type
        "4²",  # a digit to str.isdigit, not to the protocol
        "42{}",  # EVENT data is an array
        "42[]",
        "42[1]",  # event names are strings
        '42["a"',  # bad JSON
        "43[true]",  # ACK without an id
        "431{}",  # ACK args are an array
        "44",  # CONNECT_ERROR carries a payload
        '45["a"]',  # binary packets need "<n>-"
        '45-["a"]',
        "0{not json",
        b"\xff\xfe",  # not UTF-8
    ],
)
def test_decode_rejects_malformed(raw: str | bytes) -> None:
    with pytest.raises(eio.ProtocolError):
        eio.decode(raw)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    event=st.text(min_size=1, max_size=12),
    args=st.lists(_json, max_size=3),
    ack_id=st.none() | st.integers(0, 2**40),
    namespace=st.sampled_from(["/", "/chat", "/a/b"]),
)
def test_event_round_trip(event: str, args: list[Any], ack_id: int | None, namespace: str) -> None:
    p = eio.decode(eio.encode_event(event, *args, ack_id=ack_id, namespace=namespace))
    assert (p.event, p.args, p.ack_id, p.namespace) == (event, args, ack_id, namespace)


@given(ack_id=st.integers(0, 2**40), args=st.lists(_json, max_size=3))
def test_ack_round_trip(ack_id: int, args: list[Any]) -> None:
    p = eio.decode(eio.encode_ack(ack_id, *args))
    assert (p.sio, p.ack_id, p.args) == (eio.SIO_ACK, ack_id, args)


# --- helpers around the codec -------------------------------------------------------------------


def test_parse_stat_handles_odd_command_names() -> None:
    fields = " ".join(["S", "42"] + ["0"] * 9 + ["250", "50"] + ["0"] * 30)
    ppid, secs = memory.parse_stat(f"1234 (we ird) name)) {fields}")
    assert ppid == 42
    assert secs == pytest.approx(300 / os.sysconf("SC_CLK_TCK"))


def test_cpu_used_between_snapshots() -> None:
    before = {"server": {1: 1.0, 2: 5.0}, "clients": {}}
    after = {"server": {1: 3.5, 3: 0.5}, "clients": {9: 2.0}}  # 2 died, 3 and 9 are new
    assert cpu.used(before, after) == {"server": 3.0, "clients": 2.0}


def test_cpu_snapshot_of_this_process() -> None:
    snap = cpu.snapshot({"me": cpu.pids(os.getpid()), "none": cpu.pids()})
    assert list(snap["me"]) and snap["none"] == {}
    assert cpu.rss_mib(snap["me"]) > 0


def test_population_and_plan_spread_every_room() -> None:
    sizes = [4, 3, 3]
    pop = population_of(sizes)
    assert [len(m) for _, m in pop.rooms] == sizes
    assert sorted(u for _, m in pop.rooms for u in m) == list(range(1, 11))
    opts = HarnessOptions(workers=2, sources=["127.0.0.2", "127.0.0.3"])
    plans = plan_clients(pop, ["ws://127.0.0.1:1/socket.io/"], opts)
    specs = [s for p in plans for s in p.clients]
    assert len(specs) == 10
    assert sum(s.sender for s in specs) == 3  # one sender per room
    assert {s.gateway for s in specs} == {0}
    for room, _ in pop.rooms:  # every room's members span both workers
        assert len({p.index for p in plans for s in p.clients if s.room_id == room}) == 2


def test_node_deps_installed_needs_the_stamp_of_the_lock(tmp_path: Path) -> None:
    (tmp_path / "package-lock.json").write_text("{}")
    assert not installed(tmp_path)
    mod = tmp_path / "node_modules" / "socket.io"
    mod.mkdir(parents=True)
    (mod / "package.json").write_text("{}")
    assert not installed(tmp_path)  # no stamp: npm ci never finished
    digest = hashlib.sha256(b"{}").hexdigest()
    (tmp_path / "node_modules" / STAMP).write_text(digest + "\n")
    assert installed(tmp_path)
    (tmp_path / "package-lock.json").write_text('{"changed": 1}')
    assert not installed(tmp_path)  # the lock moved on: install again


def _args(**kw: Any) -> argparse.Namespace:
    base = {"embedded": False, "gateways": 2, "connections": 10, "targets": ["x"], "pause": 1.0}
    return argparse.Namespace(**(base | kw))


def test_target_info_and_params() -> None:
    assert target_info("shardchat", _args()).durable is True
    assert target_info("shardchat", _args(embedded=True)).durable is False
    assert target_info("socketio-node", _args()).durable is False
    assert target_info("python-socketio", _args()).durable is False
    with pytest.raises(ValueError):
        target_info("nope", _args())
    assert load_params(_args()) == {"embedded": False, "gateways": 2, "connections": 10}


def test_summary_rows_totals_and_json(tmp_path: Path) -> None:
    lat = Latency()
    for ms in (1.0, 2.0, 3.0):
        lat.record_ms(ms)
    result = build_result(
        "peers-socketio-node",
        started_at="2026-01-01T00:00:00Z",
        duration_s=2.0,
        params={"connections": 3},
        counters={"sent": 1, "delivered": 3, "acked": 1, "expected": 3},
        latency=lat,
        extra={"target": "socketio-node", "durable": False, "cpu": {"server_cpu_s": 0.1}},
    )
    row = compare.summary_row(result)
    assert row["target"] == "socketio-node" and row["durable"] is False
    assert (row["delivered"], row["lost"], row["duplicated"], row["delivered_per_s"]) == (
        3,
        0,
        0,
        1.5,
    )
    assert row["latency_ms"]["p50"] == 2.0
    t = compare.totals([row, {"target": "python-socketio", "error": "boom"}])
    assert t == {"sent": 1, "delivered": 3, "lost": 0, "duplicated": 0, "failed_targets": 1}
    out = compare.PeersResult(
        started_at="2026-01-01T00:00:00Z",
        params={},
        machine={},
        targets_requested=["socketio-node"],
        counters=t,
        summary=[row],
        results=[result],
    )
    path = write_json(out, tmp_path / "peers.json")
    back = msgspec.json.decode(path.read_bytes(), type=compare.PeersResult)
    assert back.results[0] == result
    assert isinstance(back.results[0], BenchResult)


def test_gc_pauses_in_the_window() -> None:
    text = (
        "listening on ws://127.0.0.1:1/socket.io/\n"
        "gc: generation 2 150.5 ms collected 0 at 99.000\n"  # before the run
        "gc: generation 2 900.0 ms collected 12 at 105.250\n"
        "gc: generation 1 25.0 ms collected 3 at 106.000\n"
        "gc: generation 2 40.0 ms collected 0 at 200.000\n"  # after
    )
    got = gc_pauses(text, 100.0, 110.0)
    assert got == {
        "threshold_ms": 20,
        "count": 2,
        "full_collections": 1,
        "max_ms": 900.0,
        "total_ms": 925.0,
    }
    assert gc_pauses("", 0, 1)["count"] == 0
