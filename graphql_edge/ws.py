"""GraphQL over WebSocket, the ``graphql-transport-ws`` subprotocol (graphql-ws library's).

A handshake that does not offer the subprotocol is accepted and closed at once with 4406
"Subprotocol not acceptable" (as the graphql-ws server does), so clients see a close code, not
an HTTP refusal. Messages are JSON text frames ``{type, id?, payload?}``:
- client ``connection_init {payload?}`` -> server ``connection_ack``. The token is taken from
  the payload (``connectionParams``) under ``authorization``/``Authorization``, ``authToken`` or
  ``token``, as ``"Bearer <token>"`` or the bare token, or else from the handshake's
  Authorization header. A bad or missing token closes 4403 Forbidden (as graphql-ws does when
  ``onConnect`` refuses). No init within ``ws_init_timeout_s``: 4408; a second init: 4429.
- The token stays checked: the connection closes with 4403 when it expires, when it is revoked
  (logout, ``revokeSession``, password change: ``LiveConnections`` hears the revocation), and
  every ``subscribe`` re-checks it first. Reconnect with a fresh token.
- With ``allowed_origins`` set, the handshake's ``Origin`` must be one of them (absent: refused
  too), else close 4403 before accepting.
- At most ``ws_max_operations`` operations run at once: one more gets an ``error``
  (RATE_LIMITED). Each operation is charged to the user's query rate limit like over HTTP.
- ``ping {payload?}`` -> ``pong`` carrying the ping's payload (either side may ping; a
  ``pong`` needs no answer).
- ``subscribe {id, payload: {query, variables?, operationName?, extensions?}}`` before the ack:
  4401 Unauthorized; an id still running: 4409 "Subscriber for <id> already exists".
  Pre-execution errors (validation, limits, FORBIDDEN room) -> ``error {id, payload: [errors]}``;
  results -> ``next {id, payload: {data, errors?}}``, then ``complete {id}``. Queries and
  mutations work too (one ``next`` then ``complete``).
- client ``complete {id}`` stops that subscription.
- Anything else closes 4400: not JSON, an unknown or server-only type, a field of the wrong
  type (a non-object payload, a subscribe without a string ``payload.query``, ``variables`` or
  ``extensions`` that are not objects, an ``operationName`` that is not a string).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, TypeGuard

import msgspec
from graphql import ExecutionResult, GraphQLError
from starlette.websockets import WebSocket, WebSocketDisconnect

from graphql_edge import metrics
from graphql_edge.auth import authenticate, connection_authorization
from graphql_edge.context import Context, Services
from graphql_edge.outcome import errors_body, outcome_of, result_body
from graphql_edge.pipeline import Pipeline, request_from_json
from shardchat.clientip import real_client
from shardchat.errors import ChatError
from shardchat.registry import Registry, RegistryUnavailable
from user_core import revocation
from user_core.tokens import Principal

log = logging.getLogger(__name__)

SUBPROTOCOL = "graphql-transport-ws"


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Connection:
    """One graphql-transport-ws connection: its state machine and its running operations."""

    def __init__(
        self,
        ws: WebSocket,
        pipeline: Pipeline,
        services: Services,
        allowed_origins: tuple[str, ...],
        trusted_proxies: tuple[str, ...] = (),
    ) -> None:
        self.ws = ws
        self.pipeline = pipeline
        self.services = services
        self.allowed_origins = allowed_origins
        peer = ws.client.host if ws.client else "unknown"
        self.client_ip = real_client(
            peer, ", ".join(ws.headers.getlist("x-forwarded-for")), trusted_proxies
        )
        self.init_received = False
        self.principal: Principal | None = None
        self.ops: dict[str, asyncio.Task[None]] = {}
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._expiry: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None

    @property
    def user_id(self) -> int | None:
        return None if self.principal is None else self.principal.user_id

    def revoke(self) -> None:
        """The token was revoked or expired: close 4403 now (safe from any callback)."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close(4403, "Forbidden"))

    async def serve(self) -> None:
        if SUBPROTOCOL not in self.ws.scope.get("subprotocols", []):
            await self.ws.accept()
            await self.ws.close(4406, "Subprotocol not acceptable")
            return
        if self.allowed_origins and self.ws.headers.get("origin") not in self.allowed_origins:
            await self.ws.close(4403, "Forbidden origin")
            return
        await self.ws.accept(subprotocol=SUBPROTOCOL)
        metrics.WS_CONNECTIONS.inc()
        init_timer = asyncio.create_task(self._init_timeout())
        try:
            await self._receive_loop()
        except _Close as close:
            await self._close(close.code, close.reason)
        except WebSocketDisconnect:
            pass
        finally:
            self._closed = True
            init_timer.cancel()
            if self._expiry is not None:
                self._expiry.cancel()
            for task in list(self.ops.values()):
                task.cancel()
            metrics.WS_CONNECTIONS.dec()

    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                raise _Close(4400, "Invalid message received")
            await self._on_message(text)

    async def _on_message(self, text: str) -> None:
        try:
            msg = msgspec.json.decode(text)
        except msgspec.DecodeError:
            raise _Close(4400, "Invalid message received") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise _Close(4400, "Invalid message received")
        kind = msg["type"]
        if kind == "connection_init":
            await self._on_init(msg.get("payload"))
        elif kind in ("ping", "pong"):
            payload = msg.get("payload")
            if payload is not None and not isinstance(payload, dict):
                raise _Close(4400, "Invalid message received")
            if kind == "ping":
                pong = {"type": "pong"} if payload is None else {"type": "pong", "payload": payload}
                await self._send(pong)
        elif kind == "subscribe":
            await self._on_subscribe(msg)
        elif kind == "complete":
            op_id = msg.get("id")
            if not isinstance(op_id, str):
                raise _Close(4400, "Invalid message received")
            task = self.ops.pop(op_id, None)
            if task is not None:
                task.cancel()
        else:
            raise _Close(4400, f"Invalid message type '{kind[:32]}'")

    async def _on_init(self, payload: Any) -> None:
        if self.init_received:
            raise _Close(4429, "Too many initialisation requests")
        self.init_received = True
        if payload is not None and not isinstance(payload, dict):
            raise _Close(4400, "Invalid message received")
        header = connection_authorization(payload or {}) or self.ws.headers.get("authorization")
        principal, _why = await authenticate(self.services.auth, header)
        if principal is None:
            raise _Close(4403, "Forbidden")
        self.principal = principal
        # Closed when the token expires, subscriptions included: reconnect with a fresh one.
        delay = max(0.0, principal.expires_at - time.time())
        self._expiry = asyncio.get_running_loop().call_later(delay, self.revoke)
        await self._send({"type": "connection_ack"})

    async def _on_subscribe(self, msg: dict[str, Any]) -> None:
        op_id, payload = msg.get("id"), msg.get("payload")
        if not isinstance(op_id, str) or not op_id or not _subscribe_payload(payload):
            raise _Close(4400, "Invalid message received")
        if self.principal is None:
            raise _Close(4401, "Unauthorized")
        if op_id in self.ops:
            raise _Close(4409, f"Subscriber for {op_id[:64]} already exists")
        try:
            await self.services.auth.check_revoked(self.principal)
        except ChatError:
            raise _Close(4403, "Forbidden") from None
        except RegistryUnavailable:
            raise _Close(4500, "Internal server error") from None
        if len(self.ops) >= self.pipeline.settings.ws_max_operations:
            limit = self.pipeline.settings.ws_max_operations
            await self._send_error(op_id, f"at most {limit} operations per connection")
            return
        task = asyncio.create_task(self._run(op_id, payload))
        self.ops[op_id] = task
        task.add_done_callback(lambda t: self._forget(op_id, t))

    def _forget(self, op_id: str, task: asyncio.Task[None]) -> None:
        if self.ops.get(op_id) is task:
            del self.ops[op_id]

    async def _run(self, op_id: str, payload: dict[str, Any]) -> None:
        try:
            await self._operation(op_id, payload)
        except asyncio.CancelledError:
            raise
        except (_Close, WebSocketDisconnect):
            return
        except Exception:
            log.exception("graphql-transport-ws operation %s failed", op_id)
            with contextlib.suppress(Exception):
                await self._send(
                    {
                        "type": "error",
                        "id": op_id,
                        "payload": [
                            {"message": "internal error", "extensions": {"code": "INTERNAL"}}
                        ],
                    }
                )

    async def _operation(self, op_id: str, payload: dict[str, Any]) -> None:
        req = request_from_json(payload)
        if isinstance(req, GraphQLError):
            await self._send_errors(op_id, [req])
            return
        prepared = self.pipeline.prepare(req)
        if isinstance(prepared, list):
            metrics.REQUESTS.labels("other", outcome_of(prepared)).inc()
            await self._send_errors(op_id, prepared)
            return
        ctx = Context(
            self.services,
            self.principal,
            None,
            self.client_ip,
            self.ws.headers.get("user-agent"),
        )
        if not ctx.take_query_tokens(prepared.root_fields):
            metrics.REQUESTS.labels(prepared.kind, "rate_limited").inc()
            await self._send_error(op_id, "too many requests; slow down")
            return
        if prepared.kind != "subscription":
            result = await self.pipeline.execute(prepared, ctx)
            metrics.REQUESTS.labels(prepared.kind, outcome_of(result.errors)).inc()
            await self._send({"type": "next", "id": op_id, "payload": result_body(result)})
            await self._send({"type": "complete", "id": op_id})
            return
        stream = await self.pipeline.subscribe(prepared, ctx)
        if isinstance(stream, ExecutionResult):
            metrics.REQUESTS.labels("subscription", outcome_of(stream.errors)).inc()
            await self._send_errors(op_id, stream.errors or [])
            return
        metrics.REQUESTS.labels("subscription", "ok").inc()
        await self._pump(op_id, stream)

    async def _pump(self, op_id: str, stream: AsyncIterator[ExecutionResult]) -> None:
        metrics.SUBSCRIPTIONS.inc()
        try:
            async for result in stream:
                await self._send({"type": "next", "id": op_id, "payload": result_body(result)})
            await self._send({"type": "complete", "id": op_id})
        finally:
            metrics.SUBSCRIPTIONS.dec()
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _send_errors(self, op_id: str, errors: list[GraphQLError]) -> None:
        await self._send({"type": "error", "id": op_id, "payload": errors_body(errors)["errors"]})

    async def _send_error(self, op_id: str, message: str) -> None:
        payload = [{"message": message, "extensions": {"code": "RATE_LIMITED"}}]
        await self._send({"type": "error", "id": op_id, "payload": payload})

    async def _init_timeout(self) -> None:
        await asyncio.sleep(self.pipeline.settings.ws_init_timeout_s)
        if self.principal is None and not self._closed:
            await self._close(4408, "Connection initialisation timeout")

    async def _send(self, message: dict[str, Any]) -> None:
        if self._closed:
            raise WebSocketDisconnect(1006)
        async with self._send_lock:
            await self.ws.send_text(msgspec.json.encode(message).decode())

    async def _close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)


