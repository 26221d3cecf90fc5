"""One error type for every business rule, shared by the GraphQL edge and the gateway.

``code`` is the GraphQL ``extensions.code`` and the gateway REPLY ``error.code``.
"""

from __future__ import annotations

from typing import Literal

ErrorCode = Literal[
    "UNAUTHENTICATED", "FORBIDDEN", "NOT_FOUND", "BAD_USER_INPUT", "RATE_LIMITED", "INTERNAL"
]


class ChatError(Exception):
    """A rule was broken; ``code`` says which kind, ``message`` says what for a human."""

    code: ErrorCode = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: a finer, stable cause for clients to act on (``extensions.reason`` in GraphQL),
        #: e.g. TWO_FACTOR_REQUIRED
        self.reason = reason


class Unauthenticated(ChatError):
    code = "UNAUTHENTICATED"


class Forbidden(ChatError):
    code = "FORBIDDEN"


class NotFound(ChatError):
    code = "NOT_FOUND"


class BadInput(ChatError):
    code = "BAD_USER_INPUT"


class RateLimited(ChatError):
    code = "RATE_LIMITED"


class Conflict(BadInput):
    """A unique value (a username, say) is taken."""
