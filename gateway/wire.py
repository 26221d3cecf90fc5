"""Gateway-private wire helpers: envelope codecs, DISPATCH templates, inbound payload types.

Why here and not in ``protocol/``: ``protocol/`` is being written in parallel; this module holds
only what the gateway needs to speak PROTOCOL.md v1 today. Once ``protocol/`` ships its codecs,
these helpers can delegate to it without changing callers.

The DISPATCH template is the fan-out trick: a room event's envelope is identical for every
recipient except ``s``, so it is encoded once per encoding as ``prefix + s + suffix``.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeVar

import msgspec

_T = TypeVar("_T")

Encoding = Literal["json", "msgpack"]
ENCODINGS: Final = ("json", "msgpack")

# --- opcodes (PROTOCOL.md section 2) ----------------------------------------------------------
DISPATCH: Final = 0
HEARTBEAT: Final = 1
IDENTIFY: Final = 2
PRESENCE_UPDATE: Final = 3
SUBSCRIBE: Final = 4
UNSUBSCRIBE: Final = 5
RESUME: Final = 6
RECONNECT: Final = 7
SEND: Final = 8
INVALID_SESSION: Final = 9
HELLO: Final = 10
HEARTBEAT_ACK: Final = 11
TYPING: Final = 12
REPLY: Final = 13


class Close:
    """Close codes (PROTOCOL.md section 5)."""

    NORMAL: Final = 1000
    GOING_AWAY: Final = 1001
    INTERNAL: Final = 4000
    HEARTBEAT_TIMEOUT: Final = 4001
    DECODE_ERROR: Final = 4002
    NOT_IDENTIFIED: Final = 4003
    ALREADY_IDENTIFIED: Final = 4004
    UNKNOWN_OPCODE: Final = 4005
    RATE_LIMITED: Final = 4008
    SLOW_CONSUMER: Final = 4010
    DRAINING: Final = 4011
    AUTH_FAILED: Final = 4501
    FRAME_TOO_LARGE: Final = 4502
    ORIGIN_NOT_ALLOWED: Final = 4503
    BAD_VERSION_OR_ENCODING: Final = 4504


class DecodeError(Exception):
    """Not valid JSON/msgpack, or not the envelope, or a payload of the wrong shape (4002)."""


# --- inbound (client -> server) ----------------------------------------------------------------
class Envelope(msgspec.Struct):
    op: int
    d: Any = None
    s: int | None = None
    t: str | None = None
    id: int | None = None


RoomId = int | str  # decimal strings on the wire; ints tolerated


class ClientInfo(msgspec.Struct):
    name: str = ""
    version: str = ""


class IdentifyData(msgspec.Struct):
    token: str
    client: ClientInfo | None = None
    subscribe: str | list[RoomId] | None = None


class RoomAfter(msgspec.Struct):
    room_id: RoomId
    after_seq: int | None = None


class SubscribeData(msgspec.Struct):
    rooms: list[RoomAfter]


class UnsubscribeData(msgspec.Struct):
    rooms: list[RoomId]


class ResumeData(msgspec.Struct):
    token: str
    session_id: str
    seq: int | None = None


class SendData(msgspec.Struct):
    room_id: RoomId
    content: str
    nonce: str


class TypingData(msgspec.Struct):
    room_id: RoomId


class PresenceData(msgspec.Struct):
    status: Literal["online", "idle", "dnd", "invisible"]


def room_id_of(value: RoomId) -> int:
    """A room id from the wire; a non-decimal string is a payload error (4002)."""
    if isinstance(value, int):
        return value
    if not value.isdigit():
        raise DecodeError(f"bad room id {value!r}")
    return int(value)


_json_env = msgspec.json.Decoder(Envelope)
_mp_env = msgspec.msgpack.Decoder(Envelope)


def decode_envelope(encoding: Encoding, data: bytes | str) -> Envelope:
    try:
        if encoding == "json":
            return _json_env.decode(data)
        if isinstance(data, str):
            raise DecodeError("msgpack needs binary frames")
        return _mp_env.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(str(exc)) from exc


def payload(d: Any, kind: type[_T]) -> _T:
    """Validate an op's ``d`` against its Struct (any failure is a decode error, 4002)."""
    try:
        return msgspec.convert(d, kind)
    except msgspec.ValidationError as exc:
        raise DecodeError(str(exc)) from exc


# --- outbound (server -> client) ---------------------------------------------------------------
_json_enc = msgspec.json.Encoder()
_mp_enc = msgspec.msgpack.Encoder()


def encode(
    encoding: Encoding,
    op: int,
    d: Any = None,
    *,
    s: int | None = None,
    t: str | None = None,
    id: int | None = None,
) -> bytes:
    env = {"op": op, "d": d, "s": s, "t": t, "id": id}
    return _json_enc.encode(env) if encoding == "json" else _mp_enc.encode(env)


def dispatch_template(encoding: Encoding, t: str, d: Any) -> tuple[bytes, bytes]:
    """``(prefix, suffix)`` such that ``prefix + seq_bytes(s) + suffix`` is a full DISPATCH."""
    if encoding == "json":
        head = b'{"op":0,"t":' + _json_enc.encode(t) + b',"id":null,"d":'
        return head + _json_enc.encode(d) + b',"s":', b"}"
    # fixmap of 5 pairs; "s" last so its value is the tail of the frame.
    parts = [b"\x85"]
    for key, value in (("op", 0), ("t", t), ("id", None), ("d", d)):
        parts.append(_mp_enc.encode(key))
        parts.append(_mp_enc.encode(value))
    parts.append(_mp_enc.encode("s"))
    return b"".join(parts), b""


def seq_bytes(encoding: Encoding, s: int) -> bytes:
    return str(s).encode() if encoding == "json" else _mp_enc.encode(s)
