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
