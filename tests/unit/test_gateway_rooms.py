"""rooms.py: per-room dedupe, ordering, gap fill from the Store, catch-up from ring/Store."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from chat_core.models import RoomEvent
from gateway.fanout import fanout
from gateway.outbound import Flusher, Outbound
from gateway.rooms import CATCHUP_CHUNK_BYTES, CatchUpAborted, LeftRoom, RoomState, RoomTable
from gateway.session import Session, load_blob, resume_positions
from protocol.codec import Encoding


class FakeTransport:
    """Collects what the flusher writes; ``frames()`` parses the WebSocket frames."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.data += data
        self.writes += 1

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def payloads(self) -> list[bytes]:
        out, buf, i = [], bytes(self.data), 0
        while i < len(buf):
            n = buf[i + 1] & 0x7F
            i += 2
            if n == 126:
                n, i = int.from_bytes(buf[i : i + 2], "big"), i + 2
            elif n == 127:
                n, i = int.from_bytes(buf[i : i + 8], "big"), i + 8
            out.append(buf[i : i + n])
            i += n
        return out


class Sink:
    """A real Outbound on a FakeTransport, with the frames decoded (JSON)."""

    def __init__(self, limit: int = 1 << 30) -> None:
        self.transport = FakeTransport()
        self.flusher = Flusher()
        self.out = Outbound(
            self.transport, self.flusher, text=True, limit=limit, on_overflow=lambda: None
        )

    @property
    def frames(self) -> list[dict[str, Any]]:
        self.flusher.flush()
        return [msgspec.json.decode(p) for p in self.transport.payloads()]


def session(sid: str, sink: Sink) -> Session:
    return Session(sid, 1, Encoding.JSON, sink.out)


def ev(room: int, seq: int) -> RoomEvent:
    return RoomEvent(room, seq, "MESSAGE_CREATE", {"room_id": str(room), "seq": seq}, 0)


class EventStore:
    """The durable events of rooms, as ChatService.events_after serves them."""

    def __init__(self) -> None:
        self.events: dict[int, list[RoomEvent]] = {}
        self.calls: list[tuple[int, int, int]] = []

    def add(self, room: int, upto: int) -> None:
        have = self.events.setdefault(room, [])
        for seq in range(len(have) + 1, upto + 1):
            have.append(ev(room, seq))

    async def events_after(self, room: int, after: int, limit: int) -> list[RoomEvent]:
        self.calls.append((room, after, limit))
        await asyncio.sleep(0)
        return [e for e in self.events.get(room, []) if e.seq > after][:limit]


def make_table(store: EventStore, delivered: list[tuple[int, int]], ring: int = 16) -> RoomTable:
    def deliver(room: RoomState, events: list[RoomEvent]) -> None:
        delivered.extend((event.room_id, event.seq) for event in events)

    return RoomTable(store.events_after, deliver, ring)


async def test_in_order_and_dedupe() -> None:
    store = EventStore()
    delivered: list[tuple[int, int]] = []
    table = make_table(store, delivered)
    room = table.get_or_create(7)
    table.initialise(room, 0)
    for seq in (1, 2, 2, 1, 3):
        assert table.on_event(ev(7, seq))
    assert delivered == [(7, 1), (7, 2), (7, 3)]
    assert not table.on_event(ev(8, 1))  # no local room: waste
    assert store.calls == []


async def test_gap_is_filled_from_store_before_delivery() -> None:
    store = EventStore()
    store.add(7, 6)
    delivered: list[tuple[int, int]] = []
    table = make_table(store, delivered)
    room = table.get_or_create(7)
    table.initialise(room, 1)
    table.on_event(ev(7, 5))  # 2..4 missing
    table.on_event(ev(7, 6))
    table.on_event(ev(7, 3))  # arrives late while filling: must not be delivered twice
    assert delivered == []
    while room.filling is not None:  # noqa: ASYNC110 - polls a task slot
        await asyncio.sleep(0.01)
    assert delivered == [(7, s) for s in range(2, 7)]
    assert store.calls and store.calls[0][:2] == (7, 1)


async def test_events_held_while_initialising() -> None:
    store = EventStore()
    delivered: list[tuple[int, int]] = []
    table = make_table(store, delivered)
    room = table.get_or_create(7)
    table.on_event(ev(7, 4))
    table.on_event(ev(7, 5))
    table.initialise(room, 4)  # Store said 4: the held 4 is a duplicate, 5 is new
    assert delivered == [(7, 5)]


