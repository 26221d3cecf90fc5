"""One client connection: the I/O shell around ``protocol.Session`` (frames in, actions out).

The state machine decodes and validates every frame (size 4502, envelope 4002, op 4005,
payload 4002, state 4003/4004, op rate limit 4008, heartbeat timeout 4001); this module only
executes the actions it returns, serving the ``Authenticate``/``Do*`` requests with the real
services. Ops are handled inline, in arrival order, so REPLYs and DISPATCHes keep a causal
order; while an op awaits the Store the connection counts as busy for the heartbeat sweeper.
The exception is catching rooms up (IDENTIFY ``subscribe``, SUBSCRIBE, a RESUME's replay): those
run as the session's jobs (``Hub.submit``), in order, as fast as the socket takes the frames,
while this loop goes on reading (heartbeats acknowledge what arrived) and serving other ops.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from chat_core.events import message_create
from chat_core.models import Room
from gateway import metrics
from gateway.outbound import Outbound
from gateway.rooms import MAX_RECOVER, CatchUpAborted, LeftRoom
from gateway.session import Session, new_session_id, resume_positions
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
from protocol.close_codes import CloseCode
from protocol.codec import Encoding
from protocol.frames import RoomSubscription
from protocol.session import Session as ProtocolSession
from shardchat.clientip import real_client
from shardchat.errors import ChatError, NotFound
from user_core.tokens import Principal

if TYPE_CHECKING:
    from gateway.server import Gateway

log = logging.getLogger(__name__)


class _Closing(Exception):
    """Raised while serving an action to close the connection with ``code``."""

    def __init__(self, code: CloseCode, reason: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ClientConnection:
    # Slots: one per live connection, so every byte counts (no per-instance __dict__).
    __slots__ = (
        "busy",
        "close_code",
        "encoding",
        "gw",
        "ip",
        "out",
        "principal",
        "proto",
        "session",
        "ws",
    )

    def __init__(self, gw: Gateway, ws: ServerConnection, encoding: Encoding) -> None:
        self.gw = gw
        self.ws = ws
        self.encoding = encoding
        s = gw.settings
        peer = str(ws.remote_address[0]) if ws.remote_address else "?"
        forwarded = ws.request.headers.get("X-Forwarded-For") if ws.request else None
        self.ip = real_client(peer, forwarded, s.trusted_proxies)  # IDENTIFY limit key
        self.principal: Principal | None = None  # whose token IDENTIFY/RESUME accepted
        if ws.protocol.extensions:  # raw frame writes need an extension-free connection
            raise RuntimeError("the gateway must serve with compression=None")
        self.out = Outbound(
            ws.transport,
            gw.hub.flusher,
            text=encoding.text_frames,
            limit=s.outbound_buffer_bytes,
            on_overflow=self._on_overflow,
            writable=ws.drain,
        )
        self.proto = ProtocolSession(
            now=time.monotonic(),
            gateway_id=gw.gateway_id,
            encoding=encoding,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_frame_bytes=s.max_frame_bytes,
            ops_per_window=s.ops_per_window,
            ops_window_s=s.ops_window_s,
            ops_burst=s.ops_burst,
        )
        self.busy = False
        self.session: Session | None = None
        self.close_code: int | None = None  # set when the server closes

    # --- sending / closing ------------------------------------------------------------------
    def send(self, frame: SendFrame) -> None:
        self.out.push(frame.data)

    def close(self, code: CloseCode, reason: str = "") -> None:
        """Server-side close from outside the state machine (4010, 4011, kicks ...)."""
        if self.close_code is None:
            self._close(self.proto.close(code, reason))

    def _close(self, action: Close) -> None:
        """Write what is queued, then the close frame (safe from sync callbacks)."""
        if self.close_code is not None:
            return
        self.close_code = int(action.code)
        metrics.closed(self.close_code)
        if not self.out.closed:
            self.out.flush()  # frames queued before the close frame must precede it
            self.out.discard()
        self.gw.hub.spawn(self.ws.close(int(action.code), action.reason))

    def _on_overflow(self) -> None:
        self.close(CloseCode.SLOW_CONSUMER)

    def poll(self, now: float) -> None:
        """Heartbeat timeout check (the sweeper calls this; ops in progress don't time out)."""
        if not self.busy:
            for action in self.proto.poll(now):
                if isinstance(action, Close):
                    self._close(action)

    # --- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        self.send(self.proto.hello())
        try:
            while self.close_code is None:
                try:
                    data = await self.ws.recv(decode=False)
                except ConnectionClosed:
                    return
                metrics.FRAMES_IN.inc()
                actions = self.proto.receive(data, time.monotonic())
                self.busy = True
                try:
                    await self._perform(actions)
                except _Closing as exc:
                    self.close(exc.code, exc.reason)
                except Exception:
                    log.exception("op failed")
                    self.close(CloseCode.INTERNAL_ERROR)
                finally:
                    self.busy = False
                    self.proto.last_received_at = time.monotonic()
                # An idle connection waits in recv() for minutes: its last frame, decoded
                # payload and actions (the IDENTIFY token...) must not stay referenced meanwhile.
                del data, actions
            # Closed by us: let the close handshake (spawned by _close) finish before the
            # handler returns, or websockets would close with 1000 first.
            await self.ws.wait_closed()
        finally:
            await self.gw.end_connection(self)

    async def _perform(self, actions: list[Action]) -> None:
        session = self.session
        if session is not None and self.proto.client_seq is not None:
            session.ack(self.proto.client_seq)
        for action in actions:
            if isinstance(action, SendFrame):
                self.send(action)
            elif isinstance(action, Close):
                self._close(action)
            elif isinstance(action, Authenticate):
                await self._identify(action)
            elif isinstance(action, DoResume):
                await self._resume(action)
            elif isinstance(action, DoSubscribe):
                await self._subscribe(action)
            elif isinstance(action, DoUnsubscribe):
                assert session is not None
                for unsub_id in action.rooms:
                    self.gw.hub.unsubscribe(session, int(unsub_id))
                await self._save_quietly(session)
            elif isinstance(action, DoSend):
                await self._send_message(action)
            elif isinstance(action, DoTyping):
                assert session is not None
                typing_id = int(action.room_id)  # Snowflake -> int: str() must be decimal
                if typing_id in session.rooms:  # only where it could have been sent from
                    await self.gw.hub.publish_typing(session, typing_id)
            elif isinstance(action, DoPresence):
                assert session is not None
                await self.gw.registry.set_presence(
                    session.user_id, action.status, self.gw.settings.resume_window_s
                )
                await self.gw.hub.publish_presence(session, action.status)

    # --- IDENTIFY -------------------------------------------------------------------------
    async def _authenticate(self, token: str) -> int:
        """The token's user (revocation checked); kept so a later revocation can close us."""
        if not self.gw.identify_limits.take(self.ip, time.monotonic()):
            raise _Closing(CloseCode.RATE_LIMITED, "identify rate limited")
        try:
            self.principal = await self.gw.auth.authenticate(token)
        except ChatError as exc:
            raise _Closing(CloseCode.AUTHENTICATION_FAILED) from exc
        return self.principal.user_id

    async def _identify(self, action: Authenticate) -> None:
        user_id = await self._authenticate(action.token)
        user = await self.gw.auth.get_user(user_id)
        if user is None:
            raise _Closing(CloseCode.AUTHENTICATION_FAILED)
        rooms = await self.gw.chat.list_rooms(user_id)
        session = Session(new_session_id(), user_id, self.encoding, self.out)
        ready = {
            "session_id": session.session_id,
            "user": {"id": str(user.id), "username": user.username, "status": "online"},
            "rooms": [{"id": str(r.id), "name": r.name, "last_seq": r.last_seq} for r in rooms],
            "resume_url": self.gw.url,
        }
        self.send(
            self.proto.accept_identify(session_id=session.session_id, user_id=user_id, ready=ready)
        )
        session.numbered([None], self.proto.dispatch_seq)  # READY is s = 1
        self.session = session
        self.gw.hub.add_session(session, self)
        by_id = {r.id: r for r in rooms}
        wanted: list[int] = []
        if action.subscribe == "all":
            wanted = list(by_id)
        elif action.subscribe is not None:
            # Rooms the user is not a member of are left out silently.
            wanted = list(dict.fromkeys(int(r) for r in action.subscribe if r in by_id))
        # Saved at once (owner = this gateway), with the rooms to subscribe, so a RESUME
        # elsewhere can find and take it even within the first second; the subscriptions go
        # live as jobs (each from the room's last seq as listed just now: a leave after that
        # is seen on the way), then the session is saved again.
        for room_id in wanted:
            self.gw.hub.hold(session, room_id, by_id[room_id].last_seq)
        await self._save_quietly(session)
        if wanted:
            self.gw.hub.submit(session, lambda: self._subscribe_listed(session, wanted, by_id))

    async def _subscribe_listed(
        self, session: Session, room_ids: list[int], by_id: dict[int, Room]
    ) -> None:
        for room_id in room_ids:
            try:
                seq, _ = await self.gw.hub.join(session, room_id, by_id[room_id].last_seq)
            except LeftRoom:
                continue
            except CatchUpAborted:
                return
            session.dispatch(
                "ROOM_SUBSCRIBED", {"room_id": str(room_id), "seq": seq, "recovered": False}
            )
        await self._save_quietly(session)

    # --- RESUME ---------------------------------------------------------------------------
    async def _resume(self, action: DoResume) -> None:
        """Check, claim, then replay as a job.

        Nothing is changed before the claim: a failure up to there (a Store or Registry error
        closes with 4000) leaves the saved state as it was. The claim is an epoch compare-and-
        set: of two concurrent RESUMEs of one session exactly one wins, the other gets
        INVALID_SESSION. The claimed state holds every room at the client's position, so the
        replay that follows may be cut anywhere without moving a position past unread events.
        """
        gw = self.gw
        user_id = await self._authenticate(action.token)
        blob = await gw.take_session(action.session_id, user_id)
        if self.close_code is not None:
            return
        # A blob released by a live gateway is exact: a seq beyond it is a confused client.
        # A blob still owned by a crashed gateway may lag the client: its seq is then trusted.
        if blob is None or (action.seq > blob.s and not blob.owner):
            self.send(self.proto.invalid_session(False))
            return
        positions = resume_positions(blob, min(action.seq, blob.s))
        if action.rooms is not None:
            # The client's own positions are exact; the saved ones may lag a crashed gateway
            # by up to a second (a replay from them repeats events). Rooms it lists that the
            # saved state lacks (subscribed just before a crash) are taken back, each after the
            # membership check below; saved rooms it doesn't list keep their saved position.
            positions.update({int(room_id): seq for room_id, seq in action.rooms.items()})
        rooms: dict[int, int] = {}
        for room_id, pos in sorted(positions.items()):
            try:
                info = await gw.chat.get_room(user_id, room_id)
            except ChatError:
                continue  # no longer a member: the room is simply gone from the session
            if self.close_code is not None:
                return
            pos = min(pos, info.last_seq)  # a position the room never reached: clamped
            if info.last_seq - pos > MAX_RECOVER:  # too far behind: the client starts over
                self.send(self.proto.invalid_session(False))
                return
            rooms[room_id] = pos
        session = Session(
            action.session_id, user_id, self.encoding, self.out, s=action.seq, epoch=blob.epoch + 1
        )
        for room_id, pos in rooms.items():
            session.hold(room_id, pos)
        if not await gw.claim_session(session, blob.epoch):
            self.send(self.proto.invalid_session(False))  # another RESUME claimed it first
            return
        if self.close_code is not None:
            return
        self.proto.accept_resume(user_id=user_id, session_id=action.session_id)
        self.session = session
        gw.hub.add_session(session, self)
        for room_id, pos in rooms.items():
            gw.hub.hold(session, room_id, pos)  # counted as subscriptions of this gateway
        gw.hub.submit(session, lambda: self._replay(session, rooms))

    async def _replay(self, session: Session, rooms: dict[int, int]) -> None:
        """The RESUME job: each room from the client's position, then RESUMED."""
        replayed = 0
        for room_id, pos in rooms.items():
            try:
                seq, recovered = await self.gw.hub.join(session, room_id, pos)
            except LeftRoom:
                continue
            except CatchUpAborted:
                return
            if not recovered:  # the Store no longer has them (retention): start over
                self.send(self.proto.invalid_session(False))
                self.gw.hub.remove_session(session)
                self.session = None
                await self.gw.end_session(session)
                return
            replayed += seq - pos
        session.dispatch("RESUMED", {"replayed": replayed})
        self.proto.finish_resume()
        await self._save_quietly(session)

    # --- traffic --------------------------------------------------------------------------
    async def _subscribe(self, action: DoSubscribe) -> None:
        session = self.session
        assert session is not None
        # One entry per room: a room listed twice is subscribed once, from its first entry.
        items = list({item.room_id: item for item in action.rooms}.values())
        self.gw.hub.submit(session, lambda: self._subscribe_job(session, action.request_id, items))

    async def _subscribe_job(
        self, session: Session, request_id: int | None, items: list[RoomSubscription]
    ) -> None:
        done: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for item in items:
            room_id = int(item.room_id)
            try:
                entry = await self._subscribe_room(session, room_id, item.after_seq)
            except ChatError as exc:
                failed.append({"room_id": str(room_id), "code": exc.code, "message": exc.message})
                continue
            except CatchUpAborted:
                return
            session.dispatch("ROOM_SUBSCRIBED", entry)
            done.append(entry)
        # Saved before the REPLY, not on the next sweep: a gateway crash right after a
        # SUBSCRIBE must not resume the session without the room (a client that sends no
        # RESUME ``rooms`` would silently miss its live events).
        await self._save_quietly(session)
        if failed and not done:
            self.send(self.proto.reply_error(request_id, failed[0]["code"], failed[0]["message"]))
        else:
            self.send(self.proto.reply_ok(request_id, {"rooms": done, "failed": failed}))

    async def _subscribe_room(
        self, session: Session, room_id: int, after_seq: int | None
    ) -> dict[str, Any]:
        """One room of a SUBSCRIBE: its ROOM_SUBSCRIBED payload. Raises ChatError (not a
        member, or it left during the catch-up) and CatchUpAborted (the connection is gone)."""
        hub = self.gw.hub
        try:
            info = await self.gw.chat.get_room(session.user_id, room_id)  # NotFound / Forbidden
        except ChatError:
            raise
        except Exception:
            log.warning("subscribe to room %s failed", room_id, exc_info=True)
            raise ChatError("could not subscribe now; try again") from None
        if room_id in session.rooms:
            # Subscribed already: nothing is sent twice on one session.
            sent = session.sent_seq(room_id)
            return {"room_id": str(room_id), "seq": sent or 0, "recovered": True}
        # From the membership check's last seq when there is nothing to recover (a leave
        # right after the check is caught up, not missed), and never from beyond it.
        clamped = after_seq is not None and after_seq > info.last_seq
        pos = info.last_seq if after_seq is None or clamped else after_seq
        try:
            seq, recovered = await hub.join(session, room_id, pos)
        except LeftRoom:
            raise NotFound("room not found") from None
        except CatchUpAborted:
            raise
        except Exception:
            hub.unsubscribe(session, room_id)
            log.warning("subscribe to room %s failed", room_id, exc_info=True)
            raise ChatError("could not subscribe now; try again") from None
        recovered = recovered and after_seq is not None and not clamped
        return {"room_id": str(room_id), "seq": seq, "recovered": recovered}

    async def _save_quietly(self, session: Session) -> None:
        """Save the session now, after its rooms changed (IDENTIFY, SUBSCRIBE, UNSUBSCRIBE).

        A Registry failure doesn't fail the op (the session itself works; closing it with 4000
        would only turn a slow Registry into a reconnect storm): the session stays dirty and
        the sweep retries within a second or so.
        """
        try:
            await self.gw.save_now(session)
        except Exception:
            session.dirty = True
            log.warning("could not save session %s", session.session_id, exc_info=True)

    async def _send_message(self, action: DoSend) -> None:
        session = self.session
        assert session is not None
        try:
            encrypted = action.encrypted
            msg = await self.gw.chat.send_message(
                session.user_id,
                int(action.room_id),
                action.content,
                action.nonce,
                [int(a) for a in action.attachment_ids],
                None if encrypted is None else msgspec.structs.asdict(encrypted),
            )
        except ChatError as exc:
            reply = self.proto.reply_error(action.request_id, exc.code, exc.message, exc.reason)
            self.send(reply)
            return
        except Exception:
            log.exception("send_message failed")
            self.send(self.proto.reply_error(action.request_id, "INTERNAL", "internal error"))
            return
        self.send(self.proto.reply_ok(action.request_id, message_create(msg, msg.seq)))
