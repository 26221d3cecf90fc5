"""Access tokens (JWT HS256 with a ``kid`` header) and opaque refresh tokens.

Key rotation: ``Settings.jwt_keys`` maps key id -> secret. The FIRST key signs; every key
verifies. To rotate, put the new key first, keep the old one until the last token it signed
has expired (``access_token_ttl_s``), then drop it. With no keys configured a random key is
generated per process: fine for one dev process, wrong for a cluster (tokens would not verify
on other nodes), so configure keys there.

Refresh tokens are 32 random bytes, url-safe base64; only their SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Mapping

import jwt

from shardchat.errors import Unauthenticated

ALGORITHM = "HS256"


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

    def issue(self, user_id: int) -> str:
        now = int(self._clock())
        claims = {"sub": str(user_id), "iat": now, "exp": now + self.ttl_s, "typ": "access"}
        return jwt.encode(
            claims,
            self._keys[self._signing_kid],
            algorithm=ALGORITHM,
            headers={"kid": self._signing_kid},
        )

    def verify(self, token: str) -> int:
        """The user id; ``Unauthenticated`` for anything expired, forged, malformed or signed
        with a key we do not have. One message for all: callers learn nothing to probe with."""
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
            user_id = int(claims["sub"])
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            raise Unauthenticated("invalid or expired token") from None
        if user_id <= 0:
            raise Unauthenticated("invalid or expired token")
        return user_id


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_family_id() -> str:
    return secrets.token_hex(16)
