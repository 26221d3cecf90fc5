"""AuthService: registration, login (with TOTP), refresh rotation, logout, sessions, revocation.

Refresh tokens rotate: each use returns a new one and marks the old one used. Presenting a used
token again means it was stolen (or the client is broken): the whole family (every token
descended from that login) is revoked, so the thief's and the user's copies both stop working.

Access tokens are revoked with their login: logout, ``revokeSession``, a reused refresh token
(the family) and a password change (every login of the user) write a "not before" to the
Registry and publish a ``user_core.revocation.Revocation`` so live connections close at once.
``authenticate`` checks it on every HTTP request, graphql-ws operation, IDENTIFY and RESUME: one
Registry round trip (an MGET of two keys).

Login attempts are throttled per account (the lower-cased username, known or not) with an
exponential backoff in the Registry, shared by every edge: whoever sends them, with whatever
token, from whatever address.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence

from shardchat.config import Settings
from shardchat.errors import BadInput, Conflict, RateLimited, Unauthenticated
from shardchat.ids import IdGenerator
from shardchat.registry import Registry
from shardchat.store import Store, UserRecord
from user_core import passwords, revocation, tokens, twofactor
from user_core.models import AuthTokens, SessionInfo, User
from user_core.tokens import Principal

USERNAME_RE = re.compile(r"[A-Za-z0-9_.-]{3,32}")
USERNAME_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
MAX_SEARCH_RESULTS = 20
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 128
MAX_CLIENT_CHARS = 200
_BAD_LOGIN = "invalid username or password"
_BAD_REFRESH = "invalid or expired refresh token"
_BAD_TOKEN = "invalid or expired token"
_BAD_CODE = "invalid two-factor code"
#: Users known to exist, per process (users are never deleted, so this never goes stale).
_KNOWN_USERS_MAX = 100_000


def validate_username(username: str) -> str:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise BadInput("username must be 3-32 characters of letters, digits, '_', '.', '-'")
    return username


def validate_password(password: str, username: str) -> str:
    if not isinstance(password, str) or not (
        MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS
    ):
        raise BadInput(
            f"password must be {MIN_PASSWORD_CHARS}-{MAX_PASSWORD_CHARS} characters long"
        )
    problem = passwords.policy_problem(username, password)
    if problem is not None:
        raise BadInput(problem)
    return password


class AuthService:
    """Construct with a started Store and Registry: ``AuthService(store, registry, settings)``.

    ``clock`` (seconds) is injectable for tests; it drives token issue times and expiry.
    """

    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: Settings | None = None,
        *,
        ids: IdGenerator | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings or Settings()
        self.ids = ids or IdGenerator()
        self._clock = clock
        self.access = tokens.AccessTokens(
            self.settings.jwt_keys, self.settings.access_token_ttl_s, clock
        )
        # Users seen to exist, by id: a user is never renamed or deleted, so one read per user
        # per process is exact (authenticate's existence check, READY's username).
        self._known_users: dict[int, User] = {}

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- sessions (refresh-token families) ------------------------------------------------------
    async def _new_session(
        self, user: User, client: str | None = None, issued_ms: int | None = None
    ) -> AuthTokens:
        refresh = tokens.new_refresh_token()
        family = tokens.new_family_id()
        now = self._now_ms()
        await self.store.create_refresh_token(
            tokens.hash_refresh_token(refresh),
            user.id,
            family,
            now,
            now + self.settings.refresh_token_ttl_s * 1000,
            client[:MAX_CLIENT_CHARS] if client else None,
        )
        return self._tokens(user, refresh, family, issued_ms)

    def _tokens(
        self, user: User, refresh: str, family: str, issued_ms: int | None = None
    ) -> AuthTokens:
        return AuthTokens(
            access_token=self.access.issue(user.id, family, issued_ms),
            refresh_token=refresh,
            expires_in=self.settings.access_token_ttl_s,
            user=user,
        )

    async def register(self, username: str, password: str, client: str | None = None) -> AuthTokens:
        """A new user, logged in. A taken username (case-insensitively) is ``Conflict``
        (BAD_USER_INPUT); so is a password of the common list or equal to the username."""
        validate_username(username)
        validate_password(password, username)
        if await self.store.get_user_by_name(username) is not None:  # skip the costly hash
            raise Conflict("username is taken")
        password_hash = await passwords.hash_password_async(password)
        user = User(self.ids.next_id(), username, self._now_ms())
        if not await self.store.create_user(user, password_hash):  # lost a race
            raise Conflict("username is taken")
        return await self._new_session(user, client)

    # --- login with per-account backoff -------------------------------------------------------
    def _login_key(self, username: str) -> str:
        return "login:" + username.lower()[:64]

    async def _check_backoff(self, key: str) -> None:
        wait = await self.registry.backoff_wait(key)
        if wait > 0:
            raise RateLimited(f"too many failed attempts; retry in {max(1, round(wait))} s")

    async def _failed(self, key: str) -> None:
        s = self.settings
        await self.registry.backoff_failure(
            key, s.login_free_failures, s.login_backoff_base_s, s.login_backoff_max_s, 900.0
        )

    async def login(
        self,
        username: str,
        password: str,
        totp_code: str | None = None,
        client: str | None = None,
    ) -> AuthTokens:
        """Unknown user and wrong password give the same error after the same work. With 2FA
        on, a missing code is UNAUTHENTICATED with reason TWO_FACTOR_REQUIRED; a wrong one,
        TWO_FACTOR_INVALID. Failures (password or code) feed the account's backoff; while it is
        locked every attempt, right or wrong, is RATE_LIMITED."""
        if not isinstance(username, str) or not isinstance(password, str):
            raise Unauthenticated(_BAD_LOGIN)
        key = self._login_key(username)
        await self._check_backoff(key)
        if len(password) > MAX_PASSWORD_CHARS:
            await self._failed(key)
            raise Unauthenticated(_BAD_LOGIN)  # no stored password is that long: skip the hash
        record = None
        if USERNAME_RE.fullmatch(username):
            record = await self.store.get_user_by_name(username)
        ok = await passwords.verify_password_async(
            record.password_hash if record else None, password
        )
        if record is None or not ok:
            await self._failed(key)
            raise Unauthenticated(_BAD_LOGIN)
        if record.totp_enabled:
            if not totp_code:
                raise Unauthenticated("two-factor code required", reason="TWO_FACTOR_REQUIRED")
            if not await self._second_factor(record, totp_code):
                await self._failed(key)
                raise Unauthenticated(_BAD_CODE, reason="TWO_FACTOR_INVALID")
        await self.registry.backoff_clear(key)
        return await self._new_session(record.user, client)

    async def refresh(self, refresh_token: str) -> AuthTokens:
        """Rotate: the old token is spent, a new one of the same family is returned. Unknown,
        expired, revoked or reused (which revokes the family, access tokens included) tokens
        are UNAUTHENTICATED."""
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
        if outcome.status == "reused" and outcome.user_id is not None and outcome.family_id:
            await self._revoke(outcome.user_id, [outcome.family_id])
        if outcome.status != "ok" or outcome.user_id is None or outcome.family_id is None:
            raise Unauthenticated(_BAD_REFRESH)
        user = await self.get_user(outcome.user_id)
        if user is None:
            raise Unauthenticated(_BAD_REFRESH)
        return self._tokens(user, new, outcome.family_id)

    async def logout(self, refresh_token: str) -> bool:
        """Revoke the token's whole family (this login on every device it was rotated to), its
        access tokens included. False if the token is unknown or its family was revoked."""
        if not isinstance(refresh_token, str) or not 0 < len(refresh_token) <= 256:
            return False
        token_hash = tokens.hash_refresh_token(refresh_token)
        family = await self.store.refresh_family(token_hash)
        if family is None or not await self.store.revoke_refresh_family(token_hash, self._now_ms()):
            return False
        await self._revoke(family[0], [family[1]])
        return True

    async def sessions(self, actor: Principal) -> list[SessionInfo]:
        return await self.store.list_sessions(actor.user_id, self._now_ms())

    async def revoke_session(self, actor: Principal, session_id: str) -> bool:
        """End one of the actor's logins (refresh and access tokens, live connections)."""
        if not isinstance(session_id, str) or not 0 < len(session_id) <= 64:
            return False
        if not await self.store.revoke_session(actor.user_id, session_id, self._now_ms()):
            return False
        await self._revoke(actor.user_id, [session_id])
        return True

    async def change_password(
        self, actor: Principal, current: str, new: str, client: str | None = None
    ) -> AuthTokens:
        """Every login of the user ends (tokens and live connections); a new one is returned."""
        record = await self.store.get_user_record(actor.user_id)
        if record is None:
            raise Unauthenticated(_BAD_TOKEN)
        key = self._login_key(record.user.username)
        await self._check_backoff(key)
        if not await passwords.verify_password_async(record.password_hash, current):
            await self._failed(key)
            raise Unauthenticated("current password is wrong")
        validate_password(new, record.user.username)
        await self.store.set_password_hash(actor.user_id, await passwords.hash_password_async(new))
        now = self._now_ms()
        families = await self.store.revoke_all_sessions(actor.user_id, now)
        await self._revoke(actor.user_id, families, everything=True, not_before_ms=now + 1)
        return await self._new_session(record.user, client, issued_ms=now + 1)

    async def _revoke(
        self,
        user_id: int,
        families: Sequence[str],
        *,
        everything: bool = False,
        not_before_ms: int | None = None,
    ) -> None:
        rev = revocation.Revocation(
            user_id, list(families), not_before_ms or self._now_ms() + 1, everything
        )
        ttl = self.settings.access_token_ttl_s + 60  # then every token it refuses has expired
        await self.registry.revoke_tokens(revocation.revoked_subjects(rev), rev.not_before_ms, ttl)
        await self.registry.publish(revocation.CHANNEL, revocation.encode(rev))

    # --- access tokens ------------------------------------------------------------------------
    def verify_access(self, token: str) -> Principal:
        """Signature, expiry and shape only (no revocation check): use ``authenticate``."""
        if not isinstance(token, str) or not token or len(token) > 4096:
            raise Unauthenticated(_BAD_TOKEN)
        return self.access.verify(token)

    async def authenticate(self, token: str) -> Principal:
        """The principal of a valid, unrevoked access token of an existing user, else
        ``Unauthenticated``. Raises ``RegistryUnavailable`` when revocation can't be checked."""
        principal = self.verify_access(token)
        await self.check_revoked(principal)
        if await self.get_user(principal.user_id) is None:
            raise Unauthenticated(_BAD_TOKEN)
        return principal

    async def check_revoked(self, principal: Principal) -> None:
        """``Unauthenticated`` if the token was revoked or has expired since it was checked."""
        if principal.expires_at <= self._clock():
            raise Unauthenticated(_BAD_TOKEN)
        held = await self.registry.tokens_not_before(revocation.subjects(principal))
        if max(held) > principal.issued_ms:
            raise Unauthenticated(_BAD_TOKEN)

    # --- two-factor authentication --------------------------------------------------------------
    async def _record(self, actor: Principal) -> UserRecord:
        record = await self.store.get_user_record(actor.user_id)
        if record is None:
            raise Unauthenticated(_BAD_TOKEN)
        return record

    async def _second_factor(self, record: UserRecord, code: str) -> bool:
        """A fresh TOTP code (its step is then spent) or an unused recovery code (spent)."""
        if not isinstance(code, str) or not code or len(code) > 32 or not record.totp_secret:
            return False
        uid = record.user.id
        if twofactor.looks_like_recovery_code(code):
            code_hash = twofactor.hash_recovery_code(code)
            return await self.store.use_recovery_code(uid, code_hash, self._now_ms())
        step = twofactor.matching_step(record.totp_secret, code, self._clock())
        return step is not None and await self.store.use_totp_step(uid, step)

    async def _checked_code(self, record: UserRecord, code: str) -> None:
        key = self._login_key(record.user.username)
        await self._check_backoff(key)
        if not await self._second_factor(record, code):
            await self._failed(key)
            raise BadInput(_BAD_CODE)

    async def begin_two_factor(self, actor: Principal, password: str) -> tuple[str, str]:
        """Start enrolment (the password again: a stolen access token can't lock the user
        out): ``(secret, otpauth URI)``. 2FA stays off until ``confirm_two_factor``."""
        record = await self._record(actor)
        if record.totp_enabled:
            raise BadInput("two-factor authentication is already on")
        key = self._login_key(record.user.username)
        await self._check_backoff(key)
        ok = isinstance(password, str) and await passwords.verify_password_async(
            record.password_hash, password
        )
        if not ok:
            await self._failed(key)
            raise Unauthenticated("password is wrong")
        secret = twofactor.new_secret()
        await self.store.set_totp(actor.user_id, secret, False)
        return secret, twofactor.otpauth_uri(secret, record.user.username)

    async def confirm_two_factor(self, actor: Principal, code: str) -> list[str]:
        """Turn 2FA on with a first code of the enrolled secret; returns the ten recovery codes
        (shown once: only their hashes are kept)."""
        record = await self._record(actor)
        if (
            record.totp_enabled
            or not record.totp_secret
            or twofactor.looks_like_recovery_code(code)
        ):
            raise BadInput("start the two-factor setup first")
        await self._checked_code(record, code)
        codes = twofactor.new_recovery_codes()
        await self.store.set_recovery_codes(
            actor.user_id, [twofactor.hash_recovery_code(c) for c in codes]
        )
        await self.store.set_totp(actor.user_id, record.totp_secret, True)
        return codes

    async def disable_two_factor(self, actor: Principal, code: str) -> bool:
        """Turn 2FA off with a current code or a recovery code."""
        record = await self._record(actor)
        if not record.totp_enabled:
            raise BadInput("two-factor authentication is off")
        await self._checked_code(record, code)
        await self.store.set_totp(actor.user_id, None, False)
        return True

    async def two_factor_status(self, actor: Principal) -> tuple[bool, int]:
        """``(enabled, recovery codes left)``."""
        record = await self._record(actor)
        left = await self.store.recovery_codes_left(actor.user_id) if record.totp_enabled else 0
        return record.totp_enabled, left

    # --- users --------------------------------------------------------------------------------
    async def get_user(self, user_id: int) -> User | None:
        user = self._known_users.get(user_id)
        if user is None:
            user = (await self.store.get_users([user_id])).get(user_id)
            if user is not None:
                if len(self._known_users) >= _KNOWN_USERS_MAX:
                    self._known_users.clear()
                self._known_users[user_id] = user
        return user

    async def get_users(self, user_ids: Sequence[int]) -> dict[int, User]:
        return await self.store.get_users(user_ids)

    async def find_user(self, username: str) -> User | None:
        if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
            return None
        record = await self.store.get_user_by_name(username)
        return None if record is None else record.user

    async def search_users(self, prefix: str, limit: int = 10) -> list[User]:
        """Users whose username starts with ``prefix`` (any case), by username; at most
        ``limit`` (1-20). The prefix is 1-32 username characters."""
        if not isinstance(prefix, str) or not USERNAME_PREFIX_RE.fullmatch(prefix):
            raise BadInput("prefix must be 1-32 characters of letters, digits, '_', '.', '-'")
        if isinstance(limit, bool) or not 1 <= limit <= MAX_SEARCH_RESULTS:
            raise BadInput(f"limit must be between 1 and {MAX_SEARCH_RESULTS}")
        return await self.store.search_users(prefix, limit)
