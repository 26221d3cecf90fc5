"""Access tokens (JWT HS256 with a ``kid`` header) and opaque refresh tokens.

Key rotation: ``Settings.jwt_keys`` maps key id -> secret. The FIRST key signs; every key
verifies. To rotate, put the new key first, keep the old one until the last token it signed
has expired (``access_token_ttl_s``), then drop it. With no keys configured a random key is
generated per process: fine for one dev process, wrong for a cluster (tokens would not verify
on other nodes), so configure keys there.

Access tokens carry ``sid`` (the login's refresh-token family, which ``revokeSession`` and
logout revoke) and ``ims`` (issue time in milliseconds, compared with a user's "not before"):
see ``user_core.revocation``.

Refresh tokens are 32 random bytes, url-safe base64; only their SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Mapping

import jwt
import msgspec

from shardchat.errors import Unauthenticated

ALGORITHM = "HS256"
MIN_KEY_BYTES = 32
MAX_SUBJECT = 2**63 - 1
#: Substrings of secrets that are examples, not keys (compose's old fallback, the k8s
#: placeholder, the usual suspects).
PLACEHOLDERS = ("change-me", "changeme", "change_me", "placeholder", "example", "secret", "default")


class Principal(msgspec.Struct, frozen=True):
    """Who a valid access token speaks for."""

    user_id: int
    session_id: str  # the refresh-token family of the login ("" for tokens without one)
    issued_ms: int
    expires_at: int  # epoch seconds


def weak_key_problem(kid: str, secret: str) -> str | None:
    """Why a signing key must not be used (None: fine)."""
    if len(secret.encode()) < MIN_KEY_BYTES:
        return f"key {kid!r} is shorter than {MIN_KEY_BYTES} bytes"
    lowered = secret.lower()
    for word in PLACEHOLDERS:
        if word in lowered:
            return f"key {kid!r} looks like a placeholder (contains {word!r})"
    if len(set(secret)) < 8:
        return f"key {kid!r} has too few distinct characters"
    return None


class AccessTokens:
    def __init__(
        self,
        keys: Mapping[str, str],
        ttl_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keys:
            keys = {f"dev-{secrets.token_hex(4)}": secrets.token_urlsafe(48)}
        self._keys = dict(keys)
        self._signing_kid = next(iter(self._keys))
        self.ttl_s = ttl_s
        self._clock = clock

    def issue(self, user_id: int, session_id: str, issued_ms: int | None = None) -> str:
        now_s = self._clock()
        now = int(now_s)
        claims = {
            "sub": str(user_id),
            "iat": now,
            "exp": now + self.ttl_s,
            "typ": "access",
            "sid": session_id,
            "ims": issued_ms if issued_ms is not None else int(now_s * 1000),
        }
        return jwt.encode(
            claims,
            self._keys[self._signing_kid],
            algorithm=ALGORITHM,
            headers={"kid": self._signing_kid},
        )

    def verify(self, token: str) -> Principal:
        """Who it speaks for; ``Unauthenticated`` for anything expired, forged, malformed or
        signed with a key we do not have. One message for all: nothing to probe with."""
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(str(header.get("kid")))
            if key is None or header.get("alg") != ALGORITHM:
                raise Unauthenticated("invalid or expired token")
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],  # pinned: never let the token pick ("none", RS/HS mixups)
                options={"require": ["exp", "iat", "sub"]},
            )
            if claims.get("typ") != "access":
                raise Unauthenticated("invalid or expired token")
            sub = claims["sub"]
            if not (isinstance(sub, str) and sub.isascii() and sub.isdigit() and len(sub) < 20):
                raise Unauthenticated("invalid or expired token")
            principal = Principal(
                int(sub),
                str(claims.get("sid", "")),
                int(claims.get("ims", int(claims["iat"]) * 1000)),
                int(claims["exp"]),
            )
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            raise Unauthenticated("invalid or expired token") from None
        if not 0 < principal.user_id <= MAX_SUBJECT:
            raise Unauthenticated("invalid or expired token")
        return principal


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_family_id() -> str:
    return secrets.token_hex(16)
