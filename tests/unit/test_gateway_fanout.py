"""fanout.py / outbound.py: raw frames as websockets parses them, batched splicing of ``s``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from chat_core.models import RoomEvent
from gateway import metrics
from gateway.fanout import fanout
from gateway.outbound import BINARY, TEXT, Flusher, Outbound, frame_header
from gateway.rooms import RoomState, RoomTable
from gateway.session import Session
from protocol.codec import Codec, Encoding


class FakeTransport:
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


def parse_frames(data: bytes) -> list[Frame]:
    """Every frame in ``data``, parsed by websockets' own parser as a client would (unmasked,
    no extensions); fails on a truncated or malformed frame."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames: list[Frame] = []
    while reader.buffer:  # bytes not consumed by a parsed frame yet
        parser = Frame.parse(reader.read_exact, mask=False, max_size=None, extensions=None)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:
            raise AssertionError("truncated frame")
    return frames


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize(("opcode_byte", "opcode"), [(TEXT, Opcode.TEXT), (BINARY, Opcode.BINARY)])
def test_raw_frames_parse_with_websockets(size: int, opcode_byte: int, opcode: Opcode) -> None:
    payload = (b"a" * size) if opcode_byte == TEXT else bytes(i % 256 for i in range(size))
    raw = frame_header(opcode_byte, size) + payload
    # Two in a row: the header length must be exact or the second frame would not parse.
    frames = parse_frames(raw + raw)
    assert len(frames) == 2
    for frame in frames:
        assert frame.opcode is opcode and frame.fin and bytes(frame.data) == payload
        assert not (frame.rsv1 or frame.rsv2 or frame.rsv3)


def ev(room: int, seq: int, content: str = "hi", kind: str = "MESSAGE_CREATE") -> RoomEvent:
    return RoomEvent(room, seq, kind, {"room_id": str(room), "seq": seq, "content": content}, 0)


def make_sessions(
    flusher: Flusher, starts: Sequence[int], encodings: Sequence[Encoding] | None = None
) -> tuple[list[Session], list[FakeTransport]]:
    encodings = encodings or [Encoding.JSON] * len(starts)
    transports = [FakeTransport() for _ in starts]
    sessions = [
        Session(
            str(i),
            i,
            enc,
            Outbound(t, flusher, text=enc.text_frames, limit=1 << 30, on_overflow=lambda: None),
            s=s,
        )
        for i, (t, s, enc) in enumerate(zip(transports, starts, encodings, strict=True))
    ]
    return sessions, transports


def decoded(t: FakeTransport, enc: Encoding = Encoding.JSON) -> list[dict[str, object]]:
    out = []
    for frame in parse_frames(bytes(t.data)):
        assert frame.opcode is (Opcode.TEXT if enc is Encoding.JSON else Opcode.BINARY)
        data = bytes(frame.data)
        out.append(
            msgspec.json.decode(data) if enc is Encoding.JSON else msgspec.msgpack.decode(data)
        )
    return out


async def test_batch_splices_each_sessions_s_and_writes_once() -> None:
    flusher = Flusher()
    # Shared s, distinct s, a digit carry inside the batch (95 -> 105), a big s, msgpack at a
    # msgpack width change (120 -> 130), and content with '%' (the JSON format must escape it).
    starts = [0, 0, 7, 95, 10**12, 120]
    encs = [Encoding.JSON] * 5 + [Encoding.MSGPACK]
    sessions, transports = make_sessions(flusher, starts, encs)
    events = [ev(7, seq, content="100% %d %s %%") for seq in range(1, 11)]
    assert fanout(events, sessions, flusher) == 10 * len(sessions)
    flusher.flush()
    assert [t.writes for t in transports] == [1] * len(sessions)
    codec = {e: Codec(e) for e in Encoding}
    for sess, t, s0, enc in zip(sessions, transports, starts, encs, strict=True):
        frames = decoded(t, enc)
        assert [(f["s"], f["d"]["seq"]) for f in frames] == [  # type: ignore[index]
            (s0 + i, i) for i in range(1, 11)
        ]
        assert frames[0]["d"]["content"] == "100% %d %s %%"  # type: ignore[index]
        # Byte-identical to the codec's one-off encoding of each DISPATCH.
        payloads = [bytes(f.data) for f in parse_frames(bytes(t.data))]
        assert payloads == [
            codec[enc].encode_dispatch(e.type, e.data, s0 + i) for i, e in enumerate(events, 1)
        ]
        assert sess.s == s0 + 10 and sess.tail == events


async def test_batch_respects_skip_prefix_and_counts_metrics() -> None:
    flusher = Flusher()
    sessions, transports = make_sessions(flusher, [0, 0])
    sessions[1].skip[7] = 3  # subscribed with after_seq=3 ahead of this node
    before = sum(metrics.FANOUT_BATCH_SIZE.counts)
    assert fanout([ev(7, seq) for seq in range(1, 6)], sessions, flusher) == 5 + 2
    flusher.flush()
    assert [f["d"]["seq"] for f in decoded(transports[0])] == [1, 2, 3, 4, 5]  # type: ignore[index]
    assert [(f["s"], f["d"]["seq"]) for f in decoded(transports[1])] == [(1, 4), (2, 5)]  # type: ignore[index]
    assert sum(metrics.FANOUT_BATCH_SIZE.counts) - before == 5  # one observation per event


