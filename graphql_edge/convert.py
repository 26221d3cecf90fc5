"""Wire formats: ids as decimal strings, times as ISO 8601 UTC strings, events as GraphQL objects.

``iso_ms`` is chat_core's, so GraphQL times and DISPATCH times are formatted identically.
"""

from __future__ import annotations

from typing import Any

from chat_core.events import iso_ms
from chat_core.models import Attachment, Message, RoomEvent
from shardchat.e2e import scheme
from shardchat.errors import BadInput

__all__ = [
    "b64_arg",
    "encrypted_input",
    "encrypted_object",
    "event_object",
    "event_typename",
    "iso_ms",
    "parse_id",
]

_MAX_ID = 2**63 - 1


def parse_id(value: Any, what: str = "id") -> int:
    """A snowflake from its decimal string; anything else is the caller's mistake."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        n = int(value)
        if n <= _MAX_ID:
            return n
    raise BadInput(f"{what} must be a decimal id string")


def _time(value: Any, fallback_ms: int) -> str:
    """Event payload times may be ISO strings or epoch ms; normalise to ISO."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return iso_ms(value)
    return iso_ms(fallback_ms)


_EVENT_TYPENAMES = {
    "MESSAGE_UPDATE": "MessageUpdated",
    "MESSAGE_DELETE": "MessageDeleted",
    "REACTION_ADD": "ReactionAdded",
    "REACTION_REMOVE": "ReactionRemoved",
    "MEMBER_JOIN": "MemberJoined",
    "MEMBER_LEAVE": "MemberLeft",
}


def event_object(event: RoomEvent) -> Message | dict[str, Any]:
    """A durable room event as the ``RoomEvent`` union member the schema resolves it to."""
    d = event.data
    if event.type == "MESSAGE_CREATE":
        return Message(
            id=int(d["id"]),
            room_id=event.room_id,
            seq=event.seq,
            author_id=int(d["author_id"]),
            content=str(d.get("content", "")),
            nonce=d.get("nonce"),
            created_at_ms=event.created_at_ms,
            mentions=tuple(int(u) for u in d.get("mentions", ())),
            attachments=tuple(
                Attachment(
                    int(a["id"]),
                    a["filename"],
                    a["content_type"],
                    a["size"],
                    a.get("width"),
                    a.get("height"),
                )
                for a in d.get("attachments", ())
            ),
            encrypted=d.get("encrypted"),
        )
    typename = _EVENT_TYPENAMES.get(event.type)
    if typename is None:
        raise ValueError(f"unknown room event type {event.type!r}")
    obj: dict[str, Any] = {"__typename": typename, "roomId": str(event.room_id), "seq": event.seq}
    if "id" in d:
        obj["id"] = str(d["id"])
    if "message_id" in d:
        obj["messageId"] = str(d["message_id"])
    if "user_id" in d:
        obj["userId"] = str(d["user_id"])
    if event.type == "MEMBER_LEAVE":
        removed_by = d.get("removed_by")
        obj["removedBy"] = None if removed_by is None else str(removed_by)
    if "emoji" in d:
        obj["emoji"] = d["emoji"]
    if "content" in d:
        obj["content"] = d["content"]
    if event.type == "MESSAGE_UPDATE":
        obj["editedAt"] = _time(d.get("edited_at"), event.created_at_ms)
        obj["encrypted"] = encrypted_object(d.get("encrypted"))
    return obj


def encrypted_object(wire: dict[str, Any] | None) -> dict[str, Any] | None:
    """The gateway/stored form ``{ciphertext, nonce, epoch, sender_device, signature}`` as the
    GraphQL ``EncryptedPayload`` (camelCase)."""
    return None if wire is None else scheme.wire_to_graphql(wire)


def encrypted_input(arg: dict[str, Any] | None) -> dict[str, Any] | None:
    """``EncryptedPayloadInput`` -> the gateway/stored form (checked by chat_core)."""
    return None if arg is None else scheme.graphql_to_wire(arg)


def b64_arg(value: str, what: str, size: int | None = None) -> bytes:
    """A base64url (no padding) argument as bytes; BAD_USER_INPUT when it is not one."""
    try:
        return scheme.b64d(value, size, what)
    except scheme.SchemeError as exc:
        raise BadInput(str(exc)) from None


def event_typename(value: Any) -> str:
    return "Message" if isinstance(value, Message) else str(value["__typename"])
