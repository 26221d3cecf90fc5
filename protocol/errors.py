"""Exceptions of the protocol package."""

from __future__ import annotations

from protocol.close_codes import CloseCode, truncate_reason


class ProtocolError(Exception):
    """The peer broke the protocol; the connection closes with ``close_code``.

    ``reason`` is already cut to fit a close frame, so the I/O shell can send it as is.
    """

    def __init__(self, close_code: CloseCode, reason: str = "") -> None:
        self.close_code = close_code
        self.reason = truncate_reason(reason or close_code.description)
        super().__init__(f"{int(close_code)}: {self.reason}")


class LocalProtocolError(RuntimeError):
    """The local code (the gateway) called the session in a state where that is not allowed.

    A bug in the caller, never caused by the peer (as h11's LocalProtocolError).
    """
