"""Run one service until SIGINT/SIGTERM: the bodies of ``shardchat gateway|edge|router|migrate``.

Each runner turns tracing on (when configured), opens what it needs from Settings, serves, and on
the first signal stops cleanly (a gateway drains first: RECONNECT to its sessions, then close).
``run_dev`` composes the same pieces in one process around one shared Core.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from shardchat.config import Settings
from shardchat.migrate import migrate
from shardchat.registry import DRAIN_MESSAGE, gateway_control_channel
from shardchat.runtime import Core, open_registry
from shardchat.store import open_store
from shardchat.tracing import configure_tracing, shutdown_tracing

log = logging.getLogger("shardchat")

#: How long uvicorn waits for open HTTP/WebSocket connections (GraphQL subscriptions) to finish
#: after a stop: without a bound one idle browser tab would keep the process alive.
HTTP_GRACE_S = 3


def stop_event() -> asyncio.Event:
    """An Event set by the first SIGINT or SIGTERM (the loop's handlers: no KeyboardInterrupt)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling.

    Why: ``Server.serve`` installs SIGINT/SIGTERM handlers and re-raises the signal after it
    stopped, which would kill the process before the other services (gateway drain, Core close)
    shut down. The process-wide stop_event() owns signals; we set ``should_exit`` ourselves.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """One uvicorn listener on the running loop: ``await start()``, later ``await stop()``."""

    def __init__(self, app: Any, host: str, port: int, log_level: str, name: str) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level.lower(),
            access_log=log_level.upper() == "DEBUG",
            lifespan="on",
            log_config=None,  # uvicorn's loggers go through ours: one format for the process
            timeout_graceful_shutdown=HTTP_GRACE_S,
            server_header=False,
            # X-Forwarded-For is read by the edge itself, from Settings.trusted_proxies only:
            # uvicorn's own handling believes it from any loopback peer.
            proxy_headers=False,
            # Idle keep-alive connections are closed after this (uvicorn's default is 5 s).
            timeout_keep_alive=5,
        )
        self.name = name
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when the configured one is 0)."""
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return 0

    async def start(self) -> None:
        """Serve in a task; return once listening. Raises if startup failed (port taken...)."""
        self._task = asyncio.create_task(self._server.serve(), name=f"http-{self.name}")
        while not self._server.started:
            if self._task.done():
                # uvicorn logs the cause and returns (or exits) instead of raising
                with contextlib.suppress(SystemExit):
                    await self._task
                raise RuntimeError(f"{self.name}: HTTP server failed to start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception, SystemExit):
            await self._task
        self._task = None


# --- the one-service runners --------------------------------------------------------------------


async def run_migrate(settings: Settings) -> list[str]:
    store = open_store(settings)
    await store.start()
    try:
        return await migrate(store)
    finally:
        await store.close()


async def run_gateway(settings: Settings) -> None:
    from gateway.server import serve_gateway

    configure_tracing("shardchat-gateway", settings.otlp_endpoint)
    stop = stop_event()
    core = await Core.open(settings)
    try:
        gw = await serve_gateway(settings, core.auth, core.chat, core.event_log, core.registry)
        print(f"gateway {gw.gateway_id} listening on {gw.url}", flush=True)
        await stop.wait()
        log.info("gateway %s: stopping (drain first)", gw.gateway_id)
        await gw.drain()
        await gw.close()
    finally:
        await core.close()
        shutdown_tracing()


def build_edge_app(settings: Settings, core: Core, placement: Any) -> Any:
    """The edge app over a Core: subscriptions from the event log, presence from the registry,
    files from the Core's FileService (and, on the filesystem object store, the routes that
    serve its presigned URLs).

    ``placement`` is router's ``Placement`` (shared with the router app in ``shardchat dev``).
    """
    from graphql_edge import create_app
    from graphql_edge.events import LogRoomEvents
    from shardchat.adapters.fs_objects import FsObjectStore

    events = LogRoomEvents(core.chat, core.event_log)

    async def ready() -> bool:
        await asyncio.wait_for(core.registry.ping(), 2.0)
        return True

    return create_app(
        settings,
        core.auth,
        core.chat,
        placement,
        events=events,
        presence=core.registry,
        revocations=core.registry,
        files=core.files,
        routes=core.objects.routes() if isinstance(core.objects, FsObjectStore) else (),
        ready=ready,
        on_shutdown=events.close,
    )


async def run_edge(settings: Settings) -> None:
    from router.placement_service import Placement

    configure_tracing("shardchat-edge", settings.otlp_endpoint)
    stop = stop_event()
    # Migrations belong to ``shardchat migrate`` (run once per release): N edges starting
    # together must not race to apply them.
    core = await Core.open(settings, apply_migrations=False)
    try:
        app = build_edge_app(settings, core, Placement(core.registry))
        server = HttpServer(app, settings.host, settings.edge_port, settings.log_level, "edge")
        await server.start()
        print(f"edge listening on http://{settings.host}:{server.port}/", flush=True)
        await stop.wait()
        await server.stop()
    finally:
        await core.close()
        shutdown_tracing()


async def run_router(settings: Settings) -> None:
    from router.main import create_service_app

    configure_tracing("shardchat-router", settings.otlp_endpoint)
    stop = stop_event()
    # The service app's lifespan starts and closes its own registry.
    app = create_service_app(settings)
    server = HttpServer(app, settings.host, settings.router_port, settings.log_level, "router")
    await server.start()
    print(f"router listening on http://{settings.host}:{server.port}/", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()
        shutdown_tracing()


async def drain_via_router(router_url: str, gateway_id: str) -> tuple[int, str]:
    """POST /drain/{id} to the router: (HTTP status, body)."""
    import httpx

    async with httpx.AsyncClient(timeout=10.0) as http:
        resp = await http.post(f"{router_url.rstrip('/')}/drain/{gateway_id}")
        return resp.status_code, resp.text


async def drain_via_registry(settings: Settings, gateway_id: str) -> bool:
    """What the router's /drain does, straight on the registry (no router needed).

    False when the gateway is not live."""
    registry = open_registry(settings)
    await registry.start()
    try:
        if not await registry.mark_draining(gateway_id):
            return False
        await registry.publish(gateway_control_channel(gateway_id), DRAIN_MESSAGE)
        return True
    finally:
        await registry.close()


# --- shardchat dev: everything in one process ----------------------------------------------------

DEV_KEY_FILE = "dev-jwt-keys.json"
#: One gateway and nowhere to send its clients: a short drain is enough for them to hear RECONNECT.
DEV_DRAIN_GRACE_S = 1.0


def dev_jwt_keys(data_dir: Path) -> dict[str, str]:
    """The dev signing key, made once and kept in the data folder (mode 600).

    Why keep it: with a fresh key per start, every browser tab's token would stop verifying after
    a restart of ``shardchat dev`` while its refresh token (in SQLite) still looks valid."""
    path = data_dir / DEV_KEY_FILE
    with contextlib.suppress(FileNotFoundError, ValueError):
        keys = json.loads(path.read_text())
        if isinstance(keys, dict) and keys and all(isinstance(v, str) for v in keys.values()):
            return {str(k): v for k, v in keys.items()}
    keys = {f"dev-{secrets.token_hex(4)}": secrets.token_urlsafe(48)}
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(keys, f)
    return keys


def dev_settings(settings: Settings, data_dir: Path) -> Settings:
    """Settings for the one-process mode: the embedded adapters, SQLite and files under
    ``data_dir``."""
    import msgspec

    return msgspec.structs.replace(
        settings,
        store="sqlite",
        sqlite_path=str(data_dir / "shardchat.sqlite3"),
        event_log="memory",
        registry="memory",
        object_store="filesystem",
        files_dir=str(data_dir / "files"),
        jwt_keys=settings.jwt_keys or dev_jwt_keys(data_dir),
        dev_mode=True,
    )


def _http_host(host: str) -> str:
    """A host to print in a URL: a wildcard bind is reached through loopback."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