async def test_catch_up_from_ring_then_store_then_live() -> None:
    store = EventStore()
    store.add(7, 40)
    delivered: list[tuple[int, int]] = []
    table = make_table(store, delivered, ring=16)
    room = table.get_or_create(7)
    table.initialise(room, 20)
    for seq in range(21, 41):
        table.on_event(ev(7, seq))  # ring now holds 25..40
    sink = Sink()
    sess = session("sid", sink)
    sess.rooms.add(7)
    seq, recovered = await table.catch_up(room, sess, 30)  # from the ring
    assert (seq, recovered) == (40, True)
    assert [f["d"]["seq"] for f in sink.frames] == list(range(31, 41))
    assert [f["s"] for f in sink.frames] == list(range(1, 11))
    assert store.calls == []

    sink2 = Sink()
    sess2 = session("sid2", sink2)
    sess2.rooms.add(7)
    seq, recovered = await table.catch_up(room, sess2, 3)  # older than the ring: Store
    assert (seq, recovered) == (40, True)
    assert [f["d"]["seq"] for f in sink2.frames] == list(range(4, 41))
    assert sess2 in room.live


async def test_catch_up_sees_events_arriving_during_store_catch_up() -> None:
    store = EventStore()
    store.add(7, 10)
    delivered: list[tuple[int, int]] = []
    table = make_table(store, delivered, ring=4)
    room = table.get_or_create(7)
    table.initialise(room, 10)
    sink = Sink()
    sess = session("sid", sink)
    sess.rooms.add(7)
    task = asyncio.create_task(table.catch_up(room, sess, 0))
    await asyncio.sleep(0)  # catch_up is awaiting the Store now
    store.add(7, 12)
    table.on_event(ev(7, 11))
    table.on_event(ev(7, 12))
    seq, recovered = await task
    assert (seq, recovered) == (12, True)
    assert [f["d"]["seq"] for f in sink.frames] == list(range(1, 13))


async def test_resume_positions_use_client_s() -> None:
    sink = Sink()
    sess = session("sid", sink)
    sess.rooms.update({7, 8})
    sess.acked = {7: 0, 8: 5}
    for seq in (1, 2, 3):
        sess.dispatch_catchup(ev(7, seq))  # s 1..3
    sess.dispatch("TYPING_START", {"room_id": "8", "user_id": "2"})  # s 4: not a room event
    sess.dispatch_catchup(ev(8, 6))  # s 5
    sess.ack(2)
    assert sess.acked == {7: 2, 8: 5} and sess.tail_base == 2
    blob = load_blob(sess.to_blob(60, "gw-1"))
    assert blob is not None and blob.s == 5 and blob.owner == "gw-1"
    assert blob.tail == [(3, 7, 3), (5, 8, 6)]
    assert resume_positions(blob, 3) == {7: 3, 8: 5}
    assert resume_positions(blob, 2) == {7: 2, 8: 5}
    assert resume_positions(blob, 5) == {7: 3, 8: 6}
    assert [f["s"] for f in sink.frames] == [1, 2, 3, 4, 5]


async def test_an_ack_alone_needs_no_save_the_saved_tail_resumes_the_same() -> None:
    """A heartbeat's ack folds the tail into ``acked`` without making the session due for a
    save: the state saved before the ack gives every RESUME seq the same positions."""
    sess = session("sid", Sink())
    sess.rooms.update({7, 8})
    sess.acked = {7: 0, 8: 0}
    for seq in (1, 2, 3):
        sess.dispatch_catchup(ev(7, seq))  # s 1..3
    sess.dispatch_catchup(ev(8, 1))  # s 4
    saved = load_blob(sess.to_blob(60, "gw-1"))  # the last save, before the ack
    assert saved is not None and not sess.dirty and sess.saved_s == sess.s
    sess.ack(3)
    assert not sess.dirty and sess.s == sess.saved_s  # nothing for the sweep to save
    after = load_blob(sess.to_blob(60, "gw-1"))
    assert after is not None and len(after.tail) < len(saved.tail)
    for client_s in range(3, sess.s + 1):  # the client acked 3: it RESUMEs with s >= 3
        assert resume_positions(saved, client_s) == resume_positions(after, client_s)


