"""rooms.py: per-room dedupe, ordering, gap fill from the Store, catch-up from ring/Store."""

from __future__ import annotations

import asyncio

import msgspec

from chat_core.models import RoomEvent
from gateway import wire
from gateway.rooms import RoomState, RoomTable
from gateway.session import Session, load_blob, resume_positions


class ListSink:
    """A FrameSink collecting frames (JSON) in memory."""

    def __init__(self) -> None:
        self.closed = False
        self.frames: list[dict] = []

    def push(self, payload: bytes) -> None:
        self.frames.append(msgspec.json.decode(payload))

    def push3(self, a: bytes, b: bytes, c: bytes) -> None:
        self.push(a + b + c)


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
    def deliver(room: RoomState, event: RoomEvent) -> None:
        delivered.append((event.room_id, event.seq))

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


async def test_attach_catches_up_from_ring_then_store_then_live() -> None:
    store = EventStore()
    store.add(7, 40)
    delivered: list[tuple[int, int]] = []
    table = make_table(store, delivered, ring=16)
    room = table.get_or_create(7)
    table.initialise(room, 20)
    for seq in range(21, 41):
        table.on_event(ev(7, seq))  # ring now holds 25..40
    sink = ListSink()
    sess = Session("sid", 1, "json", sink)
    sess.rooms.add(7)
    seq, recovered = await table.attach(room, sess, 30)  # from the ring
    assert (seq, recovered) == (40, True)
    assert [f["d"]["seq"] for f in sink.frames] == list(range(31, 41))
    assert [f["s"] for f in sink.frames] == list(range(1, 11))
    assert store.calls == []

    sink2 = ListSink()
    sess2 = Session("sid2", 1, "json", sink2)
    sess2.rooms.add(7)
    seq, recovered = await table.attach(room, sess2, 3)  # older than the ring: Store
    assert (seq, recovered) == (40, True)
    assert [f["d"]["seq"] for f in sink2.frames] == list(range(4, 41))
    assert sess2 in room.live


async def test_attach_sees_events_arriving_during_store_catch_up() -> None:
    store = EventStore()
    store.add(7, 10)
    delivered: list[tuple[int, int]] = []
    table = make_table(store, delivered, ring=4)
    room = table.get_or_create(7)
    table.initialise(room, 10)
    sink = ListSink()
    sess = Session("sid", 1, "json", sink)
    sess.rooms.add(7)
    task = asyncio.create_task(table.attach(room, sess, 0))
    await asyncio.sleep(0)  # attach is awaiting the Store now
    store.add(7, 12)
    table.on_event(ev(7, 11))
    table.on_event(ev(7, 12))
    seq, recovered = await task
    assert (seq, recovered) == (12, True)
    assert [f["d"]["seq"] for f in sink.frames] == list(range(1, 13))


async def test_resume_positions_use_client_s() -> None:
    sink = ListSink()
    sess = Session("sid", 1, "json", sink)
    sess.rooms.update({7, 8})
    sess.acked = {7: 0, 8: 5}
    for seq in (1, 2, 3):
        sess.dispatch_event(ev(7, seq))  # s 1..3
    sess.dispatch_event(ev(8, 6))  # s 4
    sess.ack(2)
    blob = load_blob(sess.to_blob(60))
    assert blob is not None and blob.s == 4
    assert resume_positions(blob, 3) == {7: 3, 8: 5}
    assert resume_positions(blob, None) == {7: 2, 8: 5}
    assert resume_positions(blob, 4) == {7: 3, 8: 6}


def test_dispatch_template_round_trips() -> None:
    for enc in ("json", "msgpack"):
        prefix, suffix = wire.dispatch_template(enc, "MESSAGE_CREATE", {"x": [1, "2"]})
        raw = prefix + wire.seq_bytes(enc, 70000) + suffix
        dec = msgspec.json.decode(raw) if enc == "json" else msgspec.msgpack.decode(raw)
        assert dec == {"op": 0, "t": "MESSAGE_CREATE", "id": None, "d": {"x": [1, "2"]}, "s": 70000}
