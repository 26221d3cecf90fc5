"""One client connection: the op loop of PROTOCOL.md section 2 around a Session.

Ops are handled inline, in arrival order, so REPLYs and DISPATCHes keep a causal order; while
an op awaits the Store the connection counts as busy for the heartbeat sweeper.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from chat_core.events import message_create
from gateway import metrics, wire
from gateway.outbound import Outbound
from gateway.ratelimit import TokenBucket
from gateway.session import Session, load_blob, new_session_id, resume_positions
from shardchat.errors import ChatError

if TYPE_CHECKING:
    from gateway.server import Gateway

log = logging.getLogger(__name__)

_PRE_IDENTIFY_OK = {wire.IDENTIFY, wire.RESUME, wire.HEARTBEAT}
_SERVER_OPS = {wire.DISPATCH, wire.RECONNECT, wire.INVALID_SESSION, wire.HELLO,
               wire.HEARTBEAT_ACK, wire.REPLY}


class Closing(Exception):
    """Raised inside op handling to close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ClientConnection:
    def __init__(self, gw: Gateway, ws: ServerConnection, encoding: wire.Encoding) -> None:
        self.gw = gw
        self.ws = ws
        self.encoding: wire.Encoding = encoding
        self.ip = str(ws.remote_address[0]) if ws.remote_address else "?"
        s = gw.settings
        self.out = Outbound(ws, gw.hub.flusher, text=encoding == "json",
                            limit=s.outbound_buffer_bytes, on_overflow=self._on_overflow)
        now = time.monotonic()
        self.last_rx = now
        self.busy = False
        self.ops = TokenBucket(s.ops_burst, s.ops_per_window / s.ops_window_s, now)
        self.session: Session | None = None
        self.close_code: int | None = None  # set when the server closes

    # --- sending ----------------------------------------------------------------------------
    def send(self, op: int, d: Any = None, *, id: int | None = None) -> None:
        self.out.push(wire.encode(self.encoding, op, d, id=id))

    def reply_ok(self, id: int | None, result: Any) -> None:
        self.send(wire.REPLY, {"ok": True, "result": result}, id=id)

    def reply_error(self, id: int | None, code: str, message: str) -> None:
        self.send(wire.REPLY, {"ok": False, "error": {"code": code, "message": message}}, id=id)

    def close(self, code: int, reason: str = "") -> None:
        """Write what is queued, then close with ``code`` (safe from sync callbacks)."""
        if self.close_code is not None:
            return
        self.close_code = code
        metrics.CLOSES.labels(str(code)).inc()
        if not self.out.closed:
            self.out.flush()  # frames queued before the close frame must precede it
            self.out.discard()
        self.gw.hub.spawn(self.ws.close(code, reason))

    def _on_overflow(self) -> None:
        self.close(wire.Close.SLOW_CONSUMER, "slow consumer")

    # --- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        s = self.gw.settings
        self.send(wire.HELLO, {"heartbeat_interval_ms": s.heartbeat_interval_ms,
                               "gateway_id": self.gw.gateway_id})
        try:
            while self.close_code is None:
                try:
                    data = await self.ws.recv(decode=False)
                except ConnectionClosed:
                    return
                now = time.monotonic()
                self.last_rx = now
                metrics.FRAMES_IN.inc()
                try:
                    if len(data) > s.max_frame_bytes:
                        raise Closing(wire.Close.FRAME_TOO_LARGE, "frame too large")
                    if not self.ops.take(now):
                        raise Closing(wire.Close.RATE_LIMITED, "rate limited")
                    try:
                        env = wire.decode_envelope(self.encoding, data)
                    except wire.DecodeError as exc:
                        raise Closing(wire.Close.DECODE_ERROR, "decode error") from exc
                    self.busy = True
                    try:
                        await self.handle(env)
                    finally:
                        self.busy = False
                        self.last_rx = time.monotonic()
                except Closing as exc:
                    self.close(exc.code, exc.reason)
                except wire.DecodeError:
                    self.close(wire.Close.DECODE_ERROR, "decode error")
                except Exception:
                    log.exception("op failed")
                    self.close(wire.Close.INTERNAL, "internal error")
            # Closed by us: let the close handshake (spawned by close()) finish before the
            # handler returns, or websockets would close with 1000 first.
            await self.ws.wait_closed()
        finally:
            await self.gw.end_connection(self)

    async def handle(self, env: wire.Envelope) -> None:
        op = env.op
        if self.session is None and op not in _PRE_IDENTIFY_OK:
            if op in _SERVER_OPS or op > wire.REPLY:
                raise Closing(wire.Close.UNKNOWN_OPCODE, "unknown opcode")
            raise Closing(wire.Close.NOT_IDENTIFIED, "not identified")
        if op == wire.HEARTBEAT:
            if env.d is not None and not isinstance(env.d, int):
                raise wire.DecodeError("heartbeat d must be an int or null")
            if self.session is not None:
                self.session.ack(env.d)
            self.send(wire.HEARTBEAT_ACK)
        elif op == wire.IDENTIFY:
            await self.identify(wire.payload(env.d, wire.IdentifyData))
        elif op == wire.RESUME:
            await self.resume(wire.payload(env.d, wire.ResumeData))
        elif op == wire.SUBSCRIBE:
            await self.subscribe(wire.payload(env.d, wire.SubscribeData), env.id)
        elif op == wire.UNSUBSCRIBE:
            data = wire.payload(env.d, wire.UnsubscribeData)
            assert self.session is not None
            for rid in data.rooms:
                self.gw.hub.unsubscribe(self.session, wire.room_id_of(rid))
            if env.id is not None:
                self.reply_ok(env.id, None)
        elif op == wire.SEND:
            await self.send_message(wire.payload(env.d, wire.SendData), env.id)
        elif op == wire.TYPING:
            data_t = wire.payload(env.d, wire.TypingData)
            assert self.session is not None
            room_id = wire.room_id_of(data_t.room_id)
            if room_id in self.session.rooms:  # only where it could have been sent from
                await self.gw.hub.publish_typing(self.session, room_id)
        elif op == wire.PRESENCE_UPDATE:
            data_p = wire.payload(env.d, wire.PresenceData)
            assert self.session is not None
            await self.gw.registry.set_presence(self.session.user_id, data_p.status,
                                                self.gw.settings.resume_window_s)
            await self.gw.hub.publish_presence(self.session, data_p.status)
        else:
            raise Closing(wire.Close.UNKNOWN_OPCODE, "unknown opcode")

    # --- ops --------------------------------------------------------------------------------
    def _authenticate(self, token: str) -> int:
        if self.session is not None:
            raise Closing(wire.Close.ALREADY_IDENTIFIED, "already identified")
        if not self.gw.identify_limits.take(self.ip, time.monotonic()):
            raise Closing(wire.Close.RATE_LIMITED, "identify rate limited")
        try:
            return self.gw.auth.verify_access(token)
        except ChatError as exc:
            raise Closing(wire.Close.AUTH_FAILED, "authentication failed") from exc

    async def identify(self, data: wire.IdentifyData) -> None:
        user_id = self._authenticate(data.token)
        user = await self.gw.auth.get_user(user_id)
        if user is None:
            raise Closing(wire.Close.AUTH_FAILED, "authentication failed")
        rooms = await self.gw.chat.list_rooms(user_id)
        session = Session(new_session_id(), user_id, self.encoding, self.out)
        self.session = session
        self.gw.hub.add_session(session)
        session.dispatch("READY", {
            "session_id": session.session_id,
            "user": {"id": str(user.id), "username": user.username, "status": "online"},
            "rooms": [{"id": str(r.id), "name": r.name, "last_seq": r.last_seq} for r in rooms],
            "resume_url": self.gw.url,
        })
        by_id = {r.id: r for r in rooms}
        wanted: list[int] = []
        if data.subscribe == "all":
            wanted = list(by_id)
        elif isinstance(data.subscribe, list):
            wanted = [wire.room_id_of(r) for r in data.subscribe]
        elif isinstance(data.subscribe, str):
            raise wire.DecodeError("subscribe must be 'all' or a list of room ids")
        for room_id in wanted:
            if room_id not in by_id:
                continue  # not a member: nothing to subscribe to
            seq, recovered = await self.gw.hub.subscribe(session, room_id, None, by_id[room_id])
            session.dispatch("ROOM_SUBSCRIBED", {"room_id": str(room_id), "seq": seq,
                                                 "recovered": recovered})
        self.gw.save_soon(session)

    async def resume(self, data: wire.ResumeData) -> None:
        user_id = self._authenticate(data.token)
        raw = await self.gw.registry.load_session(data.session_id)
        blob = load_blob(raw) if raw is not None else None
        if blob is None or blob.user_id != user_id or data.session_id in self.gw.hub.sessions:
            self.send(wire.INVALID_SESSION, {"resumable": False})
            return
        positions = resume_positions(blob, data.seq)
        session = Session(data.session_id, user_id, self.encoding, self.out,
                          s=max(blob.s, data.seq or 0))
        self.session = session
        self.gw.hub.add_session(session)
        before = session.s
        for room_id, after in sorted(positions.items()):
            try:
                await self.gw.hub.subscribe(session, room_id, after)
            except ChatError:
                continue  # no longer a member: the room is simply gone from the session
        replayed = session.s - before
        session.dispatch("RESUMED", {"replayed": replayed})
        self.gw.save_soon(session)

    async def subscribe(self, data: wire.SubscribeData, req_id: int | None) -> None:
        session = self.session
        assert session is not None
        done: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for item in data.rooms:
            room_id = wire.room_id_of(item.room_id)
            try:
                seq, recovered = await self.gw.hub.subscribe(session, room_id, item.after_seq)
            except ChatError as exc:
                failed.append({"room_id": str(room_id), "code": exc.code, "message": exc.message})
                continue
            entry = {"room_id": str(room_id), "seq": seq, "recovered": recovered}
            session.dispatch("ROOM_SUBSCRIBED", entry)
            done.append(entry)
        self.gw.save_soon(session)
        if failed and not done:
            self.reply_error(req_id, failed[0]["code"], failed[0]["message"])
        else:
            self.reply_ok(req_id, {"rooms": done, "failed": failed})

    async def send_message(self, data: wire.SendData, req_id: int | None) -> None:
        session = self.session
        assert session is not None
        room_id = wire.room_id_of(data.room_id)
        s = self.gw.settings
        if len(data.nonce.encode()) > s.max_nonce_bytes or not data.nonce:
            self.reply_error(req_id, "BAD_USER_INPUT", "nonce is required, at most 32 bytes")
            return
        if len(data.content) > s.max_content_chars:
            self.reply_error(req_id, "BAD_USER_INPUT", "content too long")
            return
        try:
            msg = await self.gw.chat.send_message(session.user_id, room_id, data.content,
                                                  data.nonce)
        except ChatError as exc:
            self.reply_error(req_id, exc.code, exc.message)
            return
        except Exception:
            log.exception("send_message failed")
            self.reply_error(req_id, "INTERNAL", "internal error")
            return
        self.reply_ok(req_id, message_create(msg, msg.seq))
