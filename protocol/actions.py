"""What the session state machine asks its I/O shell to do.

``SendFrame`` and ``Close`` are I/O; the ``Do*``/``Authenticate`` actions are requests the
gateway serves with chat_core/user_core and then answers through the session's methods
(``accept_identify``, ``reply_ok``, ...).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from protocol.close_codes import CloseCode
from protocol.frames import ClientInfo, Encrypted, PresenceStatus, RoomSubscription
from protocol.snowflake import Snowflake


class SendFrame(msgspec.Struct, frozen=True):
    """Write these bytes as one frame (text for json, binary for msgpack)."""

    data: bytes


class Close(msgspec.Struct, frozen=True):
    """Close the WebSocket with ``code`` and ``reason`` (already fits a close frame)."""

    code: CloseCode
    reason: str


class Authenticate(msgspec.Struct, frozen=True):
    """IDENTIFY arrived: verify ``token``; then ``accept_identify`` or ``close(4501)``."""

    token: str
    client: ClientInfo | None
    subscribe: Literal["all"] | tuple[Snowflake, ...] | None


class DoResume(msgspec.Struct, frozen=True):
    """RESUME arrived: verify ``token``, find ``session_id``, replay after ``seq``; then
    ``accept_resume``, ``invalid_session`` or ``close(4501)``."""

    token: str
    session_id: str
    seq: int
    #: RESUME ``rooms``: room -> last room seq the client holds (None: not sent).
    rooms: dict[Snowflake, int] | None = None


class DoSubscribe(msgspec.Struct, frozen=True):
    """SUBSCRIBE: subscribe/recover each room, then ``reply_ok(request_id, ...)``."""

    request_id: int | None
    rooms: tuple[RoomSubscription, ...]


class DoUnsubscribe(msgspec.Struct, frozen=True):
    rooms: tuple[Snowflake, ...]


class DoSend(msgspec.Struct, frozen=True):
    """SEND: store via chat_core, then ``reply_ok`` with the message or ``reply_error``."""

    request_id: int | None
    room_id: Snowflake
    content: str | None
    nonce: str
    attachment_ids: tuple[Snowflake, ...] = ()
    encrypted: Encrypted | None = None


class DoTyping(msgspec.Struct, frozen=True):
    room_id: Snowflake


class DoPresence(msgspec.Struct, frozen=True):
    status: PresenceStatus


Action = (
    SendFrame
    | Close
    | Authenticate
    | DoResume
    | DoSubscribe
    | DoUnsubscribe
    | DoSend
    | DoTyping
    | DoPresence
)
