"""A resumable session: who it is, its dispatch counter ``s``, its rooms, what resume needs.

This is the state that outlives one connection (``protocol.Session`` is the per-connection
state machine). After READY/RESUMED the gateway numbers every DISPATCH here, because fan-out
is a tight loop that must not call into the state machine once per recipient.

Resume exactness: ``tail[i]`` is what DISPATCH ``s = tail_base + 1 + i`` carried: the room
event, or None for a non-room frame (READY, ROOM_SUBSCRIBED, TYPING_START ...). When the client
acknowledges ``s`` (HEARTBEAT ``d``) the entries up to it fold into ``acked`` (room -> last room
seq received). On RESUME the client's ``seq`` decides: entries with ``s <= seq`` were received,
the rest are replayed from the ring/Store, so a frame written to a socket that then died is
never lost and never sent twice, provided the saved blob covers the client's ``seq``. After a
gateway CRASH the last saved blob may be older than the client's ``seq``: a client that sends
RESUME ``rooms`` (its own last room seq per room) is replayed from those positions, exactly;
for one that doesn't, positions come from the blob alone and the replay may repeat events the
client has, which it must drop by room ``seq`` (docs/protocol.md, "Resume after a gateway
crash"). The blob is saved at once whenever the session's rooms change, so it never lacks a
room the client was told about for longer than that save takes.
"""

from __future__ import annotations

import secrets
import time
from typing import Final

import msgspec

from chat_core.models import RoomEvent
from gateway import metrics
from gateway.outbound import Outbound
from protocol.codec import Codec, Encoding

#: Unacknowledged dispatches kept per session; past this the oldest are dropped, which can only
#: cause duplicates on resume (replay from an older seq), never a loss.
MAX_TAIL: Final = 50_000

_CODECS: Final = {e: Codec(e) for e in Encoding}


class SessionBlob(msgspec.Struct):
    """What the Registry keeps between connections (``save_session_if``).

    ``owner`` is the gateway holding the live connection ("" when none); ``epoch`` grows by one
    on every RESUME, so a gateway can tell that the session moved on without it.
    """

    user_id: int
    s: int
    acked: dict[int, int]  # room -> last room seq the client acknowledged (or was caught up to)
    tail: list[tuple[int, int, int]]  # (s, room_id, room_seq) dispatched, not yet acknowledged
    expires_at_ms: int
    owner: str = ""
    epoch: int = 0
    encoding: str = "json"


_blob_enc = msgspec.msgpack.Encoder()
_blob_dec = msgspec.msgpack.Decoder(SessionBlob)


def new_session_id() -> str:
    return secrets.token_urlsafe(18)


