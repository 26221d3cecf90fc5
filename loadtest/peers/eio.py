"""Engine.IO v4 / Socket.IO v5 text packets: pure encode and decode functions, no I/O.

What the peers' load-test client (loadtest/peers/worker.py) speaks over a plain WebSocket at
``/socket.io/?EIO=4&transport=websocket``:

- Engine.IO packet = one WebSocket message: a type digit then the payload. ``0`` OPEN (JSON
  handshake: sid, pingInterval, pingTimeout, maxPayload), ``1`` CLOSE, ``2`` PING, ``3`` PONG,
  ``4`` MESSAGE (carries one Socket.IO packet), ``5`` UPGRADE, ``6`` NOOP. In v4 the SERVER
  sends PING every pingInterval and the client must answer PONG within pingTimeout.
- Socket.IO packet (inside MESSAGE) = ``<type>[<attachments>-][<namespace>,][<ack id>][JSON]``:
  type ``0`` CONNECT, ``1`` DISCONNECT, ``2`` EVENT, ``3`` ACK, ``4`` CONNECT_ERROR, ``5``
  BINARY_EVENT, ``6`` BINARY_ACK. The namespace is left out for ``/``. An EVENT's JSON is an
  array ``[name, arg...]``; an ACK's is the array of the callback's arguments.

So ``40`` connects to ``/``, ``42["send",{...}]`` emits, ``421["join","r"]`` emits asking for
ack 1, and the server answers ``431[true]``. Binary packets are decoded as far as their
placeholders (this client never sends binary data, and its servers send none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

# Engine.IO v4 packet types (one character)
EIO_OPEN, EIO_CLOSE, EIO_PING, EIO_PONG, EIO_MESSAGE, EIO_UPGRADE, EIO_NOOP = "0123456"
# Socket.IO v5 packet types
SIO_CONNECT = 0
SIO_DISCONNECT = 1
SIO_EVENT = 2
SIO_ACK = 3
SIO_CONNECT_ERROR = 4
SIO_BINARY_EVENT = 5
SIO_BINARY_ACK = 6

PING = EIO_PING  # what the server sends, as a whole message
PONG = EIO_PONG  # the client's answer
ENGINE_IO_VERSION = 4
DEFAULT_PATH = "/socket.io/"

_DIGITS = frozenset("0123456789")
_encode_json = msgspec.json.Encoder().encode
_decode_json = msgspec.json.Decoder().decode


class ProtocolError(ValueError):
    """A message that is not a well-formed Engine.IO v4 / Socket.IO v5 packet."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One decoded message. ``sio`` is None unless ``eio`` is ``EIO_MESSAGE``."""

    eio: str
    sio: int | None = None
    namespace: str = "/"
    ack_id: int | None = None
    data: Any = None
    attachments: int = 0

    @property
    def event(self) -> str | None:
        """An EVENT's name."""
        if self.sio in (SIO_EVENT, SIO_BINARY_EVENT):
            name: str = self.data[0]
            return name
        return None

    @property
    def args(self) -> list[Any]:
        """An EVENT's arguments after the name, or an ACK's arguments."""
        if self.sio in (SIO_EVENT, SIO_BINARY_EVENT):
            return list(self.data[1:])
        if self.sio in (SIO_ACK, SIO_BINARY_ACK):
            return list(self.data)
        return []


@dataclass(frozen=True, slots=True)
class Handshake:
    """The Engine.IO OPEN payload."""

    sid: str
    ping_interval_ms: int
    ping_timeout_ms: int
    max_payload: int
    upgrades: tuple[str, ...] = ()


def socketio_url(base: str, path: str = DEFAULT_PATH) -> str:
    """``ws://host:port[/...]`` (or http) -> the WebSocket-only Engine.IO v4 endpoint URL."""
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"not a ws:// or http:// URL: {base!r}")
    query = f"EIO={ENGINE_IO_VERSION}&transport=websocket"
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def _ns_prefix(namespace: str) -> str:
    if not namespace.startswith("/"):
        raise ValueError(f"a namespace starts with '/': {namespace!r}")
    return "" if namespace == "/" else namespace + ","


def _json(value: Any) -> str:
    return _encode_json(value).decode()


def encode_connect(namespace: str = "/", auth: Any = None) -> str:
    """CONNECT to ``namespace`` (``40``), with an optional auth payload (an object)."""
    body = "" if auth is None else _json(auth)
    return f"{EIO_MESSAGE}{SIO_CONNECT}{_ns_prefix(namespace)}{body}"


