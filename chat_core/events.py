"""Builders of the durable room events' ``data``: the DISPATCH ``d`` of docs/protocol.md §3.

Pure functions shared by both Store adapters so the two can never disagree on an event's shape.
Ids travel as decimal strings, times as ISO-8601 UTC with milliseconds and ``Z``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from chat_core.models import Attachment, Message


def iso_ms(ms: int) -> str:
    """``1700000000123`` -> ``"2023-11-14T22:13:20.123Z"`` (integer maths: no float rounding)."""
    dt = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=(ms % 1000) * 1000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _base(room_id: int, seq: int) -> dict[str, Any]:
    return {"room_id": str(room_id), "seq": seq}


def attachment_url(attachment_id: int) -> str:
    """Where a member gets a short-lived download URL for the file: a path of the edge."""
    return f"/files/{attachment_id}"


def attachment(a: Attachment) -> dict[str, Any]:
    return {
        "id": str(a.id),
        "filename": a.filename,
        "content_type": a.content_type,
        "size": a.size,
        "width": a.width,
        "height": a.height,
        "url": attachment_url(a.id),
    }


def message_create(msg: Message, seq: int) -> dict[str, Any]:
    """``attachments`` is present only when the message has some; an encrypted message
    (docs/e2e.md) adds ``encrypted`` (its ``content`` is ""). Others keep the base shape."""
    data = _base(msg.room_id, seq) | {
        "id": str(msg.id),
        "author_id": str(msg.author_id),
        "content": msg.content,
        "nonce": msg.nonce,
        "created_at": iso_ms(msg.created_at_ms),
        "mentions": [str(u) for u in msg.mentions],
    }
    if msg.attachments:
        data["attachments"] = [attachment(a) for a in msg.attachments]
    if msg.encrypted is not None:
        data["encrypted"] = msg.encrypted
    return data


def message_update(
    room_id: int,
    seq: int,
    message_id: int,
    content: str,
    edited_ms: int,
    encrypted: dict[str, Any] | None = None,
) -> dict[str, Any]:
    data = _base(room_id, seq) | {
        "id": str(message_id),
        "content": content,
        "edited_at": iso_ms(edited_ms),
    }
    if encrypted is not None:
        data["encrypted"] = encrypted
    return data


def message_delete(room_id: int, seq: int, message_id: int) -> dict[str, Any]:
    return _base(room_id, seq) | {"id": str(message_id)}


def reaction(room_id: int, seq: int, message_id: int, user_id: int, emoji: str) -> dict[str, Any]:
    """Data of REACTION_ADD and REACTION_REMOVE (same shape)."""
    return _base(room_id, seq) | {
        "message_id": str(message_id),
        "user_id": str(user_id),
        "emoji": emoji,
    }


def member(room_id: int, seq: int, user_id: int, removed_by: int | None = None) -> dict[str, Any]:
    """Data of MEMBER_JOIN and MEMBER_LEAVE (same shape); a MEMBER_LEAVE of a member removed by
    the owner or an admin also names them in ``removed_by``."""
    data = _base(room_id, seq) | {"user_id": str(user_id)}
    if removed_by is not None:
        data["removed_by"] = str(removed_by)
    return data
