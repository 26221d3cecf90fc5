"""Domain values of user_core."""

from __future__ import annotations

import msgspec

PRESENCE_STATUSES = ("online", "idle", "dnd", "invisible", "offline")


class User(msgspec.Struct, frozen=True):
    id: int
    username: str
    created_at_ms: int


class AuthTokens(msgspec.Struct, frozen=True):
    access_token: str
    refresh_token: str
    expires_in: int  # seconds the access token lives
    user: User


class SessionInfo(msgspec.Struct, frozen=True):
    """One login (a refresh-token family) that can still refresh: what ``sessions`` lists."""

    id: str  # the family id, also the ``sid`` claim of its access tokens
    created_at_ms: int
    last_used_at_ms: int | None
    client: str | None
