"""The gateway process: WebSocket serving, HTTP probes, registry heartbeats, drain, sweeps.

Build one with :func:`serve_gateway` (or ``Gateway(...)`` + ``await gw.start()``); stop it with
``await gw.close()``. ``gw.port`` is the bound port (``Settings.gateway_port = 0`` = ephemeral).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.frames import CloseCode as WsCloseCode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from chat_core.batcher import GroupCommitter
from gateway import gctune, metrics
from gateway.connection import ClientConnection
from gateway.consumer import PartitionConsumer
from gateway.deadlines import DeadlineWheel
from gateway.hub import Hub
from gateway.limits import KeyedBuckets
from gateway.ports import AuthPort, ChatPort
from gateway.session import Session, SessionBlob, load_blob
from protocol.close_codes import CloseCode
from protocol.codec import negotiate
from protocol.errors import ProtocolError
from shardchat.config import Settings
from shardchat.ephemeral import events_channel
from shardchat.eventlog import EventLog
from shardchat.registry import (
    DRAIN_MESSAGE,
    GatewayRecord,
    Registry,
    gateway_control_channel,
)
from user_core import revocation

log = logging.getLogger(__name__)

#: Control-channel prefix asking the gateway that holds a session to release it (the client
#: RESUMEd it elsewhere): it saves the exact state, marks it released and kicks the old socket.
TAKE_PREFIX = b"take:"
#: How long a RESUME waits for the holding gateway to release the session. A crashed holder
#: no longer listens on its control channel and is not waited for: the resume goes on from the
#: last saved state (see gateway/session.py).
TAKE_WAIT_S = 0.5
#: Sessions per batched periodic save (see ``Gateway._save_many``).
SAVE_SLICE = 500
#: Retry backoff of final saves that failed (the Registry is down): doubling up to this.
CLOSED_SAVE_BACKOFF_MAX_S = 5.0


class _GatewayProtocol(ServerProtocol):
    """websockets' protocol, closing on a frame over ``max_size`` with 4502 (frame too large,
    the protocol's code) instead of 1009. websockets refuses such a frame from its header, before
    reading the payload; frames between the protocol limit and ``max_size`` get 4502 from the
    state machine. Swapped in per connection (``__class__``: no per-connection cost)."""

    def fail(self, code: int, reason: str = "") -> None:
        if code == WsCloseCode.MESSAGE_TOO_BIG:
            code, reason = CloseCode.FRAME_TOO_LARGE, CloseCode.FRAME_TOO_LARGE.description
        super().fail(code, reason)


def _trim_handshake(conn: ServerConnection, request: Request, response: Response) -> None:
    """Drop the handshake request's headers once websockets has answered them.

    Why: websockets keeps the opening request alive for the whole connection (its parser
    generator holds it), about 2 KiB of header objects per idle connection. Only ``Origin``
    (``Gateway._handler``) and ``X-Forwarded-For`` (``ClientConnection``, behind trusted
    proxies) are read afterwards; the path is a separate attribute and stays.
    """
    origin = request.headers.get("Origin")
    # Several X-Forwarded-For lines (a client's forged one, then the proxy's) are one list.
    forwarded = ", ".join(request.headers.get_all("X-Forwarded-For")) or None
    request.headers.clear()
    if origin is not None:
        request.headers["Origin"] = origin
    if forwarded is not None:  # read by ClientConnection for the real client address
        request.headers["X-Forwarded-For"] = forwarded


class Gateway:
    def __init__(
        self,
        settings: Settings,
        auth: AuthPort,
        chat: ChatPort,
        event_log: EventLog,
        registry: Registry,
        *,
        drain_grace_s: float = 5.0,
        partition_linger_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.chat = chat
        self.event_log = event_log
        self.registry = registry
        self.gateway_id = settings.gateway_id or f"gw-{secrets.token_hex(4)}"
        self.drain_grace_s = drain_grace_s
        self._linger_s = partition_linger_s
        self.hub: Hub
        self.conns: set[ClientConnection] = set()
        # Connections by heartbeat deadline: the sweep looks only at those due.
        self._deadlines: DeadlineWheel[ClientConnection] = DeadlineWheel(self._sweep_period())
        self.identify_limits = KeyedBuckets(
            settings.identify_per_window, settings.identify_window_s, settings.identify_per_window
        )
        self.draining = False
        self.ready = False
        self.port = 0
        self.url = ""
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        # Live sessions by when their saved state needs a refresh (resume_window_s / 3).
        self._refresh: DeadlineWheel[Session] = DeadlineWheel(self._sweep_period())
        # Final states of closed connections not yet in the Registry (see _flush_closed):
        # session id -> (blob, epoch, monotonic deadline).
        self._closed_saves: dict[str, tuple[bytes, int, float]] = {}
        self._closed_flush: asyncio.Task[None] | None = None
        # Saves of sessions whose rooms just changed (IDENTIFY, SUBSCRIBE...): those made in
        # the same loop tick, or while a write is in flight, go out in one Registry call.
        self._saver: GroupCommitter[tuple[str, bytes, int], bool] = GroupCommitter(
            self._write_saves, max_batch=SAVE_SLICE, max_inflight=2
        )
        self._opened = 0  # connections handled, for the GC freezer
        self._closed = 0
        self._gc = gctune.GcFreezer()

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings

        def make_consumer(on_events: Any, on_skip: Any) -> PartitionConsumer:
            return PartitionConsumer(self.event_log, on_events, on_skip, linger_s=self._linger_s)

        self.hub = Hub(
            self.gateway_id,
            self.chat,
            self.registry,
            make_consumer,
            ring_size=s.ring_buffer_events,
            room_ttl_s=s.gateway_ttl_s,
            stall_s=1.5 * s.heartbeat_interval_ms / 1000,
            flush_window_s=s.flush_window_us / 1e6,
        )
        self.hub.consumer.start()
        self._server = await serve(
            self._handler,
            s.host,
            s.gateway_port,
            process_request=self._process_request,
            process_response=_trim_handshake,
            compression=None,  # fan-out writes pre-built frames; deflate would cost 64 KiB/conn
            # Above the protocol limit so oversized frames reach us and get 4502, not 1009, but
            # not far above: this is what one connection may make us buffer per frame.
            max_size=2 * s.max_frame_bytes,
            # Inbound frames buffered before websockets stops reading the socket; ops are
            # handled one at a time and rate limited, so a deep queue only holds memory.
            max_queue=4,
            ping_interval=None,  # the protocol's own heartbeats detect zombies
            close_timeout=5,
            server_header=None,
        )
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])
        self.url = s.public_gateway_url or f"ws://{s.host}:{self.port}/ws"
        control = self.registry.subscribe(gateway_control_channel(self.gateway_id))
        events = self.registry.subscribe(events_channel(self.gateway_id))
        revoked = self.registry.subscribe(revocation.CHANNEL)
        await control.ready()
        await events.ready()
        await revoked.ready()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._listen(control, self._on_control)),
            loop.create_task(self._listen(events, self.hub.on_ephemeral)),
            loop.create_task(self._listen(revoked, self._on_revocation)),
            loop.create_task(self._beat_loop()),
            loop.create_task(self._sweep_loop()),
        ]
        await self._beat()
        gctune.tune()  # start-up objects never get rescanned by a full collection
        self.ready = True
        log.info("gateway %s listening on %s", self.gateway_id, self.url)

    async def close(self) -> None:
        """Stop: sessions stay resumable elsewhere (saved), the gateway leaves the registry."""
        self.ready = False
        if self._server is not None:
            self._server.close(close_connections=False)
        for conn in list(self.conns):
            conn.close(CloseCode.SERVER_DRAINING, "gateway shutting down")
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        if self._closed_flush is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._closed_flush), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._saver.close(), 5)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.hub.consumer.close()
        with contextlib.suppress(Exception):
            await self.registry.remove_gateway(self.gateway_id)

    # --- HTTP probes on the gateway port ----------------------------------------------------
    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return conn.respond(200, "ok\n")
        if path == "/readyz":
            ok = self.ready and not self.draining
            return conn.respond(200 if ok else 503, "ready\n" if ok else "not ready\n")
        if path == "/metrics":
            resp = conn.respond(200, generate_latest().decode())
            del resp.headers["Content-Type"]
            resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return resp
        return None

    # --- connections ------------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        # The handshake response (status line, headers, body) is never read again; websockets
        # would keep it for the connection's lifetime (about 1 KiB per idle connection).
        ws.response = None
        ws.protocol.__class__ = _GatewayProtocol
        metrics.CONNECTIONS.inc()
        self._opened += 1
        try:
            assert ws.request is not None
            # keep_blank_values: an empty ``encoding=`` is not json (4504), not "absent".
            query = parse_qs(urlsplit(ws.request.path).query, keep_blank_values=True)
            try:
                encoding = negotiate(query.get("v", [None])[0], query.get("encoding", [None])[0])
            except ProtocolError as exc:
                metrics.closed(exc.close_code)
                await ws.close(int(exc.close_code), exc.reason)
                return
            allowed = self.settings.allowed_origins
            if allowed and ws.request.headers.get("Origin") not in allowed:
                metrics.closed(CloseCode.ORIGIN_NOT_ALLOWED)
                await ws.close(CloseCode.ORIGIN_NOT_ALLOWED, "origin not allowed")
                return
            if self.draining:
                metrics.closed(CloseCode.SERVER_DRAINING)
                await ws.close(CloseCode.SERVER_DRAINING, "draining")
                return
            conn = ClientConnection(self, ws, encoding)
            self.conns.add(conn)
            self._deadlines.add(conn, conn.proto.heartbeat_deadline)
            await conn.run()
        finally:
            self._closed += 1
            metrics.CONNECTIONS.dec()

    async def end_connection(self, conn: ClientConnection) -> None:
        """The connection is gone: keep the session resumable (released), or end it."""
        self.conns.discard(conn)
        self._deadlines.discard(conn)
        conn.out.discard()
        if conn.close_code is None:
            # The client's close code, or ours when websockets closed it (4502 on an oversized
            # frame), or None when the connection just dropped.
            proto = conn.ws.protocol
            closed = proto.close_rcvd or proto.close_sent
            conn.proto.connection_lost(closed.code if closed is not None else None)
        session = conn.session
        if session is None:
            return
        resumable = conn.proto.resumable
        blob = session.to_blob(self.settings.resume_window_s, "")  # before rooms are emptied
        self.hub.remove_session(session)
        self._refresh.discard(session)
        if session.taken:
            return  # resumed on another connection, which owns the saved state now
        if resumable:
            self._keep_closed(session.session_id, blob, session.epoch)
            return
        await self.end_session(session)

    async def end_session(self, session: Session) -> None:
        """The session is over (not resumable): delete its saved state."""
        self._closed_saves.pop(session.session_id, None)
        try:
            await self.registry.delete_session_if(session.session_id, session.epoch)
        except Exception:
            log.warning("could not delete session %s", session.session_id, exc_info=True)

    def _keep_closed(self, session_id: str, blob: bytes, epoch: int) -> None:
        """Queue the final state of a resumable session for the Registry (``_flush_closed``);
        until it is written, a RESUME on this gateway takes it from here."""
        deadline = time.monotonic() + self.settings.resume_window_s
        self._closed_saves[session_id] = (blob, epoch, deadline)
        if self._closed_flush is None:
            self._closed_flush = asyncio.get_running_loop().create_task(self._flush_closed())

    async def _flush_closed(self) -> None:
        """Save the final state of closed connections, many per Registry call.

        A mass disconnect (a load balancer restart, a network blip) closes thousands of
        connections in one second: one round trip each would queue them all behind the Redis
        pool. Whatever closes while a batch is written goes into the next one. A batch that
        fails stays queued and is retried with backoff (the Registry is down) until it is
        written or its resume window is over: a RESUME must never trust an older saved state
        while the exact one is still here. Conditional on the epoch: a False result means
        the session was resumed elsewhere meanwhile, whose newer state stays.
        """
        window = self.settings.resume_window_s
        delay = 0.1
        try:
            while self._closed_saves:
                now = time.monotonic()
                batch = list(self._closed_saves.items())
                for sid, entry in batch:
                    if entry[2] <= now:
                        del self._closed_saves[sid]  # expired: nothing left to resume
                items = [(sid, e[0], e[1]) for sid, e in batch if e[2] > now]
                try:
                    await self.registry.save_sessions_if(items, window)
                except Exception:
                    log.warning("could not save %d closed sessions", len(items), exc_info=True)
                    await asyncio.sleep(delay)
                    delay = min(CLOSED_SAVE_BACKOFF_MAX_S, delay * 2)
                    continue
                delay = 0.1
                for sid, entry in batch:
                    if self._closed_saves.get(sid) is entry:
                        del self._closed_saves[sid]
        finally:
            self._closed_flush = None

    async def save_now(self, session: Session) -> None:
        await self._save(session)

    async def _save(self, session: Session) -> None:
        """Save while live (owner = this gateway); never over a newer resume elsewhere.

        One round trip, shared with the other saves of the same tick (``_saver``): the
        Registry compares epochs and writes atomically. A False result means
        a higher epoch was saved (the session was resumed elsewhere): the local copy is stale, and
        its connection is kicked instead of overwriting the blob. The TAKE handshake below is
        what normally stops a stale holder first; this catches a holder that missed it.
        """
        if session.taken:
            return
        blob = session.to_blob(self.settings.resume_window_s, self.gateway_id)
        if not await self._saver.submit((session.session_id, blob, session.epoch)):
            self._kick(session)
            return
        self._saved(session, time.monotonic())

    def _saved(self, session: Session, now: float) -> None:
        session.saved_at = now
        self._refresh.add(session, now + self.settings.resume_window_s / 3)

    async def _write_saves(self, items: Sequence[tuple[str, bytes, int]]) -> list[bool]:
        """One Registry call for the saves gathered by ``_saver`` (each conditional on its
        epoch, as ``save_session_if``)."""
        return await self.registry.save_sessions_if(items, self.settings.resume_window_s)

    def _kick(self, session: Session) -> None:
        """Stop the stale copy now: no more fan-out to it, its socket closed with 4000."""
        session.taken = True
        if self.hub.sessions.get(session.session_id) is not session:
            # Already gone, or the id now names a newer copy resumed on THIS gateway (a save of
            # the old copy was in flight): the holder registered under the id is not ours.
            return
        holder = self.hub.holders.get(session.session_id)
        self.hub.remove_session(session)  # before the new copy registers under the id
        if holder is not None:
            holder.close(CloseCode.INTERNAL_ERROR, "session resumed on another connection")

    async def _release(self, session_id: str) -> None:
        """Hand a session over to a RESUME elsewhere (a TAKE): save its exact state, released
        (``owner`` empty), and kick its connection if it has one."""
        window = self.settings.resume_window_s
        session = self.hub.sessions.get(session_id)
        if session is not None and not session.taken:
            blob, epoch = session.to_blob(window, ""), session.epoch
            self._kick(session)
        elif session_id in self._closed_saves:
            blob, epoch, _ = self._closed_saves[session_id]
        else:
            return
        # False: a newer owner saved already (it did not wait for us); its state stays.
        await self.registry.save_session_if(session_id, blob, epoch, window)
        if self._closed_saves.get(session_id, (None,))[0] is blob:
            del self._closed_saves[session_id]

    async def take_session(self, session_id: str, user_id: int) -> SessionBlob | None:
        """The saved state of ``user_id``'s session for RESUME, released by whoever holds it;
        None when unknown, expired or someone else's (then nothing is touched).

        On this gateway: a live holder is kicked and its exact state used; a closed one's final
        state is used even before it reached the Registry. Elsewhere: the holder is asked over
        its control channel and waited for (up to TAKE_WAIT_S), so the state covers everything
        that socket was sent; not waited for when nobody listens on that channel (the holder
        crashed). The caller then claims the session at the returned blob's epoch.
        """
        window = self.settings.resume_window_s
        raw: bytes | None
        local = self.hub.sessions.get(session_id)
        if local is not None and not local.taken:
            if local.user_id != user_id:
                return None
            raw = local.to_blob(window, "")
            self._kick(local)
            self._keep_closed(session_id, raw, local.epoch)  # kept if the RESUME goes no further
        elif session_id in self._closed_saves:
            raw = self._closed_saves[session_id][0]
        else:
            raw = await self.registry.load_session(session_id)
        blob = load_blob(raw) if raw is not None else None
        if blob is None or blob.user_id != user_id:
            return None
        if not blob.owner or blob.owner == self.gateway_id:
            return blob
        owner, epoch = blob.owner, blob.epoch
        listeners = await self.registry.publish(
            gateway_control_channel(owner), TAKE_PREFIX + session_id.encode()
        )
        if not listeners:
            return blob  # the holder is gone (crashed): nobody will release, nothing to wait for
        deadline = time.monotonic() + TAKE_WAIT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            again = await self.registry.load_session(session_id)
            fresh = load_blob(again) if again is not None else None
            if fresh is None or fresh.owner != owner or fresh.epoch != epoch:
                return fresh if fresh is None or fresh.user_id == user_id else None
        return blob

    async def claim_session(self, session: Session, loaded_epoch: int) -> bool:
        """Take the session over for this connection (RESUME): True for exactly one of any
        concurrent claims of the state loaded at ``loaded_epoch``."""
        window = self.settings.resume_window_s
        blob = session.to_blob(window, self.gateway_id)
        if not await self.registry.claim_session(session.session_id, loaded_epoch, blob, window):
            return False
        self._closed_saves.pop(session.session_id, None)  # older than what was just claimed
        self._saved(session, time.monotonic())
        return True

    # --- background loops -------------------------------------------------------------------
    async def _listen(self, sub: Any, handle: Any) -> None:
        async for payload in sub:
            try:
                handle(payload)
            except Exception:
                log.exception("registry message handler failed")

    def _on_revocation(self, payload: bytes) -> None:
        """A login (or every login) of a user was revoked: its live sessions end with 4501
        (terminal: the client needs a new token), so they can't be resumed either."""
        rev = revocation.decode(payload)
        if rev is None:
            return
        for conn in list(self.conns):
            if conn.principal is not None and rev.covers(conn.principal):
                conn.close(CloseCode.AUTHENTICATION_FAILED, "token revoked")

    def _on_control(self, payload: bytes) -> None:
        if payload == DRAIN_MESSAGE:
            self.hub.spawn(self.drain())
        elif payload.startswith(TAKE_PREFIX):
            self.hub.spawn(self._release(payload[len(TAKE_PREFIX) :].decode(errors="replace")))

    async def _beat(self) -> None:
        """Full state every beat: this also rebuilds the maps after a registry loss."""
        ttl = self.settings.gateway_ttl_s
        gid = self.gateway_id
        record = GatewayRecord(gid, self.url, len(self.hub.sessions), self.draining)
        await self.registry.heartbeat_gateway(record, ttl)
        rooms = [r for r, st in self.hub.rooms.rooms.items() if st.last_seq is not None]
        if rooms:
            await self.registry.add_rooms(gid, rooms, ttl)
        await self.registry.set_partitions(gid, sorted(self.hub.consumer.assigned()), ttl)

    async def _beat_loop(self) -> None:
        period = self.settings.gateway_ttl_s / 3
        while True:
            await asyncio.sleep(period)
            try:
                await self._beat()
            except Exception:
                log.warning("registry heartbeat failed", exc_info=True)

    def _sweep_period(self) -> float:
        return min(1.0, self.settings.heartbeat_interval_ms / 1000 / 4)

    def _expire(self, now: float) -> None:
        """Close (4001) the connections past their heartbeat deadline; file the others again
        under their deadline, which moved when a frame arrived (a busy one: the next sweep)."""
        for conn in self._deadlines.due(now):
            conn.poll(now)
            if conn.close_code is None and conn in self.conns:
                self._deadlines.add(conn, max(conn.proto.heartbeat_deadline, now))

    async def _sweep_loop(self) -> None:
        """Zombie connections (4001) and periodic session saves."""
        period = self._sweep_period()
        refresh = self.settings.resume_window_s / 3
        while True:
            await asyncio.sleep(period)
            self._gc.poll(self._opened, self._closed)
            now = time.monotonic()
            self._expire(now)
            due = self._due_saves(now, refresh)
            if due:
                try:
                    await self._save_many(due)
                except Exception:
                    log.warning("session save failed", exc_info=True)

    def _due_saves(self, now: float, refresh: float) -> list[Session]:
        """Sessions changed since their last save (at most one save a second each), then
        those unchanged whose saved state needs its refresh (from the wheel: not a scan)."""
        due = [
            s
            for s in self.hub.sessions.values()
            if (s.dirty or s.s != s.saved_s) and now - s.saved_at >= 1.0
        ]
        for s in self._refresh.due(now):
            if self.hub.sessions.get(s.session_id) is not s:
                continue  # gone, or kicked: nothing of it to keep alive
            if now - s.saved_at < refresh:
                self._refresh.add(s, s.saved_at + refresh)  # early by less than a sweep
            elif not (s.dirty or s.s != s.saved_s):  # changed ones are in ``due`` already
                due.append(s)
        return due

    async def _save_many(self, sessions: list[Session]) -> None:
        """The periodic saves of one sweep: one Registry call (a few round trips), not one each.

        Same rules as :meth:`_save`. Blobs are built in slices, each written before the next is
        built, so no single step holds the loop for long. A session whose save fails stays
        dirty and is retried by the next sweep.
        """
        window = self.settings.resume_window_s
        for i in range(0, len(sessions), SAVE_SLICE):
            batch = [s for s in sessions[i : i + SAVE_SLICE] if not s.taken]
            items = [(s.session_id, s.to_blob(window, self.gateway_id), s.epoch) for s in batch]
            try:
                results = await self.registry.save_sessions_if(items, window)
            except Exception:
                for s in batch:
                    s.dirty = True
                raise
            now = time.monotonic()
            for session, ok in zip(batch, results, strict=True):
                if not ok:
                    self._kick(session)
                elif self.hub.sessions.get(session.session_id) is session:
                    self._saved(session, now)

    # --- drain ------------------------------------------------------------------------------
    async def drain(self) -> None:
        """RECONNECT every session (to another gateway if one is known), then close with 4011."""
        if self.draining:
            return
        self.draining = True
        url: str | None = None
        with contextlib.suppress(Exception):
            await self._beat()
            others = [
                g
                for g in await self.registry.live_gateways()
                if g.gateway_id != self.gateway_id and not g.draining
            ]
            if others:
                url = min(others, key=lambda g: g.sessions).url
        for conn in list(self.conns):
            conn.send(conn.proto.reconnect(url))
        deadline = time.monotonic() + self.drain_grace_s
        while self.conns and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a set
            await asyncio.sleep(0.05)
        for conn in list(self.conns):
            conn.close(CloseCode.SERVER_DRAINING, "draining")


async def serve_gateway(
    settings: Settings,
    auth: AuthPort,
    chat: ChatPort,
    event_log: EventLog,
    registry: Registry,
    **options: Any,
) -> Gateway:
    """Start a gateway (listening, registered); ``await gw.close()`` to stop it."""
    gw = Gateway(settings, auth, chat, event_log, registry, **options)
    await gw.start()
    return gw