async def test_fanout_splices_s_and_writes_once_per_connection_per_tick() -> None:
    flusher = Flusher()
    transports = [FakeTransport() for _ in range(4)]
    sessions = [
        Session(
            str(i),
            i,
            enc,
            Outbound(
                t, flusher, text=enc is Encoding.JSON, limit=1 << 30, on_overflow=lambda: None
            ),
        )
        for i, (t, enc) in enumerate(
            zip(transports, [Encoding.JSON] * 3 + [Encoding.MSGPACK], strict=True)
        )
    ]
    sessions[1].s = 10  # sessions differ in s: each gets its own spliced s
    for seq in (1, 2):
        assert fanout([ev(7, seq)], sessions, flusher) == 4
    flusher.flush()
    assert [t.writes for t in transports] == [1, 1, 1, 1]  # 2 frames, one write each
    got = [[msgspec.json.decode(p) for p in t.payloads()] for t in transports[:3]]
    assert [[(f["s"], f["d"]["seq"]) for f in fs] for fs in got] == [
        [(1, 1), (2, 2)],
        [(11, 1), (12, 2)],
        [(1, 1), (2, 2)],
    ]
    frames = [msgspec.msgpack.decode(p) for p in transports[3].payloads()]
    assert [(f["s"], f["d"]["seq"]) for f in frames] == [(1, 1), (2, 2)]
    assert sessions[1].s == 12 and [e.seq for e in sessions[1].tail if e] == [1, 2]


async def test_outbound_cuts_over_the_limit() -> None:
    cut: list[bool] = []
    transport = FakeTransport()
    out = Outbound(transport, Flusher(), text=True, limit=100, on_overflow=lambda: cut.append(True))
    out.push(b"x" * 60)
    assert not cut
    out.push(b"y" * 60)
    assert cut == [True] and out.closed
    out.flush()
    assert transport.writes == 0


def test_dispatch_template_round_trips() -> None:
    from protocol.codec import DispatchEvent

    event = DispatchEvent("MESSAGE_CREATE", {"x": [1, "2"]})
    for enc in Encoding:
        raw = event.frame(70000, enc)
        dec = msgspec.json.decode(raw) if enc is Encoding.JSON else msgspec.msgpack.decode(raw)
        assert dec == {"op": 0, "t": "MESSAGE_CREATE", "s": 70000, "id": None, "d": {"x": [1, "2"]}}


async def test_ring_serves_contiguous_recent_events_and_forgets_across_a_skip() -> None:
    store = EventStore()  # empty: seqs 2..4 are gone from the Store (retention)
    delivered: list[tuple[int, int]] = []
    table = make_table(store, delivered, ring=4)
    room = table.get_or_create(7)
    table.initialise(room, 0)
    table.on_event(ev(7, 1))
    assert room.ring_after(0, 1) == [ev(7, 1)]  # stored encoded, handed back equal

    for seq in range(2, 7):
        store.add(7, seq)
        table.on_event(ev(7, seq))
    assert room.ring_after(2, 6) == [ev(7, s) for s in range(3, 7)]  # the last 4
    assert room.ring_after(1, 6) is None  # 2 fell out of the ring
    assert room.ring_after(5, 7) is None  # 7 not seen yet

    store.events[7] = store.events[7][:6]  # 7..9 will never be in the Store
    table.on_event(ev(7, 10))  # gap 7..9, unrecoverable: skipped after the fill retries
    while room.filling is not None:  # noqa: ASYNC110 - polls a task slot
        await asyncio.sleep(0.05)
    assert delivered[-1] == (7, 10)
    assert room.ring_after(9, 10) == [ev(7, 10)]
    assert room.ring_after(5, 10) is None  # never across the skipped seqs


