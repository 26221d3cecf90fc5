"""Per-operation context: who is calling, the services, and this request's DataLoaders."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from chat_core.models import ReadState, Upload
from graphql_edge.loaders import DataLoader
from graphql_edge.ports import Auth, Chat, Files, Placement, Presence, RoomEventSource
from graphql_edge.ratelimit import TokenBuckets
from shardchat.errors import BadInput, ChatError, RateLimited, Unauthenticated
from user_core.models import User
from user_core.tokens import Principal


@dataclass(slots=True)
class Services:
    """Everything long-lived an operation may use; one per app."""

    auth: Auth
    chat: Chat
    placement: Placement
    events: RoomEventSource | None
    presence: Presence | None
    mutation_limiter: TokenBuckets  # per user (per IP before login)
    query_limiter: TokenBuckets  # root fields, per user (per IP before login)
    auth_limiter: TokenBuckets  # register/login/refresh/2FA, per client IP always
    search_limiter: TokenBuckets  # searchUsers, per user
    files: Files | None = None


@dataclass(slots=True)
class Context:
    services: Services
    principal: Principal | None
    auth_error: ChatError | None  # why a presented token was refused (None: none presented)
    client_ip: str  # the real client address (behind trusted proxies: X-Forwarded-For's)
    client: str | None = None  # what the session list shows of a login (User-Agent)
    users: DataLoader[int, User] = field(init=False)
    statuses: DataLoader[int, str] = field(init=False)
    members: DataLoader[int, list[int]] = field(init=False)
    shared: DataLoader[int, bool] = field(init=False)
    read_states: DataLoader[int, ReadState] = field(init=False)
    uploads: DataLoader[int, Upload] = field(init=False)

    def __post_init__(self) -> None:
        self.users = DataLoader(self._load_users)
        self.statuses = DataLoader(self._load_statuses)
        self.members = DataLoader(self._load_members)
        self.shared = DataLoader(self._load_shared)
        self.read_states = DataLoader(self._load_read_states)
        self.uploads = DataLoader(self._load_uploads)

    @property
    def user_id(self) -> int | None:
        return None if self.principal is None else self.principal.user_id

    def require_principal(self) -> Principal:
        if self.principal is None:
            why = self.auth_error
            if why is None:
                raise Unauthenticated("authentication required")
            raise type(why)(why.message, reason=why.reason)  # a fresh one per field
        return self.principal

    def require_user(self) -> int:
        return self.require_principal().user_id

    def _caller_key(self) -> str:
        return f"u:{self.user_id}" if self.user_id is not None else f"ip:{self.client_ip}"

    def require_files(self) -> Files:
        if self.services.files is None:
            raise BadInput("files are not enabled on this server")
        return self.services.files

    def take_mutation_token(self) -> None:
        if not self.services.mutation_limiter.allow(self._caller_key()):
            raise RateLimited("too many mutations; slow down")

    def take_auth_token(self) -> None:
        """Auth mutations are charged to the client address, whatever token came along: a
        token of one's own must not buy more guesses at someone else's password."""
        if not self.services.auth_limiter.allow(f"ip:{self.client_ip}"):
            raise RateLimited("too many sign-in attempts from this address; slow down")

    def take_query_tokens(self, root_fields: int) -> bool:
        return self.services.query_limiter.allow(self._caller_key(), root_fields)

    def take_search_token(self) -> None:
        if not self.services.search_limiter.allow(f"u:{self.user_id}"):
            raise RateLimited("too many searches; slow down")

    async def _load_users(self, ids: list[int]) -> dict[int, User]:
        return await self.services.auth.get_users(ids)

    async def _load_statuses(self, ids: list[int]) -> dict[int, str]:
        presence = self.services.presence
        if presence is None:
            return {}
        return await presence.get_presence(ids)

    async def _load_shared(self, ids: list[int]) -> dict[int, bool]:
        viewer = self.require_user()
        shared = await self.services.chat.shares_room_with(viewer, ids)
        return {i: i in shared or i == viewer for i in ids}

    async def _load_uploads(self, ids: list[int]) -> dict[int, Upload]:
        return await self.require_files().uploads(ids)

    async def _load_members(self, room_ids: list[int]) -> dict[int, list[int]]:
        # ChatService has no multi-room member query yet: one concurrent call per room listed
        # (rooms { members } only; a page of messages never needs this).
        actor = self.require_user()
        chat = self.services.chat
        lists: Sequence[list[int]] = await asyncio.gather(
            *(chat.room_members(actor, rid) for rid in room_ids)
        )
        return dict(zip(room_ids, lists, strict=True))

    async def _load_read_states(self, room_ids: list[int]) -> dict[int, ReadState]:
        return await self.services.chat.read_states(self.require_user(), room_ids)
