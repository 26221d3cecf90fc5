"""Per-operation context: who is calling, the services, and this request's DataLoaders."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from graphql_edge.loaders import DataLoader
from graphql_edge.ports import Auth, Chat, Placement, Presence, RoomEventSource
from graphql_edge.ratelimit import TokenBuckets
from shardchat.errors import RateLimited, Unauthenticated
from user_core.models import User


@dataclass(slots=True)
class Services:
    """Everything long-lived an operation may use; one per app."""

    auth: Auth
    chat: Chat
    placement: Placement
    events: RoomEventSource | None
    presence: Presence | None
    mutation_limiter: TokenBuckets


@dataclass(slots=True)
class Context:
    services: Services
    user_id: int | None
    auth_error: str | None  # why a presented token was refused (None: no token presented)
    client_key: str  # rate-limit key before login: the client address
    users: DataLoader[int, User] = field(init=False)
    statuses: DataLoader[int, str] = field(init=False)
    members: DataLoader[int, list[int]] = field(init=False)

    def __post_init__(self) -> None:
        self.users = DataLoader(self._load_users)
        self.statuses = DataLoader(self._load_statuses)
        self.members = DataLoader(self._load_members)

    def require_user(self) -> int:
        if self.user_id is None:
            raise Unauthenticated(self.auth_error or "authentication required")
        return self.user_id

    def take_mutation_token(self) -> None:
        key = f"u:{self.user_id}" if self.user_id is not None else f"ip:{self.client_key}"
        if not self.services.mutation_limiter.allow(key):
            raise RateLimited("too many mutations; slow down")

    async def _load_users(self, ids: list[int]) -> dict[int, User]:
        return await self.services.auth.get_users(ids)

    async def _load_statuses(self, ids: list[int]) -> dict[int, str]:
        presence = self.services.presence
        if presence is None:
            return {}
        return await presence.get_presence(ids)

    async def _load_members(self, room_ids: list[int]) -> dict[int, list[int]]:
        # ChatService has no multi-room member query yet: one concurrent call per room listed
        # (rooms { members } only; a page of messages never needs this).
        actor = self.require_user()
        chat = self.services.chat
        lists: Sequence[list[int]] = await asyncio.gather(
            *(chat.room_members(actor, rid) for rid in room_ids)
        )
        return dict(zip(room_ids, lists, strict=True))
