"""A session: who it is, its dispatch counter ``s``, its rooms and what resume needs.

Resume exactness: every room event dispatched to the session is remembered in ``tail`` as
``(s, room_id, room_seq)`` until the client acknowledges ``s`` (HEARTBEAT ``d``), then it is
folded into ``acked`` (room -> last acknowledged room seq). On RESUME with the client's last
``s``, entries with ``s <= client_s`` were received and the rest are replayed from the Store,
so a frame written to a socket that then died is never lost and never sent twice.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import msgspec

from chat_core.models import RoomEvent
from gateway import wire
from gateway.outbound import FrameSink

#: Unacknowledged dispatches kept per session; past this the oldest are dropped, which can only
#: cause duplicates on resume (replay from an older seq), never a loss.
MAX_TAIL = 50_000


class SessionBlob(msgspec.Struct):
    """What the Registry keeps between connections (``save_session``)."""

    user_id: int
    s: int
    acked: dict[int, int]  # room -> last room seq the client acknowledged (or was caught up to)
    tail: list[tuple[int, int, int]]  # (s, room_id, room_seq) dispatched, not yet acknowledged
    expires_at_ms: int


_blob_enc = msgspec.msgpack.Encoder()
_blob_dec = msgspec.msgpack.Decoder(SessionBlob)


def new_session_id() -> str:
    return secrets.token_urlsafe(18)


class Session:
    """Hot-path state (``s``, ``out``, ``tail``) plus the resume bookkeeping."""

    __slots__ = (
        "acked",
        "dirty",
        "enc_index",
        "encoding",
        "out",
        "rooms",
        "s",
        "saved_s",
        "session_id",
        "skip",
        "tail",
        "user_id",
    )

    def __init__(
        self,
        session_id: str,
        user_id: int,
        encoding: wire.Encoding,
        out: FrameSink,
        *,
        s: int = 0,
        acked: dict[int, int] | None = None,
    ) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.encoding: wire.Encoding = encoding
        self.enc_index = 0 if encoding == "json" else 1
        self.out = out
        self.s = s
        self.saved_s = -1  # s at the last save_session; differs => state to save
        self.acked: dict[int, int] = acked or {}
        self.tail: list[tuple[int, int, int]] = []
        self.rooms: set[int] = set()  # rooms subscribed (catching up or live)
        self.skip: dict[int, int] = {}  # room -> live events up to this seq are already known
        self.dirty = True

    # --- frames ---------------------------------------------------------------------------
    def dispatch(self, t: str, d: Any) -> int:
        """Queue one non-room DISPATCH (READY, ROOM_SUBSCRIBED, TYPING_START ...)."""
        self.s += 1
        self.out.push(wire.encode(self.encoding, wire.DISPATCH, d, s=self.s, t=t))
        return self.s

    def dispatch_event(self, event: RoomEvent) -> None:
        """Queue one room event outside fan-out (catch-up, replay)."""
        prefix, suffix = wire.dispatch_template(self.encoding, event.type, event.data)
        self.s += 1
        self.tail.append((self.s, event.room_id, event.seq))
        self.out.push3(prefix, wire.seq_bytes(self.encoding, self.s), suffix)
        self.dirty = True

    def send(self, op: int, d: Any = None, *, id: int | None = None) -> None:
        self.out.push(wire.encode(self.encoding, op, d, id=id))

    # --- acknowledgements and resume --------------------------------------------------------
    def ack(self, client_s: int | None) -> None:
        """Fold dispatches the client says it received into ``acked``."""
        if client_s is None or not self.tail:
            return
        tail = self.tail
        i = 0
        n = len(tail)
        acked = self.acked
        while i < n and tail[i][0] <= client_s:
            _, room, seq = tail[i]
            acked[room] = seq
            i += 1
        if i:
            del tail[:i]
            self.dirty = True

    def room_seq(self, room_id: int) -> int | None:
        """Last room seq dispatched to this session (acknowledged or not)."""
        for _, room, seq in reversed(self.tail):
            if room == room_id:
                return seq
        return self.acked.get(room_id)

    def to_blob(self, resume_window_s: float) -> bytes:
        if len(self.tail) > MAX_TAIL:
            del self.tail[: len(self.tail) - MAX_TAIL]
        expires = int((time.time() + resume_window_s) * 1000)
        # Subscribed rooms never dispatched to still need a resume position: what the
        # subscription started from is in ``acked`` already (set at subscribe time).
        acked = {r: s for r, s in self.acked.items() if r in self.rooms}
        tail = [e for e in self.tail if e[1] in self.rooms]
        self.dirty = False
        self.saved_s = self.s
        return _blob_enc.encode(SessionBlob(self.user_id, self.s, acked, tail, expires))


def load_blob(raw: bytes) -> SessionBlob | None:
    try:
        blob = _blob_dec.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if blob.expires_at_ms < time.time() * 1000:
        return None
    return blob


def resume_positions(blob: SessionBlob, client_s: int | None) -> dict[int, int]:
    """Per room, the last room seq the client received, given its last ``s``."""
    positions = dict(blob.acked)
    for s, room, seq in blob.tail:
        if client_s is not None and s <= client_s:
            positions[room] = seq
    return positions
