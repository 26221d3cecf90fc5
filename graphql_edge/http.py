"""HTTP endpoints: POST /graphql, GET /gateway, health, readiness, metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from graphql import GraphQLError
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from graphql_edge import metrics
from graphql_edge.auth import authenticate
from graphql_edge.context import Context, Services
from graphql_edge.errors import simple_error
from graphql_edge.outcome import errors_body, outcome_of, result_body
from graphql_edge.pipeline import Pipeline, request_from_json
from shardchat.clientip import real_client

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[bool]]


def _json(body: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status, media_type="application/json")


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:  # chunked or lying Content-Length
            raise _TooLarge
    return bytes(body)


def is_json(content_type: str) -> bool:
    """``application/json``, with parameters (``; charset=utf-8``) or not; nothing else."""
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def client_address(request: Request, trusted_proxies: tuple[str, ...]) -> str:
    peer = request.client.host if request.client else "unknown"
    return real_client(peer, ", ".join(request.headers.getlist("x-forwarded-for")), trusted_proxies)


class GraphQLEndpoint:
    """POST /graphql. ``origins``: when set, a request whose ``Origin`` is not one of them is
    refused with 403 (browsers send Origin on every cross-site POST; requests without one come
    from non-browser clients, which carry a bearer token, never a cookie)."""

    def __init__(
        self,
        pipeline: Pipeline,
        services: Services,
        *,
        origins: tuple[str, ...] = (),
        trusted_proxies: tuple[str, ...] = (),
        body_timeout_s: float = 10.0,
    ) -> None:
        self.pipeline = pipeline
        self.services = services
        self.origins = origins
        self.trusted_proxies = trusted_proxies
        self.body_timeout_s = body_timeout_s

    async def handle(self, request: Request) -> Response:
        if request.method != "POST":
            return PlainTextResponse(
                "POST GraphQL here; subscriptions use graphql-transport-ws on this path.",
                405,
                headers={"Allow": "POST"},
            )
        started = time.perf_counter()
        kind, response = await self._handle(request)
        metrics.LATENCY.labels(kind).observe(time.perf_counter() - started)
        return response

    async def _handle(self, request: Request) -> tuple[str, Response]:
        origin = request.headers.get("origin")
        if self.origins and origin is not None and origin not in self.origins:
            return "invalid", self._reject("origin not allowed", 403)
        if not is_json(request.headers.get("content-type", "")):
            return "invalid", self._reject("Content-Type must be application/json", 415)
        try:
            async with asyncio.timeout(self.body_timeout_s):
                raw = await _read_body(request, self.pipeline.settings.max_body_bytes)
        except _TooLarge:
            return "invalid", self._reject("request body too large", 413)
        except TimeoutError:
            return "invalid", self._reject("request body too slow", 408)
        except ClientDisconnect:  # the client went away mid-body: nobody to answer
            return "invalid", Response(status_code=400)
        try:
            parsed = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return "invalid", self._reject("request body is not valid JSON", 400)
        req = request_from_json(parsed)
        if isinstance(req, GraphQLError):
            metrics.REQUESTS.labels("other", "bad_user_input").inc()
            return "invalid", _json(errors_body([req]), 400)
        prepared = self.pipeline.prepare(req)
        if isinstance(prepared, list):
            metrics.REQUESTS.labels("other", outcome_of(prepared)).inc()
            return "invalid", _json(errors_body(prepared))
        kind = prepared.kind
        if kind == "subscription":
            metrics.REQUESTS.labels(kind, "bad_user_input").inc()
            msg = "subscriptions use the graphql-transport-ws WebSocket on this path"
            return kind, _json({"errors": [simple_error(msg, "BAD_USER_INPUT")]})
        principal, auth_error = await authenticate(
            self.services.auth, request.headers.get("authorization")
        )
        ctx = Context(
            self.services,
            principal,
            auth_error,
            client_address(request, self.trusted_proxies),
            request.headers.get("user-agent"),
        )
        if not ctx.take_query_tokens(prepared.root_fields):
            metrics.REQUESTS.labels(kind, "rate_limited").inc()
            msg = "too many requests; slow down"
            return kind, _json({"errors": [simple_error(msg, "RATE_LIMITED")]})
        result = await self.pipeline.execute(prepared, ctx)
        metrics.REQUESTS.labels(kind, outcome_of(result.errors)).inc()
        return kind, _json(result_body(result))

    @staticmethod
    def _reject(message: str, status: int) -> Response:
        metrics.REQUESTS.labels("other", "rejected").inc()
        return _json({"errors": [simple_error(message, "BAD_USER_INPUT")]}, status)


def gateway_endpoint(services: Services) -> Callable[[Request], Awaitable[Response]]:
    async def gateway(request: Request) -> Response:
        key = request.query_params.get("key") or None
        try:
            record = await services.placement.choose(key)
        except Exception:
            log.exception("placement failed")
            return JSONResponse({"error": "no gateway available"}, 503)
        return JSONResponse({"url": record.url, "gateway_id": record.gateway_id})

    return gateway


async def healthz(_: Request) -> Response:
    return PlainTextResponse("ok")


def readyz_endpoint(check: ReadyCheck | None) -> Callable[[Request], Awaitable[Response]]:
    async def readyz(_: Request) -> Response:
        try:
            ok = True if check is None else await check()
        except Exception:
            log.exception("readiness check failed")
            ok = False
        return PlainTextResponse("ready" if ok else "not ready", 200 if ok else 503)

    return readyz


async def metrics_endpoint(_: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
