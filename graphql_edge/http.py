"""HTTP endpoints: GET and POST /graphql, GET /gateway, health, readiness, metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
from graphql_edge.media import GRAPHQL_RESPONSE, JSON, content_type, negotiate
from graphql_edge.outcome import errors_body, outcome_of, result_body
from graphql_edge.pipeline import Pipeline, Rejected, Step, is_request_error, request_from_json
from shardchat.clientip import real_client

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[bool]]


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


#: HTTP status of an operation refused before execution, by the step that refused it.
STATUS_OF_STEP: dict[Step, int] = {
    "request": 422,
    "parse": 400,
    "validation": 422,
    "forbidden": 403,
}
#: An executed operation whose response has errors ("partial success", spec draft); sent with
#: application/graphql-response+json only: a legacy application/json client gets 200.
PARTIAL = 294


@dataclass(slots=True)
class Reply:
    """One GraphQL response body (or a batch's list of them) and how to send it."""

    kind: str  # operation_type label of the metrics
    status: int
    body: Any
    headers: dict[str, str] | None = None


def _refusal(message: str, status: int, kind: str = "other", **headers: str) -> Reply:
    metrics.REQUESTS.labels(kind, "rejected").inc()
    body = {"errors": [simple_error(message, "BAD_USER_INPUT")]}
    return Reply(kind, status, body, headers or None)


def client_address(request: Request, trusted_proxies: tuple[str, ...]) -> str:
    peer = request.client.host if request.client else "unknown"
    return real_client(peer, ", ".join(request.headers.getlist("x-forwarded-for")), trusted_proxies)


def is_json(content_type: str) -> bool:
    """``application/json``, with no charset or UTF-8 (the spec's request encoding)."""
    kind, *params = (p.strip().lower() for p in content_type.split(";"))
    if kind != JSON:
        return False
    charsets = [p.partition("=")[2].strip('"') for p in params if p.startswith("charset=")]
    return all(c in ("utf-8", "utf8") for c in charsets)


def _get_params(request: Request) -> dict[str, Any] | Reply:
    """The GraphQL-over-HTTP parameters of a GET: strings, JSON-encoded variables/extensions;
    an empty value is no value."""
    params: dict[str, Any] = {}
    for name in ("query", "operationName"):
        value = request.query_params.get(name)
        if value:
            params[name] = value
    for name in ("variables", "extensions"):
        value = request.query_params.get(name)
        if value:
            try:
                params[name] = msgspec.json.decode(value)
            except msgspec.DecodeError:
                return _refusal(f"{name} is not valid JSON", 400)
    return params


class GraphQLEndpoint:
    """``/graphql`` over HTTP, as the GraphQL-over-HTTP spec (current draft) says.

    GET runs queries (parameters in the URL; a mutation is 405 with ``Allow: POST``); POST runs
    queries and mutations from an ``application/json`` body: one request object, or an array of
    them (a batch, as Apollo's BatchHttpLink sends: at most ``max_batch``, run in order, answered
    with an array of responses in the same order). Statuses: 200 executed without errors; 294
    executed with errors (200 for ``application/json``); 400 unreadable JSON or an unparsable
    document; 403 not in the persisted-query allow-list; 405 mutation over GET; 406 Accept admits
    neither media type; 413 body over the limit; 415 not JSON; 422 malformed parameters, a
    document that does not validate (or breaks the depth/cost limits), no operation to run,
    variables that do not coerce, a subscription (those go over graphql-transport-ws); 429 over
    the caller's query rate limit.

    ``origins``: when set, a request whose ``Origin`` is not one of them is refused with 403
    (browsers send Origin on every cross-site POST; requests without one come from non-browser
    clients, which carry a bearer token, never a cookie). A body that takes longer than
    ``body_timeout_s`` to arrive is 408.
    """

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
        started = time.perf_counter()
        media = negotiate(request.headers.get("accept"))
        if media is None:
            reply = _refusal(f"Accept must admit {GRAPHQL_RESPONSE} or {JSON}", 406)
            ctype = f"{JSON}; charset=utf-8"
        else:
            reply = await self._reply(request)
            if reply.status == PARTIAL and media == JSON:
                reply.status = 200
            ctype = content_type(media, reply.status)
        metrics.LATENCY.labels(reply.kind).observe(time.perf_counter() - started)
        headers = dict(reply.headers or {}) | {"content-type": ctype}
        return Response(msgspec.json.encode(reply.body), reply.status, headers=headers)

    async def _reply(self, request: Request) -> Reply:
        origin = request.headers.get("origin")
        if self.origins and origin is not None and origin not in self.origins:
            return _refusal("origin not allowed", 403)
        if request.method == "GET":
            params = _get_params(request)
            if isinstance(params, Reply):
                return params
            return await self._one(params, request, get=True)
        if not is_json(request.headers.get("content-type", "")):
            return _refusal("Content-Type must be application/json", 415)
        try:
            async with asyncio.timeout(self.body_timeout_s):
                raw = await _read_body(request, self.pipeline.settings.max_body_bytes)
        except _TooLarge:
            return _refusal("request body too large", 413)
        except TimeoutError:
            return _refusal("request body too slow", 408)
        except ClientDisconnect:  # the client went away mid-body: nobody reads the answer
            return _refusal("request body incomplete", 400)
        try:
            parsed = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return _refusal("request body is not valid JSON", 400)
        if isinstance(parsed, list):
            return await self._batch(parsed, request)
        return await self._one(parsed, request, get=False)

    async def _batch(self, items: list[Any], request: Request) -> Reply:
        limit = self.pipeline.settings.max_batch
        if not items or len(items) > limit:
            return _refusal(f"a batch holds 1 to {limit} operations, not {len(items)}", 422)
        replies = [await self._one(item, request, get=False) for item in items]
        kinds = {r.kind for r in replies}
        return Reply(kinds.pop() if len(kinds) == 1 else "other", 200, [r.body for r in replies])

    async def _one(self, params: Any, request: Request, *, get: bool) -> Reply:
        req = request_from_json(params)
        if isinstance(req, GraphQLError):
            metrics.REQUESTS.labels("other", "bad_user_input").inc()
            return Reply("other", 422, errors_body([req]))
        prepared = self.pipeline.prepare(req)
        if isinstance(prepared, Rejected):
            metrics.REQUESTS.labels("other", outcome_of(prepared)).inc()
            return Reply("other", STATUS_OF_STEP[prepared.step], errors_body(prepared))
        kind = prepared.kind
        if kind == "subscription":
            msg = "subscriptions use the graphql-transport-ws WebSocket on this path"
            return _refusal(msg, 422, kind)
        if get and kind == "mutation":
            return _refusal("mutations must be sent with POST", 405, kind, allow="POST")
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
            body = {"errors": [simple_error("too many requests; slow down", "RATE_LIMITED")]}
            return Reply(kind, 429, body)
        result = await self.pipeline.execute(prepared, ctx)
        metrics.REQUESTS.labels(kind, outcome_of(result.errors)).inc()
        if is_request_error(result):
            return Reply(kind, 422, errors_body(result.errors or []))
        return Reply(kind, PARTIAL if result.errors else 200, result_body(result))


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
