"""Bearer-token authentication shared by HTTP and graphql-transport-ws."""

from __future__ import annotations

import logging

from graphql_edge.ports import Auth
from shardchat.errors import ChatError, Unauthenticated
from shardchat.registry import RegistryUnavailable
from user_core.tokens import Principal

log = logging.getLogger(__name__)


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(auth: Auth, header: str | None) -> tuple[Principal | None, ChatError | None]:
    """(principal, None) for a good token; (None, why) for a bad one; (None, None) for none.

    A bad token does not fail the whole request: login/refresh still work with a stale header,
    and every field that needs a caller raises ``why``: UNAUTHENTICATED with the reason. When
    token revocation can't be checked (the Registry is down) the token is not accepted either,
    but ``why`` is then INTERNAL: the client should retry, its credentials are fine.
    """
    if not header:
        return None, None
    token = bearer_token(header)
    if token is None:
        return None, Unauthenticated("Authorization must be 'Bearer <accessToken>'")
    try:
        return await auth.authenticate(token), None
    except ChatError as exc:
        return None, exc
    except RegistryUnavailable:
        log.warning("token revocation check unavailable: token not accepted")
        return None, ChatError("authentication is unavailable; retry shortly")


#: ``connection_init`` payload keys that carry the token, in the order they are looked at:
#: ``authorization`` as in an HTTP header, ``authToken`` as in Apollo's documentation, ``token``.
CONNECTION_TOKEN_KEYS = ("authorization", "Authorization", "authToken", "token")


def connection_authorization(params: dict[str, object]) -> str | None:
    """The graphql-transport-ws ``connectionParams`` token as an Authorization header value
    (``"Bearer <token>"``); the token may be given bare or already as ``"Bearer <token>"``."""
    for key in CONNECTION_TOKEN_KEYS:
        value = params.get(key)
        if isinstance(value, str) and value.strip():
            value = value.strip()
            return value if " " in value else f"Bearer {value}"
    return None
