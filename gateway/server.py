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
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from gateway import metrics, wire
from gateway.connection import ClientConnection
from gateway.consumer import PartitionConsumer
from gateway.hub import Hub, events_channel
from gateway.ports import AuthPort, ChatPort
from gateway.ratelimit import KeyedBuckets
from gateway.session import Session
from shardchat.config import Settings
from shardchat.eventlog import EventLog
from shardchat.registry import (
    DRAIN_MESSAGE,
    GatewayRecord,
    Registry,
    gateway_control_channel,
)

log = logging.getLogger(__name__)

#: Session-ending close codes from the client (PROTOCOL.md 2: 1000/1001 end the session).
_CLIENT_ENDS = {1000, 1001}


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
        self.identify_limits = KeyedBuckets(
            settings.identify_per_window,
            settings.identify_per_window / settings.identify_window_s,
        )
        self.draining = False
        self.ready = False
        self.port = 0
        self.url = ""
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._last_save: dict[str, float] = {}

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings

        def make_consumer(on_event: Any) -> PartitionConsumer:
            return PartitionConsumer(self.event_log, on_event, linger_s=self._linger_s)

        self.hub = Hub(self.gateway_id, self.chat, self.registry, make_consumer,
                       ring_size=s.ring_buffer_events, room_ttl_s=s.gateway_ttl_s)
        self.hub.consumer.start()
        self._server = await serve(
            self._handler,
            s.host,
            s.gateway_port,
            process_request=self._process_request,
            compression=None,  # fan-out writes pre-built frames; deflate would cost 64 KiB/conn
            # Above the protocol limit so oversized frames reach us and get 4502, not 1009.
            max_size=max(1 << 20, 4 * s.max_frame_bytes),
            ping_interval=None,  # the protocol's own heartbeats detect zombies
            close_timeout=5,
            server_header=None,
        )
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])
        self.url = s.public_gateway_url or f"ws://{s.host}:{self.port}/ws"
        control = self.registry.subscribe(gateway_control_channel(self.gateway_id))
        events = self.registry.subscribe(events_channel(self.gateway_id))
        await control.ready()
        await events.ready()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._listen(control, self._on_control)),
            loop.create_task(self._listen(events, self.hub.on_ephemeral)),
            loop.create_task(self._beat_loop()),
            loop.create_task(self._sweep_loop()),
        ]
        await self._beat()
        self.ready = True
        log.info("gateway %s listening on %s", self.gateway_id, self.url)

    async def close(self) -> None:
        """Stop: sessions stay resumable elsewhere (saved), the gateway leaves the registry."""
        self.ready = False
        if self._server is not None:
            self._server.close(close_connections=False)
        for conn in list(self.conns):
            if conn.session is not None:
                await self._save(conn.session)
            conn.close(1001, "gateway shutting down")
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
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
        metrics.CONNECTIONS.inc()
        try:
            assert ws.request is not None
            query = parse_qs(urlsplit(ws.request.path).query)
            version = query.get("v", ["1"])[0]
            encoding = query.get("encoding", ["json"])[0]
            if version != "1" or encoding not in wire.ENCODINGS:
                metrics.CLOSES.labels("4504").inc()
                await ws.close(wire.Close.BAD_VERSION_OR_ENCODING, "unsupported v or encoding")
                return
            allowed = self.settings.allowed_origins
            if allowed and ws.request.headers.get("Origin") not in allowed:
                metrics.CLOSES.labels("4503").inc()
                await ws.close(wire.Close.ORIGIN_NOT_ALLOWED, "origin not allowed")
                return
            if self.draining:
                await ws.close(wire.Close.DRAINING, "draining")
                return
            conn = ClientConnection(self, ws, "json" if encoding == "json" else "msgpack")
            self.conns.add(conn)
            await conn.run()
        finally:
            metrics.CONNECTIONS.dec()

    async def end_connection(self, conn: ClientConnection) -> None:
        """The connection is gone: keep the session resumable, or end it (1000/1001, 45xx)."""
        self.conns.discard(conn)
        conn.out.discard()
        session = conn.session
        if session is None:
            return
        window = self.settings.resume_window_s
        blob = session.to_blob(window)  # before unsubscribing empties the session's rooms
        self.hub.remove_session(session)
        if conn.close_code is not None:
            ends = conn.close_code >= 4500
        else:
            rcvd = conn.ws.protocol.close_rcvd
            ends = rcvd is not None and rcvd.code in _CLIENT_ENDS
        self._last_save.pop(session.session_id, None)
        try:
            if ends:
                await self.registry.delete_session(session.session_id)
            else:
                await self.registry.save_session(session.session_id, blob, window)
        except Exception:
            log.warning("could not save/delete session %s", session.session_id, exc_info=True)

    def save_soon(self, session: Session) -> None:
        session.dirty = True

    async def _save(self, session: Session) -> None:
        window = self.settings.resume_window_s
        await self.registry.save_session(session.session_id, session.to_blob(window), window)
        self._last_save[session.session_id] = time.monotonic()

    # --- background loops -------------------------------------------------------------------
    async def _listen(self, sub: Any, handle: Any) -> None:
        async for payload in sub:
            try:
                handle(payload)
            except Exception:
                log.exception("registry message handler failed")

    def _on_control(self, payload: bytes) -> None:
        if payload == DRAIN_MESSAGE:
            self.hub.spawn(self.drain())

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

    async def _sweep_loop(self) -> None:
        """Zombie connections (4001) and periodic session saves."""
        interval = self.settings.heartbeat_interval_ms / 1000
        period = min(1.0, interval / 4)
        timeout = 1.5 * interval
        refresh = self.settings.resume_window_s / 3
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self.conns):
                if conn.close_code is None and not conn.busy and now - conn.last_rx > timeout:
                    conn.close(wire.Close.HEARTBEAT_TIMEOUT, "heartbeat timeout")
            for session in list(self.hub.sessions.values()):
                last = self._last_save.get(session.session_id, 0.0)
                changed = session.dirty or session.s != session.saved_s
                if (changed and now - last >= 1.0) or now - last >= refresh:
                    try:
                        await self._save(session)
                    except Exception:
                        log.warning("session save failed", exc_info=True)
                        break

    # --- drain ------------------------------------------------------------------------------
    async def drain(self) -> None:
        """RECONNECT every session (to another gateway if one is known), then close with 4011."""
        if self.draining:
            return
        self.draining = True
        url: str | None = None
        with contextlib.suppress(Exception):
            await self._beat()
            others = [g for g in await self.registry.live_gateways()
                      if g.gateway_id != self.gateway_id and not g.draining]
            if others:
                url = min(others, key=lambda g: g.sessions).url
        for conn in list(self.conns):
            conn.send(wire.RECONNECT, {"url": url} if url else {})
        deadline = time.monotonic() + self.drain_grace_s
        while self.conns and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a set
            await asyncio.sleep(0.05)
        for conn in list(self.conns):
            if conn.session is not None:
                with contextlib.suppress(Exception):
                    await self._save(conn.session)
            conn.close(wire.Close.DRAINING, "draining")


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
