"""Fan-out of one room event to a room's live sessions on this node.

The envelope is encoded at most once per encoding (JSON, msgpack); each recipient costs one
``s`` increment, one tail entry and three list appends into its Outbound. No task, no await,
no syscall per recipient: the Flusher writes each connection once at the end of the tick.
"""

from __future__ import annotations

from collections.abc import Iterable

from chat_core.models import RoomEvent
from gateway import metrics, wire
from gateway.outbound import Flusher
from gateway.session import Session

_ENCODINGS: tuple[wire.Encoding, wire.Encoding] = ("json", "msgpack")


def fanout(event: RoomEvent, sessions: Iterable[Session], flusher: Flusher) -> int:
    """Queue ``event`` to every session; returns the number of recipients."""
    templates: list[tuple[bytes, bytes] | None] = [None, None]
    seq_cache: dict[int, bytes] = {}
    room_id = event.room_id
    seq = event.seq
    count = 0
    for sess in sessions:
        if sess.skip and sess.skip.get(room_id, 0) >= seq:
            continue  # the client already has this one (subscribed with after_seq ahead)
        idx = sess.enc_index
        tpl = templates[idx]
        if tpl is None:
            tpl = templates[idx] = wire.dispatch_template(_ENCODINGS[idx], event.type, event.data)
        s = sess.s + 1
        sess.s = s
        sess.tail.append((s, room_id, seq))
        if idx == 0:
            sb = seq_cache.get(s)  # sessions of one room often share s: encode each s once
            if sb is None:
                sb = seq_cache[s] = str(s).encode()
        else:
            sb = wire.seq_bytes("msgpack", s)
        sess.out.push3(tpl[0], sb, tpl[1])
        count += 1
    if count:
        metrics.FANOUT_BATCH.observe(count)
        flusher.note_event(event.created_at_ms)
    return count
