"""The gateway wire protocol, sans I/O: frames, codecs, close codes, snowflakes, rate limits
and the session state machine. Pure: imports only the standard library's pure modules and
msgspec (tests/unit/test_protocol_purity.py enforces it).
"""

from protocol.actions import (
    Action,
    Authenticate,
    Close,
    DoPresence,
    DoResume,
    DoSend,
    DoSubscribe,
    DoTyping,
    DoUnsubscribe,
    SendFrame,
)
from protocol.close_codes import CloseCode, is_resumable_close
from protocol.codec import (
    Codec,
    DispatchEvent,
    DispatchTemplate,
    Encoding,
    Envelope,
    encode_dispatch_prefix,
    negotiate,
)
from protocol.errors import LocalProtocolError, ProtocolError
from protocol.opcodes import Op
from protocol.ratelimit import TokenBucket
from protocol.session import Session, SessionState
from protocol.snowflake import Snowflake, SnowflakeGenerator, parse_snowflake

__all__ = [
    "Action",
    "Authenticate",
    "Close",
    "CloseCode",
    "Codec",
    "DispatchEvent",
    "DispatchTemplate",
    "DoPresence",
    "DoResume",
    "DoSend",
    "DoSubscribe",
    "DoTyping",
    "DoUnsubscribe",
    "Encoding",
    "Envelope",
    "LocalProtocolError",
    "Op",
    "ProtocolError",
    "SendFrame",
    "Session",
    "SessionState",
    "Snowflake",
    "SnowflakeGenerator",
    "TokenBucket",
    "encode_dispatch_prefix",
    "is_resumable_close",
    "negotiate",
    "parse_snowflake",
]
