"""The one table of WebSocket close codes (docs/protocol.md section 5).

4000-4499: the client reconnects and RESUMEs. 4500-4999: terminal, the client needs user action
(new token, upgrade) before it connects again. 1000/1001 are the normal WebSocket closes; a client
that closes with them ends its session.
"""

from __future__ import annotations

from enum import IntEnum

#: A WebSocket close reason must fit a control frame: 125 bytes minus the 2-byte code.
MAX_REASON_BYTES = 123


class CloseCode(IntEnum):
    # Each member is (code, description): the table lives in exactly one place.
    description: str

    def __new__(cls, code: int, description: str = "") -> CloseCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.description = description
        return member

    NORMAL = 1000, "normal closure; the session ends"
    GOING_AWAY = 1001, "going away; the session ends"
    INTERNAL_ERROR = 4000, "internal error"
    HEARTBEAT_TIMEOUT = 4001, "heartbeat timeout"
    DECODE_ERROR = 4002, "decode error (not valid JSON/msgpack, or not the envelope)"
    NOT_IDENTIFIED = 4003, "not identified (op before IDENTIFY/RESUME)"
    ALREADY_IDENTIFIED = 4004, "already identified"
    UNKNOWN_OPCODE = 4005, "unknown opcode"
    RATE_LIMITED = 4008, "rate limited"
    SLOW_CONSUMER = 4010, "slow consumer (outbound buffer over its limit)"
    SERVER_DRAINING = 4011, "server draining (after RECONNECT was ignored)"
    AUTHENTICATION_FAILED = 4501, "authentication failed (bad or expired token)"
    FRAME_TOO_LARGE = 4502, "frame too large"
    ORIGIN_NOT_ALLOWED = 4503, "origin not allowed"
    UNSUPPORTED_VERSION = 4504, "unsupported version or encoding"

    @property
    def resumable(self) -> bool:
        """True when the client should reconnect and RESUME after this close."""
        return is_resumable_close(self.value)

    @property
    def terminal(self) -> bool:
        """True when the client must not reconnect without user action."""
        return 4500 <= self.value <= 4999


def is_resumable_close(code: int | None) -> bool:
    """Whether a connection closed with ``code`` leaves its session resumable.

    Applies to closes by either side and to any int (clients may send codes outside the table):
    1000/1001 end the session, 4500-4999 are terminal, everything else (including a dropped
    connection, ``None``) keeps the session for the resume window.
    """
    if code is None:
        return True
    return code not in (1000, 1001) and not 4500 <= code <= 4999


def truncate_reason(reason: str) -> str:
    """Cut ``reason`` to what fits a close frame without splitting a UTF-8 character."""
    raw = reason.encode()
    if len(raw) <= MAX_REASON_BYTES:
        return reason
    return raw[:MAX_REASON_BYTES].decode(errors="ignore")
