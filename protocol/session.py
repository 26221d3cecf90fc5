"""The sans-I/O gateway session: frames and time in, actions out.

The I/O shell owns the socket and the clock. It feeds every received frame to ``receive``,
calls ``poll`` when ``heartbeat_deadline`` passes, executes the returned actions in order, and
answers the ``Authenticate``/``Do*`` requests through the methods below. Nothing here awaits,
reads a clock or touches a socket, so every transition is a plain unit test.

States::

    AWAITING_IDENTIFY --IDENTIFY/RESUME--> IDENTIFYING --accept_identify--> READY
          ^                                  |      |
          +-------- invalid_session ---------+   accept_resume
          +-------- invalid_session --------- REPLAYING --finish_resume--> READY
    any --Close action / connection_lost--> CLOSED

While REPLAYING the gateway streams the missed events at the pace the socket takes them; the
client heartbeats (and so acknowledges what it received) but sends no other op until RESUMED.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Final

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
from protocol.close_codes import CloseCode, is_resumable_close, truncate_reason
from protocol.codec import DEFAULT_MAX_FRAME_BYTES, Codec, DispatchEvent, Encoding
from protocol.errors import LocalProtocolError, ProtocolError
from protocol.frames import (
    ClientFrame,
    ErrorInfo,
    Hello,
    Identify,
    InvalidSession,
    PresenceUpdate,
    Reconnect,
    ReplyError,
    ReplyOk,
    Resume,
    Send,
    Subscribe,
    Typing,
    Unsubscribe,
)
from protocol.opcodes import Op
from protocol.ratelimit import TokenBucket

# Defaults of docs/protocol.md section 6.
DEFAULT_HEARTBEAT_INTERVAL_MS: Final = 41_250
DEFAULT_HEARTBEAT_TIMEOUT_FACTOR: Final = 1.5
DEFAULT_OPS_PER_WINDOW: Final = 120
DEFAULT_OPS_WINDOW_S: Final = 60.0
DEFAULT_OPS_BURST: Final = 20


class SessionState(Enum):
    AWAITING_IDENTIFY = "awaiting_identify"  # HELLO sent, waiting for IDENTIFY or RESUME
    IDENTIFYING = "identifying"  # IDENTIFY/RESUME received, the gateway is checking it
    REPLAYING = "replaying"  # RESUME accepted: the missed events are being sent, then RESUMED
    READY = "ready"  # READY or RESUMED sent: traffic flows
    CLOSED = "closed"


class Session:
    """One client connection's protocol state.

    Create it when the WebSocket opens (after ``negotiate``), send ``hello()``, then loop.
    ``session_id`` and ``user_id`` are set once identified and survive ``CLOSED``. DISPATCHes
    after READY / during a replay are numbered by the I/O shell from ``dispatch_seq`` on (the
    gateway numbers its fan-out without calling back in here once per recipient).
    """

    def __init__(
        self,
        *,
        now: float,
        gateway_id: str = "",
        encoding: Encoding = Encoding.JSON,
        heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
        heartbeat_timeout_factor: float = DEFAULT_HEARTBEAT_TIMEOUT_FACTOR,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        ops_per_window: int = DEFAULT_OPS_PER_WINDOW,
        ops_window_s: float = DEFAULT_OPS_WINDOW_S,
        ops_burst: int = DEFAULT_OPS_BURST,
    ) -> None:
        self.codec = Codec(encoding, max_frame_bytes)
        self.encoding = encoding
        self.gateway_id = gateway_id
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.heartbeat_timeout_s = heartbeat_interval_ms / 1000 * heartbeat_timeout_factor
        self.state = SessionState.AWAITING_IDENTIFY
        self.session_id: str | None = None
        self.user_id: int | None = None
        #: The RESUME being checked (IDENTIFYING after RESUME), for ``accept_resume``.
        self.pending_resume: DoResume | None = None
        #: The last ``s`` the client reported in a HEARTBEAT (None until it does).
        self.client_seq: int | None = None
        self.last_received_at = now
        self.close_code: int | None = None
        self._seq = 0
        self._ops = TokenBucket(ops_per_window, ops_window_s, ops_burst, now)

    # ---- inbound ------------------------------------------------------------------------------

    def hello(self) -> SendFrame:
        """The first frame of every connection."""
        return self._send(
            Op.HELLO,
            Hello(heartbeat_interval_ms=self.heartbeat_interval_ms, gateway_id=self.gateway_id),
        )

    def receive(self, data: bytes | bytearray | memoryview | str, now: float) -> list[Action]:
        """Feed one received WebSocket message."""
        if self.state is SessionState.CLOSED:
            return []
        self.last_received_at = now
        try:
            frame = self.codec.decode_client(data)
        except ProtocolError as exc:
            return [self.close(exc.close_code, exc.reason)]
        return self.receive_frame(frame, now)

    def receive_frame(self, frame: ClientFrame, now: float) -> list[Action]:
        """Feed one already decoded frame (``receive`` does the decoding)."""
        state = self.state
        if state is SessionState.CLOSED:
            return []
        self.last_received_at = now
        op = frame.op
        if op is Op.HEARTBEAT:
            # Heartbeats never count against the rate limit: a limited client must stay alive.
            self.client_seq = getattr(frame.d, "seq", None)
            return [self._send(Op.HEARTBEAT_ACK, None)]
        if not self._ops.try_acquire(now):
            return [self.close(CloseCode.RATE_LIMITED)]
        d = frame.d
        if op is Op.IDENTIFY or op is Op.RESUME:
            if state is not SessionState.AWAITING_IDENTIFY:
                return [self.close(CloseCode.ALREADY_IDENTIFIED)]
            self.state = SessionState.IDENTIFYING
            if isinstance(d, Identify):
                return [Authenticate(d.token, d.client, d.subscribe)]
            if not isinstance(d, Resume):
                raise AssertionError(f"op {op!r} with payload {d!r}")
            self.pending_resume = DoResume(d.token, d.session_id, d.seq, d.rooms)
            return [self.pending_resume]
        if state is not SessionState.READY:
            return [self.close(CloseCode.NOT_IDENTIFIED)]
        if isinstance(d, Send):
            return [DoSend(frame.id, d.room_id, d.content, d.nonce, d.attachment_ids, d.encrypted)]
        if isinstance(d, Typing):
            return [DoTyping(d.room_id)]
        if isinstance(d, Subscribe):
            return [DoSubscribe(frame.id, d.rooms)]
        if isinstance(d, Unsubscribe):
            return [DoUnsubscribe(d.rooms)]
        if isinstance(d, PresenceUpdate):
            return [DoPresence(d.status)]
        raise AssertionError(f"unhandled op {op!r}")  # the codec only yields the ops above

    # ---- time ---------------------------------------------------------------------------------

    @property
    def heartbeat_deadline(self) -> float:
        """When ``poll`` will close the connection if no frame arrives before."""
        return self.last_received_at + self.heartbeat_timeout_s

    def poll(self, now: float) -> list[Action]:
        """Check timers: no frame for 1.5 x the heartbeat interval closes with 4001."""
        if self.state is not SessionState.CLOSED and now > self.heartbeat_deadline:
            return [self.close(CloseCode.HEARTBEAT_TIMEOUT)]
        return []

    # ---- answers to Authenticate / DoResume -----------------------------------------------------

    def accept_identify(self, *, session_id: str, user_id: int, ready: Any) -> SendFrame:
        """Authentication passed: become READY and send DISPATCH READY (``s`` = 1).

        ``ready`` is the READY payload (``frames.Ready`` or an equivalent mapping).
        """
        self._expect(SessionState.IDENTIFYING, "accept_identify")
        if self.pending_resume is not None:
            raise LocalProtocolError("accept_identify after RESUME; use accept_resume")
        self.session_id = session_id
        self.user_id = user_id
        self.state = SessionState.READY
        self._seq = 0
        return SendFrame(self.dispatch(DispatchEvent("READY", ready)))

    def accept_resume(self, *, user_id: int, session_id: str | None = None) -> None:
        """The RESUME is valid: become REPLAYING. The shell now sends the missed events with
        ``s`` = seq+1, seq+2 ..., then DISPATCH RESUMED ``{replayed}``, then calls
        ``finish_resume``. ``session_id`` defaults to the one the client sent."""
        self._expect(SessionState.IDENTIFYING, "accept_resume")
        pending = self.pending_resume
        if pending is None:
            raise LocalProtocolError("accept_resume without a RESUME")
        self.pending_resume = None
        self.session_id = session_id if session_id is not None else pending.session_id
        self.user_id = user_id
        self.state = SessionState.REPLAYING
        self._seq = pending.seq

    def finish_resume(self) -> None:
        """RESUMED was sent: traffic flows."""
        self._expect(SessionState.REPLAYING, "finish_resume")
        self.state = SessionState.READY

    def invalid_session(self, resumable: bool = False) -> SendFrame:
        """The RESUME can't be honoured (checked, or found while replaying): send
        INVALID_SESSION and wait for IDENTIFY or RESUME again on this same connection."""
        if self.state is not SessionState.REPLAYING:
            self._expect(SessionState.IDENTIFYING, "invalid_session")
        self.pending_resume = None
        self.session_id = self.user_id = None
        self.state = SessionState.AWAITING_IDENTIFY
        return self._send(Op.INVALID_SESSION, InvalidSession(resumable=resumable))

    # ---- outbound -----------------------------------------------------------------------------

    @property
    def dispatch_seq(self) -> int:
        """The ``s`` of the last DISPATCH numbered here (READY: 1; after RESUME: its seq)."""
        return self._seq

    def dispatch(self, event: DispatchEvent) -> bytes:
        """Number ``event`` with the next ``s`` and return its frame."""
        if self.session_id is None:
            raise LocalProtocolError("dispatch before the session is identified")
        self._seq += 1
        return event.frame(self._seq, self.encoding)

    def heartbeat_ack(self) -> SendFrame:
        return self._send(Op.HEARTBEAT_ACK, None)

    def reply_ok(self, request_id: int | None, result: Any = None) -> SendFrame:
        return self._send(Op.REPLY, ReplyOk(result=result), id=request_id)

    def reply_error(
        self, request_id: int | None, code: str, message: str, reason: str | None = None
    ) -> SendFrame:
        """``code`` is a ``shardchat.errors.ErrorCode`` (``FORBIDDEN``, ...); ``reason`` a finer
        stable cause when there is one (omitted otherwise)."""
        error = ReplyError(error=ErrorInfo(code=code, message=message, reason=reason))
        return self._send(Op.REPLY, error, id=request_id)

    def reconnect(self, url: str | None = None) -> SendFrame:
        """Ask the client to reconnect (to ``url``) and RESUME: the gateway is draining."""
        return self._send(Op.RECONNECT, Reconnect(url=url))

    # ---- closing ------------------------------------------------------------------------------

    def close(self, code: CloseCode, reason: str = "") -> Close:
        """Close from the server side (any state); the returned action carries the frame."""
        self.state = SessionState.CLOSED
        self.close_code = int(code)
        self.pending_resume = None
        return Close(code, truncate_reason(reason or code.description))

    def connection_lost(self, code: int | None = None) -> None:
        """The connection ended: ``code`` is the client's close code, None if it just dropped.
        A close the server already sent keeps its own code."""
        if self.state is not SessionState.CLOSED:
            self.state = SessionState.CLOSED
            self.close_code = code
            self.pending_resume = None

    @property
    def resumable(self) -> bool:
        """Whether the gateway should keep this session for the resume window."""
        return self.session_id is not None and (
            self.state is not SessionState.CLOSED or is_resumable_close(self.close_code)
        )

    # ---- helpers ------------------------------------------------------------------------------

    def _send(self, op: Op, d: Any, id: int | None = None) -> SendFrame:
        return SendFrame(self.codec.encode(op, d, id=id))

    def _expect(self, state: SessionState, what: str) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"{what} in state {self.state.value}")
