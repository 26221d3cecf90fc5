"""Build the edge ASGI app.

Why graphql-core directly (not Ariadne or Strawberry), measured by ``python -m
loadtest.graphql_libs`` (docs/benchmarks.md): the schema is one SDL string and a table of
resolvers, which is what Ariadne would add on top of graphql-core. What matters for speed is
parsing and validating each query text once (pipeline.py caches both): uncached, a
``sendMessage`` costs 36x the CPU of a cached one, through Ariadne or not. Ariadne with its
parser/validator hooks caching too is within 1-23% of graphql-core here. So the choice is not
about execution speed: graphql-core alone lets us own the transport (limits before parsing, the
graphql-transport-ws state machine, metrics) with one dependency less.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from graphql_edge.context import Services
from graphql_edge.files import files_endpoint
from graphql_edge.http import (
    GraphQLEndpoint,
    gateway_endpoint,
    healthz,
    metrics_endpoint,
    readyz_endpoint,
)
from graphql_edge.pipeline import Pipeline
from graphql_edge.ports import Auth, Chat, Files, Placement, Presence, RoomEventSource
from graphql_edge.ratelimit import TokenBuckets
from graphql_edge.schema import build
from graphql_edge.settings import EdgeSettings
from graphql_edge.ws import Connection, LiveConnections
from shardchat.config import Settings
from shardchat.registry import Registry


def create_app(
    settings: Settings,
    auth: Auth,
    chat: Chat,
    placement: Placement,
    *,
    events: RoomEventSource | None = None,
    presence: Presence | None = None,
    revocations: Registry | None = None,
    files: Files | None = None,
    routes: Sequence[BaseRoute] = (),
    edge: EdgeSettings | None = None,
    ready: Callable[[], Awaitable[bool]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> Starlette:
    """The edge app. ``settings``: origins (``allowed_origins``, ``cors_origins``), trusted
    proxies, the auth limits and the ``graphql_*`` fields are read; ``edge`` overrides the
    GraphQL limits outright.
    ``events`` serves subscriptions (``graphql_edge.events.LogRoomEvents`` normally); without it
    ``roomEvents`` answers INTERNAL. ``presence`` (a Registry) feeds ``User.status``;
    ``revocations`` (a Registry) tells which graphql-ws connections to close when a token is
    revoked (``user_core.revocation``).
    ``files`` (a FileService) serves uploads, attachments and ``/files/{id}``; ``routes`` are
    served too (the filesystem object store's ``/objects`` URLs).
    """
    edge = edge or EdgeSettings.from_settings(settings)
    services = Services(
        auth=auth,
        chat=chat,
        placement=placement,
        events=events,
        presence=presence,
        mutation_limiter=TokenBuckets(edge.mutation_burst, edge.mutation_per_s),
        query_limiter=TokenBuckets(edge.query_burst, edge.query_per_s),
        auth_limiter=TokenBuckets(settings.auth_ip_burst, settings.auth_ip_per_s),
        search_limiter=TokenBuckets(edge.search_burst, edge.search_per_s),
        files=files,
    )
    pipeline = Pipeline(build(), edge)
    origins: tuple[str, ...] = tuple(settings.allowed_origins)
    trusted: tuple[str, ...] = tuple(settings.trusted_proxies)
    live = LiveConnections(revocations)

    async def graphql_ws(ws: WebSocket) -> None:
        conn = Connection(ws, pipeline, services, origins, trusted)
        async with live.holding(conn):
            await conn.serve()

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await live.close()
        if on_shutdown is not None:
            await on_shutdown()

    endpoint = GraphQLEndpoint(
        pipeline,
        services,
        origins=origins,
        trusted_proxies=trusted,
        body_timeout_s=settings.http_body_timeout_s,
    )
    download = files_endpoint(services)
    all_routes = [
        Route("/graphql", endpoint.handle, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql_ws),
        Route("/gateway", gateway_endpoint(services), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz_endpoint(ready), methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/files/{id}", download, methods=["GET"]),
        Route("/files/{id}/thumbnail", download, methods=["GET"]),
        *routes,
    ]
    if edge.static_dir.is_dir():
        all_routes.append(Mount("/", StaticFiles(directory=edge.static_dir, html=True), name="web"))
    app = Starlette(routes=all_routes, lifespan=lifespan, middleware=_cors(settings.cors_origins))
    app.state.pipeline = pipeline
    app.state.services = services
    return app


def _cors(origins: tuple[str, ...]) -> list[Middleware]:
    """CORS for pages served from other origins (a dev server, another site), when configured.

    Empty: no CORS headers at all (a browser then keeps cross-origin pages out). Otherwise the
    listed origins (``*``: any) may GET and POST with any request header (``Authorization``
    included: requested headers are echoed, never a wildcard), and preflights are cached 10
    minutes. Credentials (cookies) stay off: the edge authenticates with the Authorization
    header only, so ``*`` exposes nothing a cross-site page could not already ask for.
    """
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=["*"] if "*" in origins else list(origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            allow_credentials=False,
            max_age=600,
        )
    ]
