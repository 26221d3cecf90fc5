"""Input rules of chat_core (docs/protocol.md §6 limits). Each check returns the value or raises
``BadInput`` with a message a user can act on. Content is never trimmed: what was sent is
what is stored."""

from __future__ import annotations

from shardchat.errors import BadInput

MAX_ROOM_NAME_CHARS = 100
MAX_EMOJI_CHARS = 32
MAX_HISTORY_LIMIT = 100


def content(value: str, max_chars: int, *, allow_empty: bool = False) -> str:
    """``allow_empty``: a message with attachments may have no text."""
    if not isinstance(value, str) or not (allow_empty or value.strip()):
        raise BadInput("content must not be empty")
    if len(value) > max_chars:
        raise BadInput(f"content is longer than {max_chars} characters")
    return value


def nonce(value: str, max_bytes: int) -> str:
    if not isinstance(value, str) or not value:
        raise BadInput("nonce is required")
    if len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise BadInput(f"nonce is longer than {max_bytes} bytes")
    return value


def emoji(value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInput("emoji must not be empty")
    if len(value) > MAX_EMOJI_CHARS:
        raise BadInput(f"emoji is longer than {MAX_EMOJI_CHARS} characters")
    return value


def room_name(value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInput("room name must not be empty")
    if len(value) > MAX_ROOM_NAME_CHARS:
        raise BadInput(f"room name is longer than {MAX_ROOM_NAME_CHARS} characters")
    return value


def history_limit(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_HISTORY_LIMIT:
        raise BadInput(f"limit must be between 1 and {MAX_HISTORY_LIMIT}")
    return value


def snowflake(value: int, what: str) -> int:
    """Ids come from clients as decimal strings: reject what could not be one of ours."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < (1 << 63):
        raise BadInput(f"{what} is not a valid id")
    return value
