"""JSON (text frames) and MessagePack (binary frames) codecs for the gateway envelope.

Client frames are decoded in a fixed order so every bad input maps to one close code:
size (4502) -> envelope (4002) -> op (4005) -> typed payload (4002). The envelope is decoded
with ``d`` kept as ``msgspec.Raw`` so the payload is parsed once, straight into its Struct.

Server frames always carry all five envelope keys, in the order ``op, t, s, id, d`` (``null``
where unused). ``d`` goes last so a DISPATCH can be pre-encoded once per event and spliced per
session around its ``s`` (``DispatchTemplate``): the splice is byte-identical to ``encode``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

import msgspec

from protocol.close_codes import CloseCode
from protocol.errors import ProtocolError
from protocol.frames import (
    CLIENT_PAYLOAD_TYPES,
    ClientFrame,
    ClientPayload,
    Heartbeat,
    RequestId,
    Seq,
    dec_hook,
    enc_hook,
)
from protocol.opcodes import CLIENT_OPS, Op

DEFAULT_MAX_FRAME_BYTES: Final = 16 * 1024
PROTOCOL_VERSION: Final = "1"


class Encoding(StrEnum):
    JSON = "json"
    MSGPACK = "msgpack"

    @property
    def text_frames(self) -> bool:
        """JSON travels in text frames, MessagePack in binary frames."""
        return self is Encoding.JSON


def negotiate(version: str | None, encoding: str | None) -> Encoding:
    """Check the ``?v=&encoding=`` query of the gateway URL; absent values mean v=1, json.

    Raises ProtocolError(4504) for anything else.
    """
    if version is not None and version != PROTOCOL_VERSION:
        raise ProtocolError(CloseCode.UNSUPPORTED_VERSION, f"unsupported version {version!r}")
    try:
        return Encoding(Encoding.JSON if encoding is None else encoding)
    except ValueError:
        raise ProtocolError(
            CloseCode.UNSUPPORTED_VERSION, f"unsupported encoding {encoding!r}"
        ) from None


# --------------------------------------------------------------------------------------------
# envelopes
# --------------------------------------------------------------------------------------------

_ABSENT: Final = msgspec.Raw()


class _InEnvelope(msgspec.Struct):
    """A client frame before its payload is parsed. Unknown keys are ignored."""

    op: int
    d: msgspec.Raw = _ABSENT
    s: int | None = None
    t: str | None = None
    id: RequestId | None = None


class _OutEnvelope(msgspec.Struct):
    # Field order is the wire order; DispatchTemplate relies on it.
    op: int
    t: str | None
    s: int | None
    id: int | None
    d: Any


class Envelope(msgspec.Struct, frozen=True):
    """Any decoded frame with an untyped ``d`` (builtins): what a client reads from the server."""

    op: int
    d: Any = None
    s: int | None = None
    t: str | None = None
    id: int | None = None


# One encoder/decoder set per encoding, shared by every Codec: building them is the costly part.
_JSON_ENCODER: Final = msgspec.json.Encoder(enc_hook=enc_hook)
_MSGPACK_ENCODER: Final = msgspec.msgpack.Encoder(enc_hook=enc_hook)
_ENCODERS: Final[dict[Encoding, msgspec.json.Encoder | msgspec.msgpack.Encoder]] = {
    Encoding.JSON: _JSON_ENCODER,
    Encoding.MSGPACK: _MSGPACK_ENCODER,
}
_NULL: Final = {Encoding.JSON: b"null", Encoding.MSGPACK: b"\xc0"}

_Decoder = msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]


def _decoder(encoding: Encoding, tp: Any) -> _Decoder:
    if encoding is Encoding.JSON:
        return msgspec.json.Decoder(tp, dec_hook=dec_hook)
    return msgspec.msgpack.Decoder(tp, dec_hook=dec_hook)


_ENVELOPE_DECODERS: Final = {e: _decoder(e, _InEnvelope) for e in Encoding}
_ANY_DECODERS: Final = {e: _decoder(e, Envelope) for e in Encoding}
_PAYLOAD_DECODERS: Final = {
    e: {
        op: _decoder(e, Seq | None if op is Op.HEARTBEAT else tp)
        for op, tp in CLIENT_PAYLOAD_TYPES.items()
    }
    for e in Encoding
}
_OPS_BY_VALUE: Final = {int(op): op for op in Op}

# What a hostile frame can make msgspec raise; all of it is "not the envelope" (4002).
_DECODE_FAILURES: Final = (msgspec.DecodeError, RecursionError, ValueError, UnicodeError)


class Codec:
    """Decodes client frames and encodes server frames for one encoding. Cheap to create."""

    __slots__ = (
        "_any",
        "_encoder",
        "_envelope",
        "_null",
        "_payloads",
        "encoding",
        "max_frame_bytes",
    )

    def __init__(
        self, encoding: Encoding = Encoding.JSON, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> None:
        self.encoding = encoding
        self.max_frame_bytes = max_frame_bytes
        self._encoder = _ENCODERS[encoding]
        self._envelope = _ENVELOPE_DECODERS[encoding]
        self._any = _ANY_DECODERS[encoding]
        self._payloads = _PAYLOAD_DECODERS[encoding]
        self._null = _NULL[encoding]

    # ---- inbound ------------------------------------------------------------------------------

    def decode_client(self, data: bytes | bytearray | memoryview | str) -> ClientFrame:
        """Decode one client frame or raise ProtocolError with the close code to use."""
        raw = self._checked_bytes(data)
        try:
            envelope: _InEnvelope = self._envelope.decode(raw)
        except _DECODE_FAILURES as exc:
            raise ProtocolError(CloseCode.DECODE_ERROR, f"bad envelope: {exc}") from None
        op = _OPS_BY_VALUE.get(envelope.op)
        if op is None or op not in CLIENT_OPS:
            raise ProtocolError(CloseCode.UNKNOWN_OPCODE, f"unknown opcode {envelope.op}")
        payload_raw = envelope.d if len(envelope.d) else self._null
        try:
            value = self._payloads[op].decode(payload_raw)
        except _DECODE_FAILURES as exc:
            raise ProtocolError(CloseCode.DECODE_ERROR, f"bad {op.name} payload: {exc}") from None
        payload: ClientPayload = Heartbeat(seq=value) if op is Op.HEARTBEAT else value
        return ClientFrame(op, payload, envelope.id)

    def _checked_bytes(self, data: bytes | bytearray | memoryview | str) -> bytes | memoryview:
        limit = self.max_frame_bytes
        if isinstance(data, str):
            # A str is at least as many bytes as characters: reject before copying.
            if len(data) > limit:
                raise ProtocolError(CloseCode.FRAME_TOO_LARGE, f"frame over {limit} bytes")
            try:
                data = data.encode()
            except UnicodeError:
                raise ProtocolError(CloseCode.DECODE_ERROR, "text is not UTF-8") from None
        view = memoryview(data)
        if view.nbytes > limit:
            raise ProtocolError(CloseCode.FRAME_TOO_LARGE, f"frame over {limit} bytes")
        return view

    def decode(self, data: bytes | bytearray | memoryview | str) -> Envelope:
        """Decode any frame without typing ``d`` (clients, tests). Raises ProtocolError(4002)."""
        if isinstance(data, str):
            data = data.encode()
        try:
            envelope: Envelope = self._any.decode(data)
        except _DECODE_FAILURES as exc:
            raise ProtocolError(CloseCode.DECODE_ERROR, f"bad envelope: {exc}") from None
        return envelope

    # ---- outbound -----------------------------------------------------------------------------

    def encode(
        self,
        op: Op | int,
        d: Any = None,
        *,
        t: str | None = None,
        s: int | None = None,
        id: int | None = None,
    ) -> bytes:
        """Encode one frame (server frames, and client frames for clients and tests)."""
        return self._encoder.encode(_OutEnvelope(int(op), t, s, id, d))

    def encode_dispatch(self, t: str, d: Any, s: int) -> bytes:
        """A one-off DISPATCH; fan-out should use ``DispatchEvent`` instead."""
        return self.encode(Op.DISPATCH, d, t=t, s=s)

    def dispatch_template(self, t: str, d: Any) -> DispatchTemplate:
        return encode_dispatch_prefix(t, d, self.encoding)


# --------------------------------------------------------------------------------------------
# DISPATCH fast path: encode d once, splice s per session
# --------------------------------------------------------------------------------------------


class DispatchTemplate:
    """A DISPATCH frame with a hole for ``s``: ``frame(s)`` costs one small join per session."""

    __slots__ = ("_head", "_tail")

    def __init__(self, head: bytes, tail: bytes) -> None:
        self._head = head
        self._tail = tail

    @property
    def head(self) -> bytes:
        """The bytes before ``s``: ``frame(s) == head + <s in this encoding> + tail``.

        Exposed so a fan-out can splice many ``s`` values into one buffer at once."""
        return self._head

    @property
    def tail(self) -> bytes:
        """The bytes after ``s`` (``id``, ``d`` and the envelope's end)."""
        return self._tail

    def frame(self, s: int) -> bytes:
        raise NotImplementedError


class _JsonDispatchTemplate(DispatchTemplate):
    __slots__ = ()

    def frame(self, s: int) -> bytes:
        return b"%b%d%b" % (self._head, s, self._tail)


class _MsgpackDispatchTemplate(DispatchTemplate):
    __slots__ = ()

    def frame(self, s: int) -> bytes:
        return b"".join((self._head, msgpack_uint(s), self._tail))


_MSGPACK_FIXINT: Final = tuple(bytes((i,)) for i in range(0x80))


def msgpack_uint(n: int) -> bytes:
    """The smallest MessagePack encoding of a non-negative int, as msgspec writes it."""
    if 0 <= n < 0x80:
        return _MSGPACK_FIXINT[n]
    if n < 0:
        raise ValueError("dispatch seq must be non-negative")
    if n <= 0xFF:
        return b"\xcc" + n.to_bytes(1, "big")
    if n <= 0xFFFF:
        return b"\xcd" + n.to_bytes(2, "big")
    if n <= 0xFFFF_FFFF:
        return b"\xce" + n.to_bytes(4, "big")
    return b"\xcf" + n.to_bytes(8, "big")


def encode_dispatch_prefix(t: str, d: Any, encoding: Encoding = Encoding.JSON) -> DispatchTemplate:
    """Encode ``t`` and ``d`` once; the result splices any ``s`` into a complete frame."""
    if encoding is Encoding.JSON:
        enc = _JSON_ENCODER.encode
        head = b'{"op":0,"t":' + enc(t) + b',"s":'
        tail = b',"id":null,"d":' + enc(d) + b"}"
        return _JsonDispatchTemplate(head, tail)
    enc = _MSGPACK_ENCODER.encode
    # fixmap of 5 entries, keys as msgspec writes a Struct: op, t, s, id, d.
    head = b"\x85" + enc("op") + enc(0) + enc("t") + enc(t) + enc("s")
    tail = enc("id") + b"\xc0" + enc("d") + enc(d)
    return _MsgpackDispatchTemplate(head, tail)


class DispatchEvent:
    """One event to fan out: ``t``, ``d`` and its templates, encoded lazily once per encoding.

    Share one instance among every recipient session (and their replay buffers): the payload is
    encoded at most twice no matter how many sessions get it.
    """

    __slots__ = ("_json", "_msgpack", "d", "t")

    def __init__(self, t: str, d: Any) -> None:
        self.t = t
        self.d = d
        self._json: DispatchTemplate | None = None
        self._msgpack: DispatchTemplate | None = None

    def template(self, encoding: Encoding) -> DispatchTemplate:
        if encoding is Encoding.JSON:
            if self._json is None:
                self._json = encode_dispatch_prefix(self.t, self.d, encoding)
            return self._json
        if self._msgpack is None:
            self._msgpack = encode_dispatch_prefix(self.t, self.d, encoding)
        return self._msgpack

    def frame(self, s: int, encoding: Encoding) -> bytes:
        return self.template(encoding).frame(s)

    def __repr__(self) -> str:
        return f"DispatchEvent({self.t!r}, {self.d!r})"
