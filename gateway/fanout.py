"""Fan-out of a room's due events to the room's live sessions on this node.

Why batches: the log hands over several events of a room at once (one fetch), and the Flusher
writes each connection once per loop tick anyway. So the events due in one room are handled in
ONE pass over the recipients: each recipient gets one chunk holding all of the batch's frames
(WebSocket headers included), and the per-recipient cost (a few attribute stores, one list
append) no longer grows with the number of events.

A chunk depends only on the encoding and on the recipient's ``s`` before the batch, so it is
built once per distinct ``(encoding, s)`` and shared by every recipient with that ``s``. Each
event's ``t`` and ``d`` are encoded at most once per encoding (``DispatchTemplate``: head, hole
for ``s``, tail). A JSON chunk is built with one ``bytes %`` over a format holding every frame
of the batch (header bytes precomputed for the digit count of ``s``), so even when every
recipient has its own ``s`` the build costs about 0.1 us per frame.

Nothing here awaits or writes: frames are queued in each connection's Outbound and the Flusher
writes every connection once at the end of the tick. A recipient whose batch would pass its
outbound limit gets none of it: it is listed in ``overflow`` and the caller decides (cut it as a
slow consumer, or let it catch the room up paced when the batch itself is the burst).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence

from chat_core.models import RoomEvent
from gateway import metrics
from gateway.outbound import BINARY, TEXT, Flusher, frame_header
from gateway.session import Session
from protocol.codec import DispatchEvent, Encoding, msgpack_uint

_OPCODES = (TEXT, BINARY)  # indexed by Session.enc_index
_ENCODINGS = (Encoding.JSON, Encoding.MSGPACK)

_observe_batch = metrics.FANOUT_BATCH_SIZE.observe


class _Chunks:
    """Builds the batch's frames, in one encoding, as one bytes for a given starting ``s``."""

    __slots__ = ("_fmt", "_heads", "_hi", "_json", "_lo", "_n", "_opcode", "_tails")

    def __init__(self, dispatches: Sequence[DispatchEvent], enc_index: int) -> None:
        encoding = _ENCODINGS[enc_index]
        templates = [d.template(encoding) for d in dispatches]
        self._heads = [t.head for t in templates]
        self._tails = [t.tail for t in templates]
        self._json = encoding is Encoding.JSON
        self._opcode = _OPCODES[enc_index]
        self._n = len(templates)
        # The JSON format of the whole batch for one digit count of s, valid for s in
        # [_lo, _hi) (empty until the first build).
        self._fmt = b""
        self._lo = self._hi = 0

    def build(self, s0: int, start: int = 0) -> bytes:
        """Frames of events ``start..`` numbered ``s0 + 1, s0 + 2, ...``, concatenated."""
        if start == 0:
            first = s0 + 1
            n = self._n
            # The last format used fits while every s of the batch has its digit count.
            if self._lo <= first and first + n <= self._hi:
                if n == 1:
                    return self._fmt % first
                return self._fmt % tuple(range(first, first + n))
            if self._json:
                digits = len(b"%d" % first)
                if digits == len(b"%d" % (s0 + n)):  # no carry into a new digit in the batch
                    self._fmt = self._format(digits)
                    self._lo = 10 ** (digits - 1)
                    self._hi = 10**digits
                    return self.build(s0)
        return self._build_each(s0, start)

    def _format(self, digits: int) -> bytes:
        """``%d`` in each frame's hole; literal ``%`` escaped (JSON text may contain it)."""
        opcode = self._opcode
        parts: list[bytes] = []
        for head, tail in zip(self._heads, self._tails, strict=True):
            parts += (
                frame_header(opcode, len(head) + digits + len(tail)),
                head.replace(b"%", b"%%"),
                b"%d",
                tail.replace(b"%", b"%%"),
            )
        return b"".join(parts)

    def _build_each(self, s0: int, start: int) -> bytes:
        """The general path: MessagePack, a digit carry, or a recipient skipping a prefix."""
        opcode = self._opcode
        parts: list[bytes] = []
        s = s0
        for head, tail in zip(self._heads[start:], self._tails[start:], strict=True):
            s += 1
            hole = b"%d" % s if self._json else msgpack_uint(s)
            parts += (frame_header(opcode, len(head) + len(hole) + len(tail)), head, hole, tail)
        return b"".join(parts)


def fanout(
    events: Sequence[RoomEvent],
    sessions: Iterable[Session],
    flusher: Flusher,
    overflow: list[Session] | None = None,
) -> int:
    """Queue ``events`` to every session; returns the number of frames queued.

    ``events`` are consecutive events of ONE room in seq order, none delivered yet. A session
    over its outbound limit gets none of them and is appended to ``overflow`` (cut at once
    when no list is given).
    """
    n = len(events)
    if n == 0:
        return 0
    dispatches = [DispatchEvent(e.type, e.data) for e in events]
    builders: list[_Chunks | None] = [None, None]  # per encoding, made on first use
    built: tuple[dict[int, bytes], dict[int, bytes]] = ({}, {})  # per encoding: s0 -> chunk
    room_id = events[0].room_id
    first_seq = events[0].seq
    full = 0  # recipients of the whole batch
    starts: list[int] = []  # recipients that already had a prefix: index of their first event
    for sess in sessions:
        if sess.skip and sess.skip.get(room_id, 0) >= first_seq:
            # Subscribed with an after_seq ahead of this node: the client has some of these.
            start = bisect_right([e.seq for e in events], sess.skip[room_id])
            if start < n and _push_from(sess, events, start, dispatches, builders):
                starts.append(start)
            continue
        out = sess.out
        if out.closed:
            continue
        s0 = sess.s
        idx = sess.enc_index
        cache = built[idx]
        chunk = cache.get(s0)
        if chunk is None:
            builder = builders[idx]
            if builder is None:
                builder = builders[idx] = _Chunks(dispatches, idx)
            chunk = cache[s0] = builder.build(s0)
        # Outbound.push_frames, inlined (see the invariants on Outbound).
        if not out.dirty:
            out.mark()  # once per connection per tick
        if out.base + out.pending + len(chunk) > out.limit:
            if overflow is None:
                out.cut()
            else:
                overflow.append(sess)
            continue
        out.pending += len(chunk)
        out.parts.append(chunk)
        out.frames += n
        sess.s = s0 + n
        sess.tail += events
        full += 1
    if not full and not starts:
        return 0
    if not starts:
        _observe_batch(full, n)  # every event went to the same ``full`` connections
        flusher.note_events(events)
        return full * n
    delivered: list[RoomEvent] = []
    for i, event in enumerate(events):
        count = full + sum(1 for start in starts if start <= i)
        if count:
            _observe_batch(count)
            delivered.append(event)
    flusher.note_events(delivered)
    return full * n + sum(n - start for start in starts)


def _push_from(
    sess: Session,
    events: Sequence[RoomEvent],
    start: int,
    dispatches: Sequence[DispatchEvent],
    builders: list[_Chunks | None],
) -> bool:
    """Queue ``events[start:]`` to one session (not shared: its frames are its own)."""
    out = sess.out
    if out.closed:
        return False
    idx = sess.enc_index
    builder = builders[idx]
    if builder is None:
        builder = builders[idx] = _Chunks(dispatches, idx)
    chunk = builder.build(sess.s, start)
    sess.s += len(events) - start
    sess.tail += events[start:]
    return out.push_frames(chunk, len(events) - start)