async def test_batch_over_the_limit_cuts_only_that_connection() -> None:
    flusher = Flusher()
    cut: list[int] = []
    t_small, t_big = FakeTransport(), FakeTransport()
    small = Session(
        "a",
        1,
        Encoding.JSON,
        Outbound(t_small, flusher, text=True, limit=300, on_overflow=lambda: cut.append(1)),
    )
    big = Session(
        "b",
        2,
        Encoding.JSON,
        Outbound(t_big, flusher, text=True, limit=1 << 20, on_overflow=lambda: cut.append(2)),
    )
    assert fanout([ev(7, seq, "x" * 100) for seq in (1, 2, 3)], [small, big], flusher) == 3
    flusher.flush()
    assert cut == [1] and small.out.closed and t_small.writes == 0
    assert len(decoded(t_big)) == 3


async def test_room_table_hands_over_one_batch_per_room_per_fetch() -> None:
    calls: list[tuple[int, list[int]]] = []

    def deliver(room: RoomState, events: list[RoomEvent]) -> None:
        calls.append((room.room_id, [e.seq for e in events]))

    async def fetch(room: int, after: int, limit: int) -> list[RoomEvent]:
        return []

    table = RoomTable(fetch, deliver, 16)
    for rid in (1, 2):
        table.initialise(table.get_or_create(rid), 0)
    unrouted = table.on_events([ev(1, 1), ev(2, 1), ev(1, 2), ev(9, 1), ev(1, 2), ev(2, 2)])
    assert unrouted == 1  # room 9 has no local subscriber
    assert sorted(calls) == [(1, [1, 2]), (2, [1, 2])]
    assert all(not r.due for r in table.rooms.values())


async def test_session_attached_after_a_batch_gets_nothing_twice() -> None:
    """A session going live right after a batch must not receive that batch again."""
    flusher = Flusher()
    sessions, transports = make_sessions(flusher, [0])

    def deliver(room: RoomState, events: list[RoomEvent]) -> None:
        fanout(events, room.live, flusher)

    async def fetch(room: int, after: int, limit: int) -> list[RoomEvent]:
        return []

    table = RoomTable(fetch, deliver, 16)
    room = table.get_or_create(7)
    table.initialise(room, 0)
    table.on_events([ev(7, 1), ev(7, 2)])
    sessions[0].rooms.add(7)
    assert await table.catch_up(room, sessions[0], 2) == (2, True)
    table.on_events([ev(7, 3)])
    flusher.flush()
    assert [f["d"]["seq"] for f in decoded(transports[0])] == [3]  # type: ignore[index]


async def test_idle_flusher_writes_in_the_same_tick_even_with_a_window() -> None:
    flusher = Flusher(window_s=0.05)
    sessions, transports = make_sessions(flusher, [0])
    fanout([ev(7, 1)], sessions, flusher)
    await asyncio.sleep(0)  # nothing flushed in the last window: written at the end of the tick
    assert transports[0].writes == 1


async def test_busy_flusher_coalesces_ticks_into_one_write_within_the_window() -> None:
    """After a flush, what is queued within the window waits for it to pass: one write for
    the frames of several ticks, in order, never later than the window."""
    loop = asyncio.get_running_loop()
    window = 0.05
    flusher = Flusher(window_s=window)
    sessions, transports = make_sessions(flusher, [0, 0])
    fanout([ev(7, 1)], sessions, flusher)
    await asyncio.sleep(0)
    assert [t.writes for t in transports] == [1, 1]
    first = loop.time()
    for seq in range(2, 6):  # four events, one per tick, right after that flush
        fanout([ev(7, seq)], sessions, flusher)
        await asyncio.sleep(0)
    assert [t.writes for t in transports] == [1, 1]  # held: the gateway is busy
    while transports[0].writes < 2:  # noqa: ASYNC110 - polls a fake transport's counter
        await asyncio.sleep(0.005)
    assert loop.time() - first < window + 0.04  # bounded by the window (+ timer slack)
    assert [t.writes for t in transports] == [2, 2]  # the four ticks in one write each
    for t in transports:
        assert [(f["s"], f["d"]["seq"]) for f in decoded(t)] == [  # type: ignore[index]
            (i, i) for i in range(1, 6)
        ]


async def test_paced_catch_up_flushes_at_once_when_it_waits_for_the_socket() -> None:
    flusher = Flusher(window_s=10.0)  # a window far longer than the test
    sessions, transports = make_sessions(flusher, [0])
    fanout([ev(7, 1)], sessions, flusher)
    await asyncio.sleep(0)
    sessions[0].dispatch_catchup(ev(8, 1))  # within the window: would wait 10 s
    await asyncio.wait_for(sessions[0].out.drained(), 1.0)
    assert transports[0].writes == 2
