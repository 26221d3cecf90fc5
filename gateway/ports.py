"""What the gateway needs from user_core and chat_core (structural: any object with these).

Kept as Protocols so the gateway depends on behaviour, not on the concrete services, and tests
can pass the real services built on the SQLite store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from chat_core.models import Message, Room, RoomEvent
from user_core.models import User
from user_core.tokens import Principal


class AuthPort(Protocol):
    async def authenticate(self, token: str) -> Principal:
        """A valid, unrevoked access token's principal; ``Unauthenticated`` otherwise."""
        ...

    async def get_user(self, user_id: int) -> User | None: ...


class ChatPort(Protocol):
    async def get_room(self, actor: int, room_id: int) -> Room:
        """The room if ``actor`` is a member; raises ``NotFound`` / ``Forbidden``."""
        ...

    async def list_rooms(self, actor: int) -> list[Room]: ...

    async def send_message(
        self,
        actor: int,
        room_id: int,
        content: str | None,
        nonce: str,
        attachment_ids: Sequence[int] = (),
        encrypted: dict[str, Any] | None = None,
    ) -> Message:
        """Exactly one of ``content`` and ``encrypted`` (docs/e2e.md) is given."""
        ...

    async def events_after(self, room_id: int, after_seq: int, limit: int) -> list[RoomEvent]: ...
