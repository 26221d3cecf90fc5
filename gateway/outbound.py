"""Per-connection outbound buffers, flushed once per event-loop tick (or per coalescing window,
when busy) with one write each.

Why not ``await connection.send()``: that is one task switch, one frame build and one syscall
per message per recipient. Here complete WebSocket frames (header + payload) are appended to a
list and a single callback writes every dirty connection with one ``b"".join`` and one
``transport.write``.

Why writing to the transport directly is safe: the server never negotiates extensions
(``compression=None``), never fragments, and server frames are unmasked, so a frame is
``header + payload``. websockets writes whole frames per ``transport.write`` too, so its own
writes (close, pong) interleave with ours at frame boundaries only, exactly like
``websockets.asyncio.server.broadcast``, which also bypasses ``send``.

``fanout.py`` appends to ``parts`` inline (no method call per recipient): the fields it touches
are public for that reason and their invariants are documented on the class.

Coalescing when busy (``window_s``, ``flush_window_us`` in the settings): a flush asked for
within ``window_s`` of the end of the previous one waits until that much time has passed since
it, so a connection due one frame per loop tick from a busy room gets the frames of several
ticks in one write (a write costs about as much as the Python work of queueing several frames,
so this is where fan-out at one event per tick gains). A gateway that is not busy (no flush in
the last ``window_s``) still writes in the same tick; the added latency is at most
``window_s``. A paced catch-up flushes at once when it waits for the socket (``drained``).

Two kinds of traffic, two rules. Live traffic (fan-out) is what the client must keep up with:
when the bytes not yet taken by the client pass ``limit`` it is cut (4010). A catch-up the server
sends itself (RESUME replay, SUBSCRIBE ``after_seq``, a live room that fell behind in one burst)
is paced instead: ``push_catchup`` queues a chunk outside the limit and ``drained`` waits until
the socket has taken it, so any backlog arrives with bounded bytes in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

from chat_core.models import RoomEvent
from gateway import metrics

TEXT: Final = 0x81  # FIN + text opcode
BINARY: Final = 0x82  # FIN + binary opcode


class Transport(Protocol):
    """The part of ``asyncio.Transport`` the flusher uses (tests pass fakes)."""

    def write(self, data: Any) -> None: ...

    def get_write_buffer_size(self) -> int: ...

    def is_closing(self) -> bool: ...


def frame_header(opcode_byte: int, length: int) -> bytes:
    """RFC 6455 header of an unmasked, final frame (``opcode_byte`` = TEXT or BINARY)."""
    if length < 126:
        return bytes((opcode_byte, length))
    if length < 65536:
        return bytes((opcode_byte, 126)) + length.to_bytes(2, "big")
    return bytes((opcode_byte, 127)) + length.to_bytes(8, "big")


class Outbound:
    """Frames due to one connection; bytes queued here + in the transport stay under ``limit``.

    Invariants (kept by ``push_frames`` and by ``fanout``, which inlines it):
    ``parts`` holds complete frames not yet written (an item may hold several frames),
    ``pending`` their byte count, ``frames`` the number of frames; ``dirty`` is True iff this
    Outbound is in the flusher's list for this tick;
    ``base`` is the transport's buffer size when the tick's first frame was queued.
    """

    __slots__ = (
        "base",
        "closed",
        "dirty",
        "flusher",
        "frames",
        "limit",
        "on_overflow",
        "opcode",
        "parts",
        "pending",
        "transport",
        "writable",
    )

    def __init__(
        self,
        transport: Transport,
        flusher: Flusher,
        *,
        text: bool,
        limit: int,
        on_overflow: Callable[[], None],
        writable: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.transport = transport
        self.flusher = flusher
        self.opcode = TEXT if text else BINARY
        self.limit = limit
        self.on_overflow = on_overflow
        self.parts: list[bytes] = []
        self.pending = 0
        self.base = 0
        self.dirty = False
        self.frames = 0
        self.closed = False
        #: Returns once the transport's buffer is below its low-water mark (websockets'
        #: ``drain``: the connection is paused above the high-water mark).
        self.writable = writable

    def mark(self) -> None:
        """First frame of this tick: remember the transport backlog, schedule the flush."""
        self.dirty = True
        self.base = self.transport.get_write_buffer_size()
        self.flusher.mark(self)

    def push(self, payload: bytes) -> None:
        """Queue one message (a whole envelope) as one frame."""
        self.push_frame(frame_header(self.opcode, len(payload)) + payload)

    def push_frame(self, frame: bytes) -> None:
        """Queue one complete WebSocket frame (header included)."""
        self.push_frames(frame, 1)

    def push_frames(self, data: bytes, frames: int) -> bool:
        """Queue ``frames`` complete WebSocket frames, concatenated; False if not queued."""
        if self.closed:
            return False
        if not self.dirty:
            self.mark()
        self.pending += len(data)
        if self.base + self.pending > self.limit:
            self.cut()
            return False
        self.parts.append(data)
        self.frames += frames
        return True

    def push_catchup(self, payload: bytes) -> int:
        """Queue one message of a paced catch-up (not counted against ``limit``); its size."""
        if self.closed:
            return 0
        if not self.dirty:
            self.mark()
        frame = frame_header(self.opcode, len(payload)) + payload
        self.parts.append(frame)
        self.frames += 1
        return len(frame)

    async def drained(self) -> None:
        """Return once the frames queued so far are written and the socket has taken all but
        a low-water mark of them (or the connection is going away)."""
        if self.dirty:
            self.flusher.flush()  # now, not after a coalescing window: the socket paces us
        await asyncio.sleep(0)
        if self.closed or self.writable is None:
            return
        try:
            await self.writable()
        except Exception:  # the connection broke: the caller sees ``closed`` soon enough
            return

    def cut(self) -> None:
        """Over the limit: drop what is queued and let the owner close with 4010."""
        if self.closed:
            return
        self.discard()
        metrics.SLOW_CONSUMER_CUTS.inc()
        self.on_overflow()

    def discard(self) -> None:
        """The connection is going away: stop queueing."""
        self.closed = True
        self.parts = []
        self.pending = 0
        self.frames = 0

    def flush(self) -> tuple[int, int]:
        """Write queued frames in one ``transport.write``; returns ``(frames, bytes)``.

        (``Flusher.flush`` inlines this for every dirty connection of a tick.)"""
        self.dirty = False
        parts = self.parts
        if not parts:
            return 0, 0
        frames = self.frames
        self.pending = 0
        self.frames = 0
        # Fan-out queues one chunk per room per tick: often the only item, so no copy.
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()  # reused: no new list per connection per tick (less GC churn)
        if self.closed or self.transport.is_closing():
            return 0, 0
        self.transport.write(data)
        return frames, len(data)


class Flusher:
    """Collects dirty Outbounds and flushes all of them in one callback: at the end of the
    loop tick, or, when the previous flush ended less than ``window_s`` ago (a busy gateway),
    ``window_s`` after it (see the module docstring)."""

    __slots__ = ("_dirty", "_last_end", "_latencies", "_loop", "_scheduled", "window_s")

    def __init__(
        self, loop: asyncio.AbstractEventLoop | None = None, *, window_s: float = 0.0
    ) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._dirty: list[Outbound] = []
        self._scheduled = False
        self._latencies: list[Sequence[RoomEvent]] = []  # room events fanned out this tick
        self.window_s = window_s
        self._last_end = -1e9  # loop time the previous flush ended

    def _schedule(self) -> None:
        self._scheduled = True
        if self.window_s > 0:
            due = self._last_end + self.window_s
            if due > self._loop.time():
                self._loop.call_at(due, self.flush)
                return
        self._loop.call_soon(self.flush)

    def mark(self, out: Outbound) -> None:
        self._dirty.append(out)
        if not self._scheduled:
            self._schedule()

    def note_events(self, events: Sequence[RoomEvent]) -> None:
        """Observe these events' delivery latency when their frames are written."""
        self._latencies.append(events)
        if not self._scheduled:
            self._schedule()

    def flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        frames = nbytes = 0
        per_write = metrics.FRAMES_PER_WRITE.observe
        # Outbound.flush, inlined: this runs once per connection per tick, and a call plus the
        # (frames, bytes) tuple it returns would allocate 1000s of objects per tick (GC churn).
        for out in dirty:
            out.dirty = False
            parts = out.parts
            if not parts:
                continue
            f = out.frames
            out.pending = 0
            out.frames = 0
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            parts.clear()
            if out.closed:
                continue
            try:
                transport = out.transport
                if transport.is_closing():
                    continue
                transport.write(data)
            except Exception:  # a transport that broke mid-tick must not stop the others
                out.discard()
                continue
            frames += f
            nbytes += len(data)
            per_write(f)
        if frames:
            metrics.FRAMES_OUT.inc(frames)
            metrics.BYTES_OUT.inc(nbytes)
            if self.window_s > 0:
                self._last_end = self._loop.time()
        if self._latencies:
            now_ms = time.time() * 1000.0
            observe = metrics.DELIVERY_LATENCY.observe
            for events in self._latencies:
                for event in events:
                    observe(max(0.0, now_ms - event.created_at_ms) / 1000.0)
            self._latencies = []