class Session:
    """Hot-path state (``s``, ``out``, ``tail``) plus the resume bookkeeping."""

    __slots__ = (
        "acked",
        "codec",
        "dirty",
        "enc_index",
        "encoding",
        "epoch",
        "out",
        "rooms",
        "s",
        "saved_at",
        "saved_s",
        "session_id",
        "skip",
        "tail",
        "tail_base",
        "taken",
        "user_id",
    )

    def __init__(
        self,
        session_id: str,
        user_id: int,
        encoding: Encoding,
        out: Outbound,
        *,
        s: int = 0,
        epoch: int = 0,
    ) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.encoding = encoding
        self.codec = _CODECS[encoding]
        self.enc_index = 0 if encoding is Encoding.JSON else 1
        self.out = out
        self.s = s
        self.epoch = epoch
        self.saved_s = -1  # s at the last save_session_if; differs => state to save
        self.saved_at = 0.0  # time.monotonic() of the last successful save
        self.acked: dict[int, int] = {}
        self.tail: list[RoomEvent | None] = []
        self.tail_base = s  # s of the frame just before tail[0]
        self.rooms: set[int] = set()  # rooms subscribed (catching up or live)
        self.skip: dict[int, int] = {}  # room -> live events up to this seq are already known
        self.dirty = True
        self.taken = False  # resumed on another connection: never save this copy again

    # --- frames ---------------------------------------------------------------------------
    def dispatch(self, t: str, d: object) -> int:
        """Queue one non-room DISPATCH (ROOM_SUBSCRIBED, TYPING_START ...); returns its ``s``."""
        self.s += 1
        self.tail.append(None)
        self.out.push(self.codec.encode_dispatch(t, d, self.s))
        return self.s

    def dispatch_catchup(self, event: RoomEvent) -> int:
        """Queue one room event of a paced catch-up (outside the slow-consumer limit); returns
        the bytes queued."""
        self.s += 1
        self.tail.append(event)
        self.dirty = True
        metrics.CATCHUP_FRAMES.inc()
        return self.out.push_catchup(self.codec.encode_dispatch(event.type, event.data, self.s))

    def numbered(self, events: list[RoomEvent | None], last_s: int) -> None:
        """Record frames the state machine numbered (READY) up to ``last_s``."""
        self.tail.extend(events)
        self.s = last_s
        self.dirty = True

    def hold(self, room_id: int, acked: int) -> bool:
        """Subscribe to ``room_id`` with the client at ``acked`` (saved from now on, before any
        event is sent); False if it was subscribed already (the position is set anyway)."""
        self.acked[room_id] = acked
        self.dirty = True
        if room_id in self.rooms:
            return False
        self.rooms.add(room_id)
        return True

    def sent_seq(self, room_id: int) -> int | None:
        """The last room seq queued to this session for ``room_id`` (acknowledged or not)."""
        for event in reversed(self.tail):
            if event is not None and event.room_id == room_id:
                return event.seq
        return self.acked.get(room_id)

    # --- acknowledgements and resume --------------------------------------------------------
    def ack(self, client_s: int | None) -> None:
        """Fold dispatches the client says it received into ``acked``."""
        if client_s is None:
            return
        n = min(client_s - self.tail_base, len(self.tail))
        if n <= 0:
            return
        tail = self.tail
        acked = self.acked
        for i in range(n):
            event = tail[i]
            if event is not None:
                acked[event.room_id] = event.seq
        del tail[:n]
        self.tail_base += n
        # Not ``dirty``: a saved state whose tail still lists these entries resumes to the same
        # positions (each has ``s`` <= any seq the client can RESUME with), so an ack alone
        # never needs a save; a heartbeat per session per interval would otherwise cost one.

    def forget_room(self, room_id: int) -> None:
        self.acked.pop(room_id, None)
        self.skip.pop(room_id, None)

    def to_blob(self, resume_window_s: float, owner: str) -> bytes:
        if len(self.tail) > MAX_TAIL:
            cut = len(self.tail) - MAX_TAIL
            del self.tail[:cut]
            self.tail_base += cut
        expires = int((time.time() + resume_window_s) * 1000)
        # Subscribed rooms never dispatched to still need a resume position: what the
        # subscription started from is in ``acked`` already (set at subscribe time).
        acked = {r: s for r, s in self.acked.items() if r in self.rooms}
        base = self.tail_base + 1
        tail = [
            (base + i, e.room_id, e.seq)
            for i, e in enumerate(self.tail)
            if e is not None and e.room_id in self.rooms
        ]
        self.dirty = False
        self.saved_s = self.s
        blob = SessionBlob(
            self.user_id, self.s, acked, tail, expires, owner, self.epoch, self.encoding.value
        )
        return _blob_enc.encode(blob)


def load_blob(raw: bytes) -> SessionBlob | None:
    try:
        blob = _blob_dec.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if blob.expires_at_ms < time.time() * 1000:
        return None
    return blob


def resume_positions(blob: SessionBlob, client_s: int) -> dict[int, int]:
    """Per room, the last room seq the client received, given its last ``s``."""
    positions = dict(blob.acked)
    for s, room, seq in blob.tail:
        if s <= client_s:
            positions[room] = seq
    return positions