class PacedTransport(FakeTransport):
    """A socket the test drains by hand: ``writable()`` waits until it is told to go on."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.waits = 0

    async def writable(self) -> None:
        self.waits += 1
        await self.go.wait()
        self.go.clear()


def big(room: int, seq: int, kind: str = "MESSAGE_CREATE", **data: Any) -> RoomEvent:
    return RoomEvent(room, seq, kind, {"room_id": str(room), "seq": seq, "x": "y" * 4000} | data, 0)


async def test_catch_up_is_paced_by_the_socket_and_never_cut_over_the_limit() -> None:
    """A backlog many times the outbound limit goes out chunk by chunk as the socket drains."""
    store = EventStore()
    store.events[7] = [big(7, seq) for seq in range(1, 301)]  # about 1.2 MB of frames
    table = make_table(store, [], ring=4)
    room = table.get_or_create(7)
    table.initialise(room, 300)
    transport = PacedTransport()
    cut: list[bool] = []
    out = Outbound(
        transport,
        Flusher(),
        text=True,
        limit=64 * 1024,  # far below the backlog
        on_overflow=lambda: cut.append(True),
        writable=transport.writable,
    )
    sess = Session("sid", 1, Encoding.JSON, out)
    sess.rooms.add(7)
    task = asyncio.create_task(table.catch_up(room, sess, 0))
    for _ in range(200):
        await asyncio.sleep(0)
    assert not task.done() and transport.waits == 1  # one chunk out, waiting for the socket
    assert CATCHUP_CHUNK_BYTES <= len(transport.data) < 2 * CATCHUP_CHUNK_BYTES
    while not task.done():
        transport.go.set()
        await asyncio.sleep(0)
    assert await task == (300, True) and not cut
    await asyncio.sleep(0)  # the last chunk is written at the end of the tick
    seqs = [msgspec.json.decode(p)["d"]["seq"] for p in transport.payloads()]
    assert seqs == list(range(1, 301))
    assert sess in room.live


async def test_catch_up_ends_at_the_sessions_own_leave() -> None:
    store = EventStore()
    store.add(7, 3)
    store.events[7].append(
        RoomEvent(7, 4, "MEMBER_LEAVE", {"room_id": "7", "seq": 4, "user_id": "1"}, 0)
    )
    store.events[7].append(ev(7, 5))
    table = make_table(store, [], ring=2)
    room = table.get_or_create(7)
    table.initialise(room, 5)
    sink = Sink()
    sess = session("sid", sink)
    sess.rooms.add(7)
    try:
        await table.catch_up(room, sess, 0)
        raise AssertionError("went live after its own leave")
    except LeftRoom:
        pass
    assert [f["d"]["seq"] for f in sink.frames] == [1, 2, 3, 4]  # the leave, nothing after
    assert sess not in room.live


async def test_catch_up_of_a_closed_or_unsubscribed_session_aborts() -> None:
    store = EventStore()
    store.add(7, 50)
    table = make_table(store, [], ring=4)
    room = table.get_or_create(7)
    table.initialise(room, 50)
    sink = Sink()
    sess = session("sid", sink)
    sess.rooms.add(7)
    task = asyncio.create_task(table.catch_up(room, sess, 0))
    await asyncio.sleep(0)  # reading the Store
    sess.rooms.discard(7)  # UNSUBSCRIBE meanwhile
    try:
        await task
        raise AssertionError("went live in a room it left")
    except CatchUpAborted:
        pass
    assert sess not in room.live


async def test_gap_fill_backs_off_while_the_store_fails() -> None:
    calls = 0

    async def failing(room: int, after: int, limit: int) -> list[RoomEvent]:
        nonlocal calls
        calls += 1
        raise ConnectionError("the Store is down")

    table = RoomTable(failing, lambda room, events: None, 16)
    room = table.get_or_create(7)
    table.initialise(room, 1)
    table.on_event(ev(7, 5))  # a gap: 2..4 must come from the Store first
    await asyncio.sleep(1.0)
    assert 3 <= calls <= 8  # 0.2, 0.4 s ... apart: not a hot loop
    assert room.filling is not None and 5 in room.pending  # still waiting, in order
    table.drop(7)


async def test_a_room_whose_delivery_raises_does_not_stall_the_others() -> None:
    failed: list[int] = []
    delivered: list[tuple[int, int]] = []

    def deliver(room: RoomState, events: list[RoomEvent]) -> None:
        if room.room_id == 7:
            raise RuntimeError("boom")
        delivered.extend((e.room_id, e.seq) for e in events)

    table = RoomTable(
        EventStore().events_after, deliver, 16, on_deliver_error=lambda r: failed.append(r.room_id)
    )
    for room_id in (7, 8):
        table.initialise(table.get_or_create(room_id), 0)
    assert table.on_events([ev(7, 1), ev(8, 1), ev(8, 2)]) == 0
    assert delivered == [(8, 1), (8, 2)] and failed == [7]
    table.on_event(ev(8, 3))
    assert delivered[-1] == (8, 3)


async def test_verify_delivers_what_the_store_has_beyond_the_log() -> None:
    store = EventStore()
    store.add(7, 6)
    delivered: list[tuple[int, int]] = []
    table = make_table(store, delivered)
    room = table.get_or_create(7)
    table.initialise(room, 3)
    await table.verify(room)  # records 4..6 were skipped by the log reader
    assert delivered == [(7, 4), (7, 5), (7, 6)] and room.last_seq == 6
    await table.verify(room)
    assert len(delivered) == 3
