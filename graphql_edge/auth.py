"""Bearer-token authentication shared by HTTP and graphql-transport-ws."""

from __future__ import annotations

from graphql_edge.ports import Auth
from shardchat.errors import ChatError


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(auth: Auth, header: str | None) -> tuple[int | None, str | None]:
    """(user id, None) for a good token; (None, why) for a bad one; (None, None) for none.

    A bad token does not fail the whole request: login/refresh still work with a stale header,
    and every field that needs a caller reports UNAUTHENTICATED with the reason.
    """
    if not header:
        return None, None
    token = bearer_token(header)
    if token is None:
        return None, "Authorization must be 'Bearer <accessToken>'"
    try:
        return auth.verify_access(token), None
    except ChatError as exc:
        return None, exc.message
