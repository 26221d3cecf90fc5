"""Domain values of chat_core. Ids are snowflakes (ints here, decimal strings on the wire)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

#: Durable room event types (docs/protocol.md section 3); each carries a room ``seq``.
EVENT_TYPES = (
    "MESSAGE_CREATE",
    "MESSAGE_UPDATE",
    "MESSAGE_DELETE",
    "REACTION_ADD",
    "REACTION_REMOVE",
    "MEMBER_JOIN",
    "MEMBER_LEAVE",
)


class RoomEvent(msgspec.Struct, frozen=True):
    """One durable room event: the outbox row, the Kafka record value, the DISPATCH source.

    ``data`` is exactly the DISPATCH ``d`` of docs/protocol.md (ids as decimal strings, and it
    includes ``room_id`` and ``seq``). ``created_at_ms`` is when the storing transaction ran.
    ``trace`` carries W3C trace context (``traceparent``) when tracing is on.
    """

    room_id: int
    seq: int
    type: str
    data: dict[str, Any]
    created_at_ms: int
    trace: dict[str, str] = {}


class Room(msgspec.Struct, frozen=True):
    """``public``: listed and joinable by anyone; else only invited users join (the default).
    ``direct``: the one two-person room of a pair (``ChatService.open_direct_room``)."""

    id: int
    name: str
    last_seq: int
    created_at_ms: int
    public: bool = False
    direct: bool = False
    encrypted: bool = False  # end-to-end encrypted (docs/e2e.md); fixed at creation
    key_epoch: int = 0  # the current room key epoch (0: none yet)
    key_rotation_due: bool = False  # members or their devices changed: messages wait for a rotation
    key_changes: int = 0  # how many such changes so far (a rotation names the count it saw)


#: Room roles, strongest first. The owner (one per group room) and admins invite and remove
#: members; only the owner names admins.
ROLES = ("owner", "admin", "member")


class Invitation(msgspec.Struct, frozen=True):
    room_id: int
    room_name: str
    user_id: int  # the invited user
    inviter_id: int
    created_at_ms: int


class ReactionCount(msgspec.Struct, frozen=True):
    emoji: str
    count: int
    me: bool


class Attachment(msgspec.Struct, frozen=True):
    """A file of a message as clients see it; its bytes are in the ObjectStore. ``size`` and
    ``content_type`` are what the server stored and verified (the real type, by its first
    bytes); ``width``/``height`` are set for images."""

    id: int
    filename: str
    content_type: str
    size: int
    width: int | None = None
    height: int | None = None


UploadState = Literal["pending", "ready", "rejected"]
ThumbState = Literal["none", "pending", "ready", "failed"]


class Upload(msgspec.Struct, frozen=True):
    """One file a user asked to upload to a room (``createUpload``), and what became of it.

    ``pending``: granted an upload URL; ``content_type``/``size``/``sha256`` are the client's
    word. ``ready``: verified by the server (size, checksum, real type) and copied to its final
    object; ``content_type``/``size``/``width``/``height`` are then the server's. ``rejected``:
    failed verification (``reason`` says why); its objects are gone. ``message_id`` is set once
    attached; ``deleted_at_ms`` once its message was deleted (the sweeper removes the objects).
    """

    id: int
    owner_id: int
    room_id: int
    filename: str
    content_type: str
    size: int
    sha256: str
    created_at_ms: int
    put_expires_at_ms: int  # the upload URL's deadline
    expires_at_ms: int  # removed after this unless attached
    state: UploadState = "pending"
    reason: str = ""
    message_id: int | None = None
    width: int | None = None
    height: int | None = None
    thumb: ThumbState = "none"
    staging_swept: bool = False
    deleted_at_ms: int | None = None

    def attachment(self) -> Attachment:
        return Attachment(
            self.id, self.filename, self.content_type, self.size, self.width, self.height
        )


class Message(msgspec.Struct, frozen=True):
    id: int
    room_id: int
    seq: int  # the room seq of its MESSAGE_CREATE
    author_id: int
    content: str
    nonce: str | None
    created_at_ms: int
    edited_at_ms: int | None = None
    deleted: bool = False
    reactions: tuple[ReactionCount, ...] = ()
    mentions: tuple[int, ...] = ()  # members @mentioned when it was sent (ascending ids)
    attachments: tuple[Attachment, ...] = ()
    #: the wire ``encrypted`` object ``{ciphertext, nonce, epoch, sender_device, signature}`` of
    #: a message in an encrypted room (``content`` is then ""); None in plain rooms
    encrypted: dict[str, Any] | None = None


class ReadState(msgspec.Struct, frozen=True):
    """How far a member has read a room, and what is new since.

    ``unread_count``: messages of other members created after ``last_read_seq`` (and after the
    member joined); ``mention_count``: those that mention the member. Both are capped (a badge
    shows "999+"), and both still count a message deleted since it was sent.
    """

    room_id: int
    last_read_seq: int
    unread_count: int
    mention_count: int
    muted: bool


class SealedKey(msgspec.Struct, frozen=True):
    """A room key of one epoch sealed to one device, signed by the sealing device
    (docs/e2e.md section 5). Binary fields are raw bytes here, base64url on the wire."""

    room_id: int
    epoch: int
    user_id: int  # the recipient
    device_id: bytes
    key_version: int  # which encryption key of the device it was sealed to
    sender_id: int
    sender_device: bytes
    sealed: bytes
    signature: bytes


def encode_event(event: RoomEvent) -> bytes:
    return _ENCODER.encode(event)


def decode_event(raw: bytes) -> RoomEvent:
    return _DECODER.decode(raw)


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(RoomEvent)
