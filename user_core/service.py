"""AuthService: registration, login, refresh-token rotation, logout, access-token checks.

Refresh tokens rotate: each use returns a new one and marks the old one used. Presenting a used
token again means it was stolen (or the client is broken): the whole family (every token
descended from that login) is revoked, so the thief's and the user's copies both stop working.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence

from shardchat.config import Settings
from shardchat.errors import BadInput, Conflict, Unauthenticated
from shardchat.ids import IdGenerator
from shardchat.store import Store
from user_core import passwords, tokens
from user_core.models import AuthTokens, User

USERNAME_RE = re.compile(r"[A-Za-z0-9_.-]{3,32}")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 128
_BAD_LOGIN = "invalid username or password"
_BAD_REFRESH = "invalid or expired refresh token"


def validate_username(username: str) -> str:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise BadInput("username must be 3-32 characters of letters, digits, '_', '.', '-'")
    return username


def validate_password(password: str) -> str:
    if not isinstance(password, str) or not (
        MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS
    ):
        raise BadInput(
            f"password must be {MIN_PASSWORD_CHARS}-{MAX_PASSWORD_CHARS} characters long"
        )
    return password


class AuthService:
    """Construct with a started Store: ``AuthService(store, settings)``.

    ``clock`` (seconds) is injectable for tests; it drives token issue times and expiry.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        *,
        ids: IdGenerator | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.ids = ids or IdGenerator()
        self._clock = clock
        self.access = tokens.AccessTokens(
            self.settings.jwt_keys, self.settings.access_token_ttl_s, clock
        )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _issue(self, user: User, refresh_token: str) -> AuthTokens:
        return AuthTokens(
            access_token=self.access.issue(user.id),
            refresh_token=refresh_token,
            expires_in=self.settings.access_token_ttl_s,
            user=user,
        )

    async def _new_session(self, user: User) -> AuthTokens:
        refresh = tokens.new_refresh_token()
        now = self._now_ms()
        await self.store.create_refresh_token(
            tokens.hash_refresh_token(refresh),
            user.id,
            tokens.new_family_id(),
            now,
            now + self.settings.refresh_token_ttl_s * 1000,
        )
        return await self._issue(user, refresh)

    async def register(self, username: str, password: str) -> AuthTokens:
        """A new user, logged in. A taken username (case-insensitively) is ``Conflict``
        (BAD_USER_INPUT)."""
        validate_username(username)
        validate_password(password)
        if await self.store.get_user_by_name(username) is not None:  # skip the costly hash
            raise Conflict("username is taken")
        password_hash = await passwords.hash_password_async(password)
        user = User(self.ids.next_id(), username, self._now_ms())
        if not await self.store.create_user(user, password_hash):  # lost a race
            raise Conflict("username is taken")
        return await self._new_session(user)

    async def login(self, username: str, password: str) -> AuthTokens:
        """Unknown user and wrong password give the same error after the same work."""
        if not isinstance(password, str) or len(password) > MAX_PASSWORD_CHARS:
            raise Unauthenticated(_BAD_LOGIN)  # no stored password is that long: skip the hash
        record = None
        if isinstance(username, str) and USERNAME_RE.fullmatch(username):
            record = await self.store.get_user_by_name(username)
        ok = await passwords.verify_password_async(
            record.password_hash if record else None, password
        )
        if record is None or not ok:
            raise Unauthenticated(_BAD_LOGIN)
        return await self._new_session(record.user)

    async def refresh(self, refresh_token: str) -> AuthTokens:
        """Rotate: the old token is spent, a new one of the same family is returned. Unknown,
        expired, revoked or reused (which revokes the family) tokens are UNAUTHENTICATED."""
        if not isinstance(refresh_token, str) or not 0 < len(refresh_token) <= 256:
            raise Unauthenticated(_BAD_REFRESH)
        new = tokens.new_refresh_token()
        now = self._now_ms()
        outcome = await self.store.rotate_refresh_token(
            tokens.hash_refresh_token(refresh_token),
            tokens.hash_refresh_token(new),
            now,
            now + self.settings.refresh_token_ttl_s * 1000,
        )
        if outcome.status != "ok" or outcome.user_id is None:
            raise Unauthenticated(_BAD_REFRESH)
        users = await self.store.get_users([outcome.user_id])
        user = users.get(outcome.user_id)
        if user is None:
            raise Unauthenticated(_BAD_REFRESH)
        return await self._issue(user, new)

    async def logout(self, refresh_token: str) -> bool:
        """Revoke the token's whole family (this login on every device it was rotated to).
        False if the token is unknown or its family was already revoked."""
        if not isinstance(refresh_token, str) or not 0 < len(refresh_token) <= 256:
            return False
        return await self.store.revoke_refresh_family(
            tokens.hash_refresh_token(refresh_token), self._now_ms()
        )

    def verify_access(self, token: str) -> int:
        """The user id of a valid access token, else ``Unauthenticated``."""
        if not isinstance(token, str) or not token or len(token) > 4096:
            raise Unauthenticated("invalid or expired token")
        return self.access.verify(token)

    async def get_user(self, user_id: int) -> User | None:
        return (await self.store.get_users([user_id])).get(user_id)

    async def get_users(self, user_ids: Sequence[int]) -> dict[int, User]:
        return await self.store.get_users(user_ids)
