"""A client worker process for the Centrifugo peer: its JSON protocol over raw WebSockets.

The counterpart of loadtest/worker.py (shardchat) and loadtest/peers/worker.py (Socket.IO) on
the same base (loadtest/clientproc.py). Every connection speaks Centrifugo's bidirectional
JSON protocol (client protocol v2; one frame may carry several replies, one per line):

    -> ws://HOST:PORT/connection/websocket
    -> {"id":1,"connect":{"token":JWT,"name":"shardchat-loadtest"}}   <- {"id":1,"connect":{..}}
    -> {"id":2,"subscribe":{"channel":"room:R"}}                      <- {"id":2,"subscribe":{
                                                                            "epoch","offset",..}}
    <- {"push":{"channel":"room:R","pub":{"data":{..},"offset":N}}}   at every member
    <- {}  (server ping)                                               -> {}  (pong)

Sends go through the server HTTP API, as an application backend publishes: ``POST
/api/publish`` ``{"channel","data","idempotency_key"}`` with ``X-API-Key``, on a few keep-alive
connections per process (httpx); the answer's ``offset`` is the acknowledgement, and a message
is identified by (room, offset), as shardchat's by (room, seq). A dropped connection
reconnects and resubscribes with ``recover: true`` from the last ``offset``/``epoch`` it holds:
what its room published meanwhile comes back in the subscribe reply (``recovered: true``) or,
past the history (``recovered: false``), shows up as lost. Latency, lost and duplicated are
counted exactly as for the other targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from multiprocessing.connection import Connection
from typing import Any

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from loadtest import clientproc
from loadtest.peers.centrifugo import channel
from loadtest.plan import ClientSpec, WorkerPlan

CONNECT_ID, SUBSCRIBE_ID = 1, 2
HTTP_CONNECTIONS = 8  # keep-alive connections to the publish API per worker process


class ProtocolError(Exception):
    """An error reply to connect/subscribe, or a frame that is not the protocol."""


class Pub(msgspec.Struct):
    data: Any = None
    offset: int = 0


class Push(msgspec.Struct):
    channel: str = ""
    pub: Pub | None = None
    disconnect: Any = None


class Reply(msgspec.Struct):
    id: int = 0
    error: dict[str, Any] | None = None
    push: Push | None = None
    connect: dict[str, Any] | None = None
    subscribe: dict[str, Any] | None = None


_decode = msgspec.json.Decoder(Reply).decode
_decode_pub = msgspec.json.Decoder(Pub).decode
_encode = msgspec.json.Encoder().encode


def replies(frame: bytes | str) -> list[Reply]:
    """The replies of one WebSocket frame (JSON lines; an empty object is a ping)."""
    raw = frame.encode() if isinstance(frame, str) else frame
    return [_decode(line) for line in raw.split(b"\n") if line.strip()]


def connect_command(token: str) -> bytes:
    return _encode({"id": CONNECT_ID, "connect": {"token": token, "name": "shardchat-loadtest"}})


def subscribe_command(room_id: int, epoch: str | None, offset: int | None) -> bytes:
    sub: dict[str, Any] = {"channel": channel(room_id)}
    if epoch is not None and offset is not None:
        sub |= {"recover": True, "epoch": epoch, "offset": offset}
    return _encode({"id": SUBSCRIBE_ID, "subscribe": sub})


class Client(clientproc.Client):
    __slots__ = ("epoch", "offset", "pong", "subscribed_once")

    def __init__(self, spec: ClientSpec) -> None:
        super().__init__(spec)
        self.epoch: str | None = None  # the channel stream's epoch, once subscribed
        self.offset: int | None = None  # the last offset held in the room
        self.pong = True
        self.subscribed_once = False


class CentrifugoWorker(clientproc.ClientProcess[Client]):
    SESSION_ERRORS = (*clientproc.ClientProcess.SESSION_ERRORS, ProtocolError)

    def __init__(self, plan: WorkerPlan, pipe: Connection) -> None:
        super().__init__(plan, pipe, [Client(spec) for spec in plan.clients])
        self.api_url = plan.extra["api_url"]
        self.api_key = plan.extra["api_key"]
        self.http: httpx.AsyncClient | None = None
        self.pending: set[asyncio.Task[None]] = set()

    def _identified(self, c: Client) -> bool:
        return c.subscribed_once

    def _is_reconnect(self, c: Client, first: bool) -> bool:
        return c.subscribed_once

    def _loops(self) -> list[Coroutine[Any, Any, None]]:
        return []

    # --- one connection: connect, subscribe (recovering after a drop), read ------------------
    async def _session(self, c: Client) -> None:
        async with self.sem:
            t0 = time.monotonic()
            ws = await self._connect(self.plan.urls[c.url_idx], c)
            c.ws = ws
            async with asyncio.timeout(self.plan.open_timeout_s):
                await ws.send(connect_command(c.spec.token))
                reply = await self._answer(c, ws, CONNECT_ID)
                c.pong = bool((reply.connect or {}).get("pong", True))
                await ws.send(subscribe_command(c.spec.room_id, c.epoch, c.offset))
                reply = await self._answer(c, ws, SUBSCRIBE_ID)
            self._subscribed(c, reply.subscribe or {})
            c.attempts = 0
            if not c.subscribed_once:
                self.connect_latency.record_ms((time.monotonic() - t0) * 1000)
            c.subscribed_once = True
            c.ready = True
        try:
            async for msg in ws:
                for reply in replies(msg):
                    await self._handle(c, ws, reply)
        finally:
            c.ws = None
            if not self.closing:
                self.count(f"close_{ws.close_code}")

    async def _answer(self, c: Client, ws: ClientConnection, want: int) -> Reply:
        """Read until the reply to command ``want`` (handling pings and pushes meanwhile)."""
        while True:
            for reply in replies(await ws.recv(decode=False)):
                if reply.id == want:
                    if reply.error is not None:
                        raise ProtocolError(f"command {want}: {reply.error}")
                    return reply
                await self._handle(c, ws, reply)

    def _subscribed(self, c: Client, sub: dict[str, Any]) -> None:
        room = c.spec.room_id
        if c.epoch is not None and not sub.get("recovered", False):
            self.count("not_recovered")  # what it missed shows up as lost
        for pub in sub.get("publications") or ():
            p = msgspec.convert(pub, Pub)
            self._pub(c, room, p)
            self.count("recovered_publications")
        if c.epoch is None or not sub.get("recovered", False):
            c.offset = int(sub.get("offset", 0))
        c.epoch = str(sub.get("epoch", ""))

    def _pub(self, c: Client, room: int, pub: Pub) -> None:
        c.offset = max(c.offset or 0, pub.offset)
        data = pub.data
        if isinstance(data, dict) and "content" in data:
            self._delivered(c, room, pub.offset, data["content"])

    async def _handle(self, c: Client, ws: ClientConnection, reply: Reply) -> None:
        push = reply.push
        if push is not None:
            if push.pub is not None:
                self._pub(c, c.spec.room_id, push.pub)
            elif push.disconnect is not None:
                self.count("server_disconnects")
            return
        if reply.id == 0 and reply.error is None and c.pong:  # ping: answer with an empty object
            with contextlib.suppress(ConnectionClosed):
                await ws.send(b"{}")

    # --- the run phase's sends: HTTP API publish ---------------------------------------------
    async def _send(self, c: Client, ws: ClientConnection) -> None:
        if self.http is None:
            self.http = httpx.AsyncClient(
                base_url=self.api_url,
                headers={"X-API-Key": self.api_key},
                limits=httpx.Limits(max_connections=HTTP_CONNECTIONS),
                timeout=30.0,
            )
        req = next(self.ids)
        now_ns = time.monotonic_ns()
        body = _encode(
            {
                "channel": channel(c.spec.room_id),
                "data": {"content": f"{now_ns} {self.pad}", "nonce": f"w{self.plan.index}-{req}"},
                "idempotency_key": f"w{self.plan.index}-{req}",
            }
        )
        self.inflight[req] = (c, now_ns / 1e9)
        self.count("sent")
        self.timeline.sent()
        task = asyncio.get_running_loop().create_task(self._publish(req, body))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _publish(self, req: int, body: bytes) -> None:
        assert self.http is not None
        try:
            resp = await self.http.post(
                "/api/publish", content=body, headers={"Content-Type": "application/json"}
            )
            answer = resp.json() if resp.status_code == 200 else {}
        except (httpx.HTTPError, ValueError) as exc:
            self.count(f"publish_{type(exc).__name__}")
            answer = {}
        entry = self.inflight.pop(req, None)
        if entry is None:
            return
        c, t0 = entry
        result = answer.get("result") if isinstance(answer, dict) else None
        if isinstance(result, dict) and "offset" in result and "error" not in answer:
            self.acked.setdefault(c.spec.room_id, []).append(int(result["offset"]))
            self.count("acked")
            self.ack_latency.record_ms((time.monotonic() - t0) * 1000)
        else:
            self.count("errors")


def worker_main(plan: WorkerPlan, pipe: Connection) -> None:
    """The spawned process's entry point."""
    clientproc.run_process(CentrifugoWorker, plan, pipe)
