"""Fan-out of one room event to a room's live sessions on this node.

The event is encoded at most once per encoding (``protocol.codec.DispatchEvent``: ``t`` and
``d`` encoded once, ``s`` spliced). Sessions of a room mostly differ in ``s``, so each distinct
``(encoding, s)`` frame, WebSocket header included, is built once and shared.

Per recipient the loop costs one ``s`` increment, one tail append and one list append into the
connection's Outbound, inlined (no method call), no await, no syscall: the Flusher writes each
connection once at the end of the tick.
"""

from __future__ import annotations

from collections.abc import Iterable

from chat_core.models import RoomEvent
from gateway import metrics
from gateway.outbound import BINARY, TEXT, Flusher, frame_header
from gateway.session import Session
from protocol.codec import DispatchEvent, Encoding

_OPCODES = (TEXT, BINARY)
_ENCODINGS = (Encoding.JSON, Encoding.MSGPACK)

_observe_batch = metrics.FANOUT_BATCH_SIZE.observe


def fanout(event: RoomEvent, sessions: Iterable[Session], flusher: Flusher) -> int:
    """Queue ``event`` to every session; returns the number of recipients."""
    dispatch = DispatchEvent(event.type, event.data)
    built: tuple[dict[int, bytes], dict[int, bytes]] = ({}, {})  # per encoding: s -> frame
    room_id = event.room_id
    seq = event.seq
    count = 0
    for sess in sessions:
        if sess.skip and sess.skip.get(room_id, 0) >= seq:
            continue  # the client already has this one (subscribed with after_seq ahead)
        out = sess.out
        if out.closed:
            continue
        s = sess.s + 1
        sess.s = s
        sess.tail.append(event)
        cache = built[sess.enc_index]
        frame = cache.get(s)
        if frame is None:
            idx = sess.enc_index
            payload = dispatch.frame(s, _ENCODINGS[idx])
            frame = cache[s] = frame_header(_OPCODES[idx], len(payload)) + payload
        # Outbound.push_frame, inlined (see the invariants on Outbound).
        if not out.dirty:
            out.mark()  # once per connection per tick
        out.pending += len(frame)
        if out.base + out.pending > out.limit:
            out.cut()
            continue
        out.parts.append(frame)
        out.frames += 1
        count += 1
    if count:
        _observe_batch(count)
        flusher.note_event(event.created_at_ms)
    return count
