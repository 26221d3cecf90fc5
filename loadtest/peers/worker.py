"""A client worker process for the Socket.IO peers: thousands of connections on one loop.

The counterpart of loadtest/worker.py (same parent protocol of loadtest/plan.py, so the
parent side is loadtest/harness.py unchanged), speaking Engine.IO v4 / Socket.IO v5 directly
over raw ``websockets`` connections (``compression=None``, one reader task per connection,
ONE sender task per process; codec in loadtest/peers/eio.py):

    -> GET /socket.io/?EIO=4&transport=websocket      <- 0{"sid":..,"pingInterval":..}
    -> 40                                             <- 40{"sid":..}
    -> 420["join","<room>"]                           <- 430[true]        (ready)
    -> 42<id>["send",{"room","content","nonce"}]      <- 42["message",{...}] at every member
                                                      <- 43<id>[{"ok":true,..}] at the sender
    <- 2 (server ping)                                -> 3

Accounting as in the shardchat worker: the content starts with the send time
(``time.monotonic_ns()``), latency = receive time - send time at every member, the sender
included; a message is identified by (room, nonce) (nonce = worker index << 40 | request id),
and lost / duplicated are counted per receiver against every ACKNOWLEDGED nonce of its room.
There is no resume in Socket.IO: a dropped connection reconnects and joins again, and what
its room received meanwhile shows up as lost. Sends not acknowledged are counted ``unacked``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from gateway import gctune
from loadtest.accounting import SeqTracker
from loadtest.peers import eio
from loadtest.plan import (
    CMD_ACCOUNT,
    CMD_CLOSE,
    CMD_RUN,
    REP_ACKED,
    REP_CONNECTED,
    REP_PROGRESS,
    REP_RESULT,
    ClientSpec,
    RunPhase,
    WorkerPlan,
    WorkerResult,
)
from loadtest.report import Latency, Timeline
from loadtest.worker import raise_nofile

MAX_ATTEMPTS = 8  # consecutive failed connects before a client gives up
JOIN_ACK = 0  # the ack id of a connection's "join"; sends use ids from 1
NONCE_SHIFT = 40  # nonce = worker index << 40 | request id: unique over the run


class ConnectRefused(Exception):
    """The server answered CONNECT with CONNECT_ERROR, or closed during the handshake."""


class Client:
    __slots__ = ("attempts", "gave_up", "joined_once", "ready", "spec", "tracker", "url_idx", "ws")

    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.ws: ClientConnection | None = None
        self.tracker = SeqTracker()  # (room, nonce) seen, with duplicates counted
        self.ready = False
        self.joined_once = False
        self.gave_up = False
        self.url_idx = spec.gateway
        self.attempts = 0


class PeerWorker:
    def __init__(self, plan: WorkerPlan, pipe: Connection) -> None:
        self.plan = plan
        self.pipe = pipe
        self.clients = [Client(spec) for spec in plan.clients]
        self.urls = [eio.socketio_url(u) for u in plan.urls]
        self.counters: dict[str, int] = {}
        self.latency = Latency()
        self.ack_latency = Latency()
        self.connect_latency = Latency()
        self.timeline = Timeline()
        # request id -> (client, send time s, room, nonce) until its ACK
        self.inflight: dict[int, tuple[Client, float, int, int]] = {}
        self.acked: dict[int, list[int]] = {}
        self.ids = itertools.count(1)
        self.closing = False
        self.measuring = False
        self.sem = asyncio.Semaphore(plan.connect_concurrency)
        self.done = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.pad = "x" * max(0, plan.content_bytes - 20)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # --- the process ------------------------------------------------------------------------
    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        # A thread, not loop.add_reader: see loadtest/worker.py (large commands, EAGAIN).
        reader = threading.Thread(target=self._read_commands, args=(loop,), daemon=True)
        reader.start()
        self.tasks = [loop.create_task(self._life(c)) for c in self.clients]
        self.tasks.append(loop.create_task(self._report_connected()))
        self.tasks.append(loop.create_task(self._report_progress()))
        await self.done.wait()

    def _read_commands(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                msg = self.pipe.recv()
            except (EOFError, OSError):  # the parent is gone: stop
                msg = (CMD_CLOSE,)
            loop.call_soon_threadsafe(self._on_command, msg)
            if msg[0] == CMD_CLOSE:
                return

    def _on_command(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        loop = asyncio.get_running_loop()
        if kind == CMD_RUN:
            self.tasks.append(loop.create_task(self._run(msg[1])))
        elif kind == CMD_ACCOUNT:
            self.tasks.append(loop.create_task(self._account(msg[1], msg[2])))
        elif kind == CMD_CLOSE:
            self.tasks.append(loop.create_task(self._close()))
        # CMD_MARK (storm's resume clock) has no meaning here

    async def _report_connected(self) -> None:
        while True:
            ready = sum(1 for c in self.clients if c.ready)
            failed = sum(1 for c in self.clients if c.gave_up)
            done = ready + failed >= len(self.clients)
            self.pipe.send((REP_CONNECTED, ready, failed, done))
            if done:
                gctune.tune()  # long-lived connection objects: out of the GC's way (worker.py)
                return
            await asyncio.sleep(0.5)

    async def _report_progress(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            snap = dict(self.counters)
            snap["ready"] = sum(1 for c in self.clients if c.ready)
            self.pipe.send((REP_PROGRESS, snap))

    # --- one client's life: connect, CONNECT, join, read; again after a drop ----------------
    async def _life(self, c: Client) -> None:
        while not self.closing:
            try:
                await self._session(c)
            except (
                OSError,
                TimeoutError,
                InvalidHandshake,
                ConnectionClosed,
                ConnectRefused,
                eio.ProtocolError,
            ) as exc:
                c.attempts += 1
                self.count("connect_errors")
                self.count(f"err_{type(exc).__name__}")
            if self.closing:
                return
            if c.ready:  # was up: a drop, not a failed attempt
                self.count("drops")
            c.ready = False
            if c.attempts >= MAX_ATTEMPTS:
                c.gave_up = True
                return
            if c.joined_once:
                self.count("reconnects")
            c.url_idx = (c.url_idx + 1) % len(self.urls)
            await asyncio.sleep(random.uniform(0.02, 0.3) * min(c.attempts + 1, 4))

    async def _session(self, c: Client) -> None:
        async with self.sem:
            t0 = time.monotonic()
            ws = await connect(
                self.urls[c.url_idx],
                compression=None,
                open_timeout=self.plan.open_timeout_s,
                ping_interval=None,  # Engine.IO pings from the server, answered below
                close_timeout=2,
                max_size=1 << 22,
                max_queue=None,
                local_addr=(c.spec.source, 0),
            )
            c.ws = ws
            async with asyncio.timeout(self.plan.open_timeout_s):
                eio.handshake(eio.decode(await ws.recv()))
                await ws.send(eio.encode_connect())
                while True:
                    p = eio.decode(await ws.recv())
                    if p.eio == eio.EIO_PING:
                        await ws.send(eio.PONG)
                    elif p.sio == eio.SIO_CONNECT:
                        break
                    elif p.sio == eio.SIO_CONNECT_ERROR or p.eio == eio.EIO_CLOSE:
                        raise ConnectRefused(repr(p.data))
                await ws.send(eio.encode_event("join", str(c.spec.room_id), ack_id=JOIN_ACK))
                while not c.ready:
                    await self._handle(c, ws, await ws.recv())
            c.attempts = 0
            c.joined_once = True
            self.connect_latency.record_ms((time.monotonic() - t0) * 1000)
        try:
            async for msg in ws:
                await self._handle(c, ws, msg)
        finally:
            c.ws = None
            if not self.closing:  # why connections dropped: 1000 server close, 1006 lost, ...
                self.count(f"close_{ws.close_code}")

    async def _handle(self, c: Client, ws: ClientConnection, raw: str | bytes) -> None:
        if raw == eio.PING:  # the hot control path: no decode
            with contextlib.suppress(ConnectionClosed):
                await ws.send(eio.PONG)
            return
        p = eio.decode(raw)
        sio = p.sio
        if sio == eio.SIO_EVENT:
            if p.data[0] == "message" and len(p.data) > 1:
                self._delivered(c, p.data[1])
            else:
                self.count(f"event_{p.data[0]}")
        elif sio == eio.SIO_ACK:
            if p.ack_id == JOIN_ACK:
                c.ready = True
            else:
                self._ack(p)
        elif sio == eio.SIO_DISCONNECT or p.eio == eio.EIO_CLOSE:
            self.count("server_disconnects")
            await ws.close(1000, "server disconnect")
        elif sio == eio.SIO_CONNECT_ERROR:
            raise ConnectRefused(repr(p.data))

    def _delivered(self, c: Client, d: dict[str, Any]) -> None:
        if not c.tracker.see(int(d["room"]), int(d["nonce"])):
            self.count("duplicate_frames")
            return
        self.count("delivered")
        content: str = d["content"]
        sent_ns = int(content[: content.index(" ")])
        ms = (time.monotonic_ns() - sent_ns) / 1e6
        if self.measuring:
            self.latency.record_ms(ms)
            self.timeline.delivered(ms)

    def _ack(self, p: eio.Packet) -> None:
        req = p.ack_id
        entry = self.inflight.pop(req, None) if req is not None else None
        if entry is None:
            self.count("stray_acks")
            return
        _c, t0, room, nonce = entry
        d = p.data[0] if p.data else None
        if isinstance(d, dict) and d.get("ok"):
            self.acked.setdefault(room, []).append(nonce)
            self.count("acked")
            self.ack_latency.record_ms((time.monotonic() - t0) * 1000)
        else:
            self.count("errors")

    # --- the send loop ----------------------------------------------------------------------
    async def _run(self, phase: RunPhase) -> None:
        self.timeline = Timeline(start=phase.t0)
        senders = [
            c
            for c in self.clients
            if c.spec.sender and (phase.rooms is None or c.spec.room_id in phase.rooms)
        ]
        await asyncio.sleep(max(0.0, phase.t0 - time.monotonic()))
        self.measuring = True
        end = phase.t0 + phase.duration_s
        sent = 0
        rr = 0
        while senders and phase.rate > 0 and (now := time.monotonic()) < end:
            due = int((now - phase.t0) * phase.rate) - sent
            for _ in range(due):
                sent += 1
                for _try in range(len(senders)):
                    c = senders[rr % len(senders)]
                    rr += 1
                    if c.ready and c.ws is not None:
                        await self._send(c, c.ws)
                        break
                else:
                    self.count("send_skipped")  # nobody connected to send from
            await asyncio.sleep(0.005)
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        deadline = time.monotonic() + 10  # answers to the last sends
        while self.inflight and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a dict
            await asyncio.sleep(0.05)
        self.count("unacked", len(self.inflight))
        self.pipe.send((REP_ACKED, self.acked, dict(self.counters)))

    async def _send(self, c: Client, ws: ClientConnection) -> None:
        req = next(self.ids)
        nonce = (self.plan.index << NONCE_SHIFT) | req
        room = c.spec.room_id
        now_ns = time.monotonic_ns()
        raw = eio.encode_event(
            "send",
            {"room": str(room), "content": f"{now_ns} {self.pad}", "nonce": nonce},
            ack_id=req,
        )
        self.inflight[req] = (c, now_ns / 1e9, room, nonce)
        self.count("sent")
        self.timeline.sent()
        try:
            await ws.send(raw)
        except ConnectionClosed:
            self.count("send_failed")  # no resume in Socket.IO: it stays unacknowledged

    async def _account(self, acked: dict[int, list[int]], wait_s: float) -> None:
        """Wait (bounded) until every receiver saw every acknowledged nonce, then count."""
        deadline = time.monotonic() + wait_s
        acked_sets = {room: frozenset(nonces) for room, nonces in acked.items()}
        while time.monotonic() < deadline:
            if all(
                c.tracker.missing(c.spec.room_id, acked_sets.get(c.spec.room_id, ())) == 0
                for c in self.clients
                if not c.gave_up
            ):
                break
            await asyncio.sleep(0.2)
        self.measuring = False
        counters = dict(self.counters)
        counters["lost"] = sum(c.tracker.lost(acked_sets, (c.spec.room_id,)) for c in self.clients)
        counters["duplicated"] = sum(c.tracker.duplicated for c in self.clients)
        counters["expected"] = sum(len(acked_sets.get(c.spec.room_id, ())) for c in self.clients)
        counters["identified"] = sum(1 for c in self.clients if c.joined_once)
        counters["gave_up"] = sum(1 for c in self.clients if c.gave_up)
        points = [(p.t, p.sent, p.delivered, p.p99_ms) for p in self.timeline.points()]
        self.pipe.send(
            (
                REP_RESULT,
                WorkerResult(
                    counters,
                    self.latency.encode(),
                    self.ack_latency.encode(),
                    self.connect_latency.encode(),
                    points,
                ),
            )
        )

    async def _close(self) -> None:
        self.closing = True

        async def bye(ws: ClientConnection) -> None:
            with contextlib.suppress(Exception):  # closing thousands: one failure is no news
                await asyncio.wait_for(ws.close(1000, "bench done"), 5)

        open_ws = [c.ws for c in self.clients if c.ws is not None]
        step = self.plan.connect_concurrency  # a close burst is a storm of its own: slices
        for i in range(0, len(open_ws), step):
            await asyncio.gather(*(bye(ws) for ws in open_ws[i : i + step]))
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.done.set()


def worker_main(plan: WorkerPlan, pipe: Connection) -> None:
    """The spawned process's entry point."""
    raise_nofile()
    gctune.tune(freeze=False)
    try:
        import uvloop

        uvloop.run(PeerWorker(plan, pipe).main())
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(PeerWorker(plan, pipe).main())
    finally:
        pipe.close()
