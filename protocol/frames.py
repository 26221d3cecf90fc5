"""Wire payloads as msgspec Structs (docs/protocol.md sections 2 and 3).

Client-to-server payloads are decoded with full type checks (a wrong type closes with 4002);
unknown keys are ignored so clients may send newer fields to older servers. Ids are
``Snowflake`` (an ``int``) in Python and decimal strings on the wire; ``enc_hook``/``dec_hook``
below do that conversion and are wired into every codec. Payloads are immutable and built
with keyword arguments.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from protocol.opcodes import Op
from protocol.snowflake import INT64_MAX, Snowflake, parse_snowflake

#: Non-negative int64: seqs and heartbeat values.
Seq = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
#: The envelope ``id``: any int64, echoed back unchanged in REPLY.
RequestId = Annotated[int, msgspec.Meta(ge=-INT64_MAX - 1, le=INT64_MAX)]
PresenceStatus = Literal["online", "idle", "dnd", "invisible"]


def enc_hook(obj: Any) -> Any:
    """msgspec encode hook: Snowflake ids go out as decimal strings."""
    if isinstance(obj, Snowflake):
        return str(int(obj))
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def dec_hook(tp: type, obj: Any) -> Any:
    """msgspec decode hook: a Snowflake field accepts only a canonical decimal string."""
    if tp is Snowflake:
        if not isinstance(obj, str):
            raise ValueError("snowflake ids are decimal strings")
        return parse_snowflake(obj)
    raise NotImplementedError(f"cannot decode {tp!r}")


def wire_timestamp(unix_ms: int) -> str:
    """RFC 3339 UTC with milliseconds (``2024-05-01T12:00:00.123Z``), the wire time format."""
    moment = datetime.fromtimestamp(unix_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------
# client -> server
# --------------------------------------------------------------------------------------------


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """op 1. On the wire ``d`` is the bare last ``s`` (or null); wrapped here for typing."""

    seq: int | None = None


class ClientInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: str


class Identify(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """op 2."""

    token: str
    client: ClientInfo | None = None
    subscribe: Literal["all"] | tuple[Snowflake, ...] | None = None


class PresenceUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """op 3."""

    status: PresenceStatus


class RoomSubscription(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    room_id: Snowflake
    after_seq: Seq | None = None


class Subscribe(msgspec.Struct, frozen=True, kw_only=True):
    """op 4; answered with REPLY."""

    rooms: tuple[RoomSubscription, ...]


class Unsubscribe(msgspec.Struct, frozen=True, kw_only=True):
    """op 5."""

    rooms: tuple[Snowflake, ...]


class Resume(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """op 6.

    ``rooms`` (optional, a v1 extension; docs/protocol.md section 8): room id -> the last room
    seq the client holds, for the rooms it is subscribed to. The gateway replays each listed
    room from the CLIENT's position rather than from its own saved one, which may lag after a
    gateway crash; so the replay has no duplicate and no gap. Omitted when None, so the frame
    an older client sends is unchanged.
    """

    token: str
    session_id: str
    seq: Seq
    rooms: dict[Snowflake, Seq] | None = None


class Encrypted(msgspec.Struct, frozen=True, kw_only=True):
    """The payload of a message in an end-to-end encrypted room (docs/e2e.md): base64url
    strings and the key epoch. Sizes and encodings are chat_core rules, not checked here."""

    ciphertext: str
    nonce: str
    epoch: int
    sender_device: str
    signature: str


class Send(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """op 8; answered with REPLY. Content/nonce limits are chat_core rules, not checked here.
    An encrypted room takes ``encrypted`` instead of ``content`` (docs/e2e.md);
    ``attachment_ids`` (ext.): uploads to attach, as ``sendMessage``'s ``attachmentIds``."""

    room_id: Snowflake
    nonce: str
    content: str | None = None
    encrypted: Encrypted | None = None
    attachment_ids: tuple[Snowflake, ...] = ()


class Typing(msgspec.Struct, frozen=True, kw_only=True):
    """op 12."""

    room_id: Snowflake


ClientPayload = (
    Heartbeat | Identify | PresenceUpdate | Subscribe | Unsubscribe | Resume | Send | Typing
)

#: The payload type of each client op (HEARTBEAT is special-cased: its ``d`` is a bare int).
CLIENT_PAYLOAD_TYPES: dict[Op, type[ClientPayload]] = {
    Op.HEARTBEAT: Heartbeat,
    Op.IDENTIFY: Identify,
    Op.PRESENCE_UPDATE: PresenceUpdate,
    Op.SUBSCRIBE: Subscribe,
    Op.UNSUBSCRIBE: Unsubscribe,
    Op.RESUME: Resume,
    Op.SEND: Send,
    Op.TYPING: Typing,
}


class ClientFrame(msgspec.Struct, frozen=True):
    """One decoded client frame: the op, its typed payload and the request ``id`` (or None)."""

    op: Op
    d: ClientPayload
    id: int | None = None


# --------------------------------------------------------------------------------------------
# server -> client: op payloads
# --------------------------------------------------------------------------------------------


class Hello(msgspec.Struct, frozen=True, kw_only=True):
    """op 10, the first frame."""

    heartbeat_interval_ms: int
    gateway_id: str


