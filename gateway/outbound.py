"""Per-connection outbound buffers, flushed once per event-loop tick with one write each.

Why not ``await connection.send()``: that is one task switch, one frame build and one syscall
per message per recipient. Here frames are appended to a list and a single ``call_soon``
callback writes every dirty connection's frames with one ``transport.write``.

Why writing to the transport directly is safe: the server never compresses (``compression=None``,
so frames need no extension processing), never fragments, and server frames are unmasked, so a
frame is ``header + payload``. websockets itself writes whole frames per ``transport.write``, so
its own writes (close, pong) interleave with ours at frame boundaries only, exactly like
``websockets.asyncio.server.broadcast`` which also bypasses ``send``. A connection with
extensions falls back to ``protocol.send_text/send_binary`` + ``data_to_send()``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from gateway import metrics

_OPEN: Final = State.OPEN


class FrameSink(Protocol):
    """Where a session's frames go (an Outbound; tests and benchmarks may collect them)."""

    closed: bool

    def push(self, payload: bytes) -> None: ...

    def push3(self, a: bytes, b: bytes, c: bytes) -> None: ...


def frame_header(opcode_byte: int, length: int) -> bytes:
    """RFC 6455 header of an unmasked, final frame (``opcode_byte`` = 0x81 text, 0x82 binary)."""
    if length < 126:
        return bytes((opcode_byte, length))
    if length < 65536:
        return bytes((opcode_byte, 126)) + length.to_bytes(2, "big")
    return bytes((opcode_byte, 127)) + length.to_bytes(8, "big")


class Outbound:
    """Frames due to one connection; bytes queued here + in the transport are bounded."""

    __slots__ = (
        "_base",
        "_conn",
        "_dirty",
        "_flusher",
        "_limit",
        "_on_overflow",
        "_opbyte",
        "_parts",
        "_pending",
        "_raw",
        "_text",
        "_transport",
        "closed",
        "frames",
    )

    def __init__(
        self,
        conn: ServerConnection,
        flusher: Flusher,
        *,
        text: bool,
        limit: int,
        on_overflow: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._transport = conn.transport
        self._flusher = flusher
        self._text = text
        self._opbyte = 0x81 if text else 0x82
        self._limit = limit
        self._on_overflow = on_overflow
        # Raw frame writes only when no extension would have to transform the payload.
        self._raw = not conn.protocol.extensions
        self._parts: list[bytes] = []
        self._pending = 0  # payload bytes in _parts
        self._base = 0  # transport buffer size when this tick's first frame was queued
        self._dirty = False
        self.frames = 0  # frames in _parts
        self.closed = False

    def push(self, payload: bytes) -> None:
        self.push3(payload, b"", b"")

    def push3(self, a: bytes, b: bytes, c: bytes) -> None:
        """Queue one frame whose payload is ``a + b + c`` (a DISPATCH template and its ``s``)."""
        if self.closed:
            return
        n = len(a) + len(b) + len(c)
        if not self._dirty:
            self._dirty = True
            self._base = self._transport.get_write_buffer_size()
            self._flusher.mark(self)
        self._pending += n
        if self._base + self._pending > self._limit:
            self.cut()
            return
        parts = self._parts
        if self._raw:
            parts.append(frame_header(self._opbyte, n))
            parts.append(a)
            if b:
                parts.append(b)
            if c:
                parts.append(c)
        else:
            parts.append(a + b + c)
        self.frames += 1

    def cut(self) -> None:
        """Over the limit: drop what is queued and let the owner close with 4010."""
        if self.closed:
            return
        self.closed = True
        self._parts.clear()
        self._pending = 0
        self.frames = 0
        metrics.SLOW_CONSUMER_CUTS.inc()
        self._on_overflow()

    def discard(self) -> None:
        """The connection is going away: stop queueing."""
        self.closed = True
        self._parts.clear()
        self._pending = 0
        self.frames = 0

    def flush(self) -> tuple[int, int]:
        """Write queued frames in one ``transport.write``; returns ``(frames, bytes)``."""
        self._dirty = False
        parts = self._parts
        if not parts:
            return 0, 0
        frames = self.frames
        self._parts = []
        self._pending = 0
        self.frames = 0
        conn = self._conn
        if self.closed or conn.protocol.state is not _OPEN or self._transport.is_closing():
            return 0, 0
        if self._raw:
            data = b"".join(parts)
        else:
            send = conn.protocol.send_text if self._text else conn.protocol.send_binary
            for payload in parts:
                send(payload)
            data = b"".join(conn.protocol.data_to_send())
        self._transport.write(data)
        return frames, len(data)


class Flusher:
    """Collects dirty Outbounds and flushes all of them in one callback per loop tick."""

    __slots__ = ("_dirty", "_latencies", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._dirty: list[Outbound] = []
        self._scheduled = False
        self._latencies: list[int] = []  # created_at_ms of room events fanned out this tick

    def mark(self, out: Outbound) -> None:
        self._dirty.append(out)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def note_event(self, created_at_ms: int) -> None:
        """Observe this event's delivery latency when its frames are written (end of tick)."""
        self._latencies.append(created_at_ms)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        frames = nbytes = 0
        for out in dirty:
            try:
                f, b = out.flush()
            except Exception:  # a transport that broke mid-tick must not stop the others
                out.discard()
                continue
            frames += f
            nbytes += b
        if frames:
            metrics.FRAMES_OUT.inc(frames)
            metrics.BYTES_OUT.inc(nbytes)
        if self._latencies:
            now_ms = time.time() * 1000.0
            for created in self._latencies:
                metrics.DELIVERY_LATENCY.observe(max(0.0, now_ms - created) / 1000.0)
            self._latencies = []
