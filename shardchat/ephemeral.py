"""Ephemeral events between processes: typing, presence and read state, over the Registry.

They skip Kafka (no room seq, nothing replayed): the publisher sends one msgpack ``Ephemeral``
to the per-gateway channel (``events_channel``) of every gateway the room map lists for the
rooms concerned, and each gateway delivers it to its local sessions (gateway/hub.py):
- ``typing`` / ``presence``: to the other members' sessions in those rooms;
- ``read_state``: to the sessions of ``user_id`` itself in that room, as READ_STATE ``data``.
Gateways publish typing and presence; the edge (any process running ``ChatService.mark_read``
or ``set_room_muted``) publishes read state through ``ReadStateNotifier``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from chat_core.models import ReadState
from shardchat.registry import Registry


def events_channel(gateway_id: str) -> str:
    """Where other processes publish ephemeral events for this gateway."""
    return f"gateway:{gateway_id}:events"


class Ephemeral(msgspec.Struct):
    kind: str  # "typing" | "presence" | "read_state"
    user_id: int
    rooms: list[int]
    status: str = ""  # presence
    data: dict[str, Any] = {}  # read_state: the READ_STATE d


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Ephemeral)


def decode_ephemeral(payload: bytes) -> Ephemeral | None:
    """The message, or None for a payload that is not one (ignored, never fatal)."""
    try:
        return _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def publish_to_room_gateways(
    registry: Registry, msg: Ephemeral, rooms: Iterable[int], skip: str | None = None
) -> None:
    """Publish ``msg`` once to each gateway holding any of ``rooms`` (but ``skip``)."""
    targets: set[str] = set()
    for room_id in rooms:
        targets |= await registry.gateways_for_room(room_id)
    targets.discard(skip or "")
    if targets:
        payload = _encoder.encode(msg)
        for gateway_id in sorted(targets):
            await registry.publish(events_channel(gateway_id), payload)


def read_state_data(state: ReadState) -> dict[str, Any]:
    """The READ_STATE DISPATCH ``d`` (docs/protocol.md section 3)."""
    return {
        "room_id": str(state.room_id),
        "last_read_seq": state.last_read_seq,
        "unread_count": state.unread_count,
        "mention_count": state.mention_count,
        "muted": state.muted,
    }


class ReadStateNotifier:
    """``ChatService``'s ``on_read``: tell the user's gateway sessions in the room."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def __call__(self, user_id: int, state: ReadState) -> None:
        msg = Ephemeral("read_state", user_id, [state.room_id], data=read_state_data(state))
        await publish_to_room_gateways(self.registry, msg, msg.rooms)