async def run_dev(settings: Settings, data_dir: Path) -> None:
    """Edge + router + one gateway on one loop, sharing one Core on the embedded adapters."""
    from gateway.server import serve_gateway
    from router.app import create_app as create_router_app
    from router.placement_service import Placement

    configure_tracing("shardchat-dev", settings.otlp_endpoint)
    settings = dev_settings(settings, data_dir)
    stop = stop_event()
    core = await Core.open(settings)  # applies migrations
    started: list[HttpServer] = []
    gw: Any = None
    try:
        # One Placement for the edge's /gateway and the router's: one view of gateway loads.
        placement = Placement(core.registry)
        gw = await serve_gateway(
            settings,
            core.auth,
            core.chat,
            core.event_log,
            core.registry,
            drain_grace_s=DEV_DRAIN_GRACE_S,
        )
        for server in (
            HttpServer(
                create_router_app(core.registry, settings, placement=placement),
                settings.host,
                settings.router_port,
                settings.log_level,
                "router",
            ),
            HttpServer(
                build_edge_app(settings, core, placement),
                settings.host,
                settings.edge_port,
                settings.log_level,
                "edge",
            ),
        ):
            await server.start()
            started.append(server)
        router, edge = started
        host = _http_host(settings.host)
        web = f"http://{host}:{edge.port}"
        print(
            "\n".join(
                [
                    "shardchat dev is up (Ctrl-C to stop)",
                    f"  web client   {web}/",
                    f"  GraphQL      {web}/graphql",
                    f"  gateway ws   {gw.url}   (id {gw.gateway_id})",
                    f"  router       http://{host}:{router.port}/gateway",
                    f"  metrics      {web}/metrics  ws: http://{host}:{gw.port}/metrics",
                    f"  data         {settings.sqlite_path}, files in {settings.files_dir}",
                ]
            ),
            flush=True,
        )
        await stop.wait()
        print("shardchat dev: stopping", flush=True)
        await gw.drain()
    finally:
        # Reverse order of start: new traffic stops first, then the gateway, then the Core.
        for server in reversed(started):
            await server.stop()
        if gw is not None:
            await gw.close()
        await core.close()
        shutdown_tracing()
