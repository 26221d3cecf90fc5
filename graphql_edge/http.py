"""HTTP endpoints: POST /graphql, GET /gateway, health, readiness, metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from graphql import GraphQLError
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from graphql_edge import metrics
from graphql_edge.auth import authenticate
from graphql_edge.context import Context, Services
from graphql_edge.errors import simple_error
from graphql_edge.outcome import errors_body, outcome_of, result_body
from graphql_edge.pipeline import Pipeline, request_from_json

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


class GraphQLEndpoint:
    def __init__(self, pipeline: Pipeline, services: Services) -> None:
        self.pipeline = pipeline
        self.services = services

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
        ctype = request.headers.get("content-type", "")
        if "json" not in ctype:
            return "invalid", self._reject("Content-Type must be application/json", 415)
        try:
            raw = await _read_body(request, self.pipeline.settings.max_body_bytes)
        except _TooLarge:
            return "invalid", self._reject("request body too large", 413)
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
        user_id, auth_error = authenticate(self.services.auth, request.headers.get("authorization"))
        client = request.client.host if request.client else "unknown"
        ctx = Context(self.services, user_id, auth_error, client)
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