class LiveConnections:
    """The open graphql-ws connections of this edge, closed (4403) when their token is revoked.

    One Registry subscription per edge process, started with the first connection.
    """

    def __init__(self, registry: Registry | None) -> None:
        self._registry = registry
        self._conns: set[Connection] = set()
        self._listener: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def holding(self, conn: Connection) -> AsyncIterator[None]:
        if self._listener is None and self._registry is not None:
            sub = self._registry.subscribe(revocation.CHANNEL)
            await sub.ready()
            self._listener = asyncio.get_running_loop().create_task(self._listen(sub))
        self._conns.add(conn)
        try:
            yield
        finally:
            self._conns.discard(conn)

    async def _listen(self, sub: AsyncIterator[bytes]) -> None:
        async for payload in sub:
            rev = revocation.decode(payload)
            if rev is None:
                continue
            for conn in list(self._conns):
                if conn.principal is not None and rev.covers(conn.principal):
                    conn.revoke()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None


def _subscribe_payload(payload: Any) -> TypeGuard[dict[str, Any]]:
    """The shape graphql-ws requires of a subscribe payload (its ``validateMessage``)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return False
    for name, kind in (("variables", dict), ("extensions", dict), ("operationName", str)):
        value = payload.get(name)
        if value is not None and not isinstance(value, kind):
            return False
    return True