def encode_disconnect(namespace: str = "/") -> str:
    return f"{EIO_MESSAGE}{SIO_DISCONNECT}{_ns_prefix(namespace)}"


def encode_event(event: str, *args: Any, ack_id: int | None = None, namespace: str = "/") -> str:
    """EVENT ``[event, *args]``; with ``ack_id`` the server answers with an ACK of that id."""
    if ack_id is not None and ack_id < 0:
        raise ValueError("ack ids are non-negative")
    ack = "" if ack_id is None else str(ack_id)
    return f"{EIO_MESSAGE}{SIO_EVENT}{_ns_prefix(namespace)}{ack}{_json([event, *args])}"


def encode_ack(ack_id: int, *args: Any, namespace: str = "/") -> str:
    """ACK ``ack_id`` with the callback's arguments (what a server sends back)."""
    return f"{EIO_MESSAGE}{SIO_ACK}{_ns_prefix(namespace)}{ack_id}{_json(list(args))}"


def decode(text: str | bytes) -> Packet:
    """One WebSocket message -> a Packet; ``ProtocolError`` when it is not one."""
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            text = bytes(text).decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError("binary frames are not Engine.IO text packets") from exc
    if not text:
        raise ProtocolError("empty message")
    kind = text[0]
    if kind == EIO_MESSAGE:
        return _decode_sio(text, 1)
    if kind == EIO_OPEN:
        return Packet(EIO_OPEN, data=_loads(text[1:]))
    if kind in (EIO_PING, EIO_PONG, EIO_CLOSE, EIO_UPGRADE, EIO_NOOP):
        return Packet(kind, data=text[1:] or None)  # e.g. "2probe" during an upgrade
    raise ProtocolError(f"unknown Engine.IO packet type {kind!r}")


def _loads(raw: str) -> Any:
    try:
        return _decode_json(raw)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"bad JSON payload: {raw[:60]!r}") from exc


def _decode_sio(text: str, i: int) -> Packet:
    n = len(text)
    if i >= n or text[i] not in _DIGITS:
        raise ProtocolError("a Socket.IO packet starts with its type digit")
    sio = int(text[i])
    if sio > SIO_BINARY_ACK:
        raise ProtocolError(f"unknown Socket.IO packet type {sio}")
    i += 1
    attachments = 0
    if sio in (SIO_BINARY_EVENT, SIO_BINARY_ACK):
        dash = text.find("-", i)
        if dash <= i or any(ch not in _DIGITS for ch in text[i:dash]):
            raise ProtocolError("a binary packet needs '<attachments>-'")
        attachments = int(text[i:dash])
        i = dash + 1
    namespace = "/"
    if i < n and text[i] == "/":
        comma = text.find(",", i)
        if comma < 0:  # "40/chat": the namespace runs to the end
            namespace, i = text[i:], n
        else:
            namespace, i = text[i:comma], comma + 1
    start = i
    while i < n and text[i] in _DIGITS:
        i += 1
    ack_id = int(text[start:i]) if i > start else None
    data = _loads(text[i:]) if i < n else None
    if sio in (SIO_EVENT, SIO_BINARY_EVENT):
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            raise ProtocolError("an EVENT carries [name, args...]")
    elif sio in (SIO_ACK, SIO_BINARY_ACK):
        if ack_id is None or not isinstance(data, list):
            raise ProtocolError("an ACK carries an id and an argument array")
    elif sio == SIO_CONNECT_ERROR and data is None:
        raise ProtocolError("a CONNECT_ERROR carries a payload")
    return Packet(EIO_MESSAGE, sio, namespace, ack_id, data, attachments)


def handshake(packet: Packet) -> Handshake:
    """The OPEN packet's payload, checked."""
    d = packet.data
    if packet.eio != EIO_OPEN or not isinstance(d, dict):
        raise ProtocolError("not an Engine.IO OPEN packet")
    try:
        return Handshake(
            sid=str(d["sid"]),
            ping_interval_ms=int(d["pingInterval"]),
            ping_timeout_ms=int(d["pingTimeout"]),
            max_payload=int(d.get("maxPayload", 1_000_000)),
            upgrades=tuple(d.get("upgrades", ())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad OPEN payload: {d!r}") from exc
