"""A client worker process: thousands of gateway connections on one event loop.

Lean on purpose: raw ``websockets`` connections (``compression=None``: deflate costs about
64 KiB per connection), one reader task per connection, ONE heartbeat task and ONE sender task
per process (not a timer per connection), frames decoded with a typed msgspec decoder. The
worker speaks docs/protocol.md v1 directly: IDENTIFY with ``subscribe: "all"``, heartbeats, RESUME
on any other gateway after a drop (with ``rooms``, the last room seq held per subscribed room,
so a replay after a gateway crash repeats nothing: docs/protocol.md section 8), RECONNECT, and
idempotent re-sends of unacknowledged SENDs (same nonce) after a resume. The worker does NOT
drop duplicates: it counts them (``duplicate_frames``), since they are what the run measures.
The process side (commands, reports, the send loop, accounting, close) is
loadtest/clientproc.py's, shared with the Socket.IO worker of loadtest/peers/worker.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Coroutine
from multiprocessing.connection import Connection
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from loadtest import clientproc
from loadtest.plan import ClientSpec, WorkerPlan

DISPATCH, HEARTBEAT, IDENTIFY, RESUME, RECONNECT, SEND = 0, 1, 2, 6, 7, 8
INVALID_SESSION, HELLO, HEARTBEAT_ACK, REPLY = 9, 10, 11, 13


class Envelope(msgspec.Struct):
    op: int
    d: Any = None
    s: int | None = None
    t: str | None = None
    id: int | None = None


_decode = msgspec.json.Decoder(Envelope).decode
_encode = msgspec.json.Encoder().encode


def frame(op: int, d: Any, id: int | None = None) -> str:
    env: dict[str, Any] = {"op": op, "d": d}
    if id is not None:
        env["id"] = id
    return _encode(env).decode()


class Client(clientproc.Client):
    __slots__ = (
        "expect_rooms",
        "hb_s",
        "next_hb",
        "pending",
        "positions",
        "seq",
        "session_id",
        "subscribed",
    )

    def __init__(self, spec: ClientSpec) -> None:
        super().__init__(spec)
        self.session_id: str | None = None
        self.seq: int | None = None  # last dispatch s, for HEARTBEAT and RESUME
        self.expect_rooms = 0
        self.subscribed = 0
        self.hb_s = 41.25
        self.next_hb = 0.0
        self.pending: dict[int, str] = {}  # request id -> SEND frame not yet acknowledged
        self.positions: dict[int, int] = {}  # room -> last room seq held (RESUME ``rooms``)


class Worker(clientproc.ClientProcess[Client]):
    def __init__(self, plan: WorkerPlan, pipe: Connection) -> None:
        super().__init__(plan, pipe, [Client(spec) for spec in plan.clients])

    def _loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self._heartbeats()] if self.plan.heartbeat else []

    def _identified(self, c: Client) -> bool:
        return c.session_id is not None

    def _is_reconnect(self, c: Client, first: bool) -> bool:
        return not first or c.session_id is not None

    # --- one session: connect, identify or resume, read --------------------------------------
    async def _session(self, c: Client) -> None:
        url = self.plan.urls[c.url_idx] + "?v=1&encoding=json"
        async with self.sem:
            t0 = time.monotonic()
            ws = await self._connect(url, c)
            c.ws = ws
            hello = _decode(await asyncio.wait_for(ws.recv(decode=False), 10))
            if hello.op != HELLO:
                raise ConnectionClosed(None, None)
            c.hb_s = float(hello.d["heartbeat_interval_ms"]) / 1000
            c.next_hb = time.monotonic() + c.hb_s * random.random()
            resuming = c.session_id is not None
            await ws.send(self._hello_reply(c))
            async with asyncio.timeout(self.plan.open_timeout_s):
                while not c.ready:
                    await self._handle(c, await ws.recv(decode=False))
            c.attempts = 0
            if not resuming:
                self.connect_latency.record_ms((time.monotonic() - t0) * 1000)
        for raw in list(c.pending.values()):  # idempotent: same nonce, first result comes back
            await ws.send(raw)
        try:
            async for msg in ws:
                await self._handle(c, msg)
        finally:
            c.ws = None
            if not self.closing:  # why sessions dropped: 4000 internal, 4010 slow, 1006 lost
                self.count(f"close_{ws.close_code}")

    def _hello_reply(self, c: Client) -> str:
        if c.session_id is not None:
            rooms = {str(r): seq for r, seq in c.positions.items()}
            return frame(
                RESUME,
                {"token": c.spec.token, "session_id": c.session_id, "seq": c.seq, "rooms": rooms},
            )
        c.expect_rooms = 1 << 30
        c.subscribed = 0
        c.positions.clear()  # a new session: positions come with its ROOM_SUBSCRIBED
        return frame(
            IDENTIFY,
            {
                "token": c.spec.token,
                "subscribe": "all",
                "client": {"name": "shardchat-loadtest", "version": "1"},
            },
        )

    async def _handle(self, c: Client, raw: bytes | str) -> None:
        env = _decode(raw)
        op = env.op
        if op == DISPATCH:
            if env.s is not None:
                c.seq = env.s
            d = env.d
            t = env.t
            if isinstance(d, dict) and "seq" in d and "room_id" in d:
                room, seq = int(d["room_id"]), int(d["seq"])
                if t == "ROOM_SUBSCRIBED" and not d.get("recovered"):
                    c.positions[room] = seq  # from now: nothing before it is owed
                elif seq > c.positions.get(room, 0):
                    c.positions[room] = seq
            if t == "MESSAGE_CREATE":
                self._delivered(c, int(d["room_id"]), int(d["seq"]), d["content"])
            elif isinstance(d, dict) and "seq" in d and t not in ("ROOM_SUBSCRIBED",):
                c.tracker.see(int(d["room_id"]), int(d["seq"]))
            elif t == "READY":
                c.session_id = d["session_id"]
                c.expect_rooms = len(d["rooms"])
                c.ready = c.expect_rooms == 0
            elif t == "ROOM_SUBSCRIBED":
                c.subscribed += 1
                if not c.ready and c.subscribed >= c.expect_rooms:
                    c.ready = True
            elif t == "RESUMED":
                c.ready = True
                self.count("resumed")
                if self.mark is not None:
                    self.resume_s.append(time.monotonic() - self.mark)
        elif op == REPLY:
            self._reply(env)
        elif op == INVALID_SESSION:
            # The session is gone: start a new one (what it missed shows up as lost).
            self.count("invalid_sessions")
            c.session_id = None
            c.seq = None
            if c.ws is not None:
                await c.ws.send(self._hello_reply(c))
        elif op == RECONNECT:
            self.count("reconnect_ops")
            url = (env.d or {}).get("url")
            if url:
                with contextlib.suppress(ValueError):
                    c.url_idx = (self.plan.urls.index(url) - 1) % len(self.plan.urls)
            if c.ws is not None:
                await c.ws.close(4000, "reconnect")  # not 1000: keep the session resumable

    def _reply(self, env: Envelope) -> None:
        req = env.id
        if req is None:
            return
        entry = self.inflight.pop(req, None)
        if entry is None:
            return  # a re-sent request answered twice
        c, t0 = entry
        c.pending.pop(req, None)
        d = env.d or {}
        if d.get("ok"):
            result = d["result"]
            self.acked.setdefault(int(result["room_id"]), []).append(int(result["seq"]))
            self.count("acked")
            self.ack_latency.record_ms((time.monotonic() - t0) * 1000)
        else:
            self.count("errors")
            self.count(f"send_error_{(d.get('error') or {}).get('code', '?')}")

    # --- process-wide: heartbeats, and sends of the run phase -------------------------------
    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for c in self.clients:
                ws = c.ws
                if ws is None or not c.ready or now < c.next_hb:
                    continue
                c.next_hb = now + c.hb_s
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(frame(HEARTBEAT, c.seq))

    async def _send(self, c: Client, ws: ClientConnection) -> None:
        req = next(self.ids)
        now_ns = time.monotonic_ns()
        raw = frame(
            SEND,
            {
                "room_id": str(c.spec.room_id),
                "content": f"{now_ns} {self.pad}",
                "nonce": f"w{self.plan.index}-{req}",
            },
            id=req,
        )
        self.inflight[req] = (c, now_ns / 1e9)
        c.pending[req] = raw
        self.count("sent")
        self.timeline.sent()
        with contextlib.suppress(ConnectionClosed):
            await ws.send(raw)  # if it fails the client re-sends it after resuming


def worker_main(plan: WorkerPlan, pipe: Connection) -> None:
    """The spawned process's entry point."""
    clientproc.run_process(Worker, plan, pipe)
