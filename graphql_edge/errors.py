"""GraphQL error -> response dict, with ``extensions.code`` from ``shardchat.errors``.

A resolver raises ``ChatError``; graphql-core wraps it in a ``GraphQLError`` whose
``original_error`` keeps it. Errors without an original error come from parsing, validation or
variable coercion: the caller's fault, so ``BAD_USER_INPUT``. Anything else is a bug: the client
gets a generic ``INTERNAL`` message (no internals leak) and the traceback goes to the log.
"""

from __future__ import annotations

import logging
from typing import Any

from graphql import GraphQLError

from shardchat.errors import ChatError, ErrorCode

log = logging.getLogger(__name__)


def error_code(error: GraphQLError) -> ErrorCode:
    original = error.original_error
    if isinstance(original, ChatError):
        return original.code
    if original is None or isinstance(original, GraphQLError):
        return "BAD_USER_INPUT"
    return "INTERNAL"


def format_error(error: GraphQLError) -> dict[str, Any]:
    code = error_code(error)
    original = error.original_error
    if code == "INTERNAL" and not isinstance(original, ChatError):
        log.error("unexpected error in %s", error.path, exc_info=original)
        message = "internal error"
    elif isinstance(original, ChatError):
        message = original.message
    else:
        message = error.message
    out: dict[str, Any] = {"message": message, "extensions": {"code": code}}
    if isinstance(original, ChatError) and original.reason is not None:
        out["extensions"]["reason"] = original.reason
    if error.locations:
        out["locations"] = [{"line": loc.line, "column": loc.column} for loc in error.locations]
    if error.path is not None:
        out["path"] = error.path
    return out


def simple_error(message: str, code: ErrorCode) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code}}