class Reconnect(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """op 7: reconnect (to ``url`` if given) and RESUME."""

    url: str | None = None


class InvalidSession(msgspec.Struct, frozen=True, kw_only=True):
    """op 9."""

    resumable: bool


class ReplyOk(msgspec.Struct, frozen=True, kw_only=True):
    """op 13, success. ``result`` is whatever the op returns (SEND: the MESSAGE_CREATE shape)."""

    ok: Literal[True] = True
    result: Any = None


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    code: str  # shardchat.errors.ErrorCode: UNAUTHENTICATED, FORBIDDEN, ...
    message: str
    reason: str | None = None  # a finer, stable cause (docs/e2e.md: ROTATION_DUE, ...)


class ReplyError(msgspec.Struct, frozen=True, kw_only=True):
    """op 13, failure."""

    ok: Literal[False] = False
    error: ErrorInfo


def reply_from_wire(d: Any) -> ReplyOk | ReplyError:
    """Type a received REPLY ``d`` (bool tags can't drive a msgspec tagged union)."""
    if isinstance(d, dict) and d.get("ok") is True:
        return msgspec.convert(d, ReplyOk, dec_hook=dec_hook)
    return msgspec.convert(d, ReplyError, dec_hook=dec_hook)


# --------------------------------------------------------------------------------------------
# server -> client: DISPATCH events (t -> d)
# --------------------------------------------------------------------------------------------


class UserInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: Snowflake
    username: str
    status: str


class ReadyRoom(msgspec.Struct, frozen=True, kw_only=True):
    id: Snowflake
    name: str
    last_seq: int


class Ready(msgspec.Struct, frozen=True, kw_only=True):
    session_id: str
    user: UserInfo
    rooms: tuple[ReadyRoom, ...]
    resume_url: str


class Resumed(msgspec.Struct, frozen=True, kw_only=True):
    replayed: int


class RoomSubscribed(msgspec.Struct, frozen=True, kw_only=True):
    room_id: Snowflake
    seq: int
    recovered: bool


class MessageCreate(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    room_id: Snowflake
    seq: int
    id: Snowflake
    author_id: Snowflake
    content: str
    nonce: str | None
    created_at: str
    encrypted: Encrypted | None = None  # encrypted rooms; ``content`` is "" then


class MessageUpdate(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    room_id: Snowflake
    seq: int
    id: Snowflake
    content: str
    edited_at: str
    encrypted: Encrypted | None = None


class MessageDelete(msgspec.Struct, frozen=True, kw_only=True):
    room_id: Snowflake
    seq: int
    id: Snowflake


class Reaction(msgspec.Struct, frozen=True, kw_only=True):
    """REACTION_ADD and REACTION_REMOVE."""

    room_id: Snowflake
    seq: int
    message_id: Snowflake
    user_id: Snowflake
    emoji: str


class Member(msgspec.Struct, frozen=True, kw_only=True):
    """MEMBER_JOIN and MEMBER_LEAVE."""

    room_id: Snowflake
    seq: int
    user_id: Snowflake


class TypingStart(msgspec.Struct, frozen=True, kw_only=True):
    """Ephemeral: no room seq."""

    room_id: Snowflake
    user_id: Snowflake


class PresenceChanged(msgspec.Struct, frozen=True, kw_only=True):
    """The PRESENCE_UPDATE event (ephemeral). ``offline`` appears here, never from clients."""

    user_id: Snowflake
    status: str


EventPayload = (
    Ready
    | Resumed
    | RoomSubscribed
    | MessageCreate
    | MessageUpdate
    | MessageDelete
    | Reaction
    | Member
    | TypingStart
    | PresenceChanged
)

#: DISPATCH ``t`` -> payload type.
EVENT_PAYLOAD_TYPES: dict[str, type[EventPayload]] = {
    "READY": Ready,
    "RESUMED": Resumed,
    "ROOM_SUBSCRIBED": RoomSubscribed,
    "MESSAGE_CREATE": MessageCreate,
    "MESSAGE_UPDATE": MessageUpdate,
    "MESSAGE_DELETE": MessageDelete,
    "REACTION_ADD": Reaction,
    "REACTION_REMOVE": Reaction,
    "MEMBER_JOIN": Member,
    "MEMBER_LEAVE": Member,
    "TYPING_START": TypingStart,
    "PRESENCE_UPDATE": PresenceChanged,
}

#: Events that carry a room seq (durable, ordered, recoverable).
DURABLE_EVENTS: frozenset[str] = frozenset(
    {
        "MESSAGE_CREATE",
        "MESSAGE_UPDATE",
        "MESSAGE_DELETE",
        "REACTION_ADD",
        "REACTION_REMOVE",
        "MEMBER_JOIN",
        "MEMBER_LEAVE",
    }
)


def event_from_wire(t: str, d: Any) -> EventPayload | Any:
    """Type a received DISPATCH ``d`` by its ``t``; unknown events come back untouched."""
    tp = EVENT_PAYLOAD_TYPES.get(t)
    if tp is None:
        return d
    return msgspec.convert(d, tp, dec_hook=dec_hook)
