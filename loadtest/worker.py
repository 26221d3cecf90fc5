"""A client worker process: thousands of gateway connections on one event loop.

Lean on purpose: raw ``websockets`` connections (``compression=None``: deflate costs about
64 KiB per connection), one reader task per connection, ONE heartbeat task and ONE sender task
per process (not a timer per connection), frames decoded with a typed msgspec decoder. The
worker speaks PROTOCOL.md v1 directly: IDENTIFY with ``subscribe: "all"``, heartbeats, RESUME
on any other gateway after a drop (with ``rooms``, the last room seq held per subscribed room,
so a replay after a gateway crash repeats nothing: docs/protocol.md section 8), RECONNECT, and
idempotent re-sends of unacknowledged SENDs (same nonce) after a resume. The worker does NOT
drop duplicates: it counts them (``duplicate_frames``), since they are what the run measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import resource
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from gateway import gctune
from loadtest.accounting import SeqTracker
from loadtest.plan import (
    CMD_ACCOUNT,
    CMD_CLOSE,
    CMD_MARK,
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

DISPATCH, HEARTBEAT, IDENTIFY, RESUME, RECONNECT, SEND = 0, 1, 2, 6, 7, 8
INVALID_SESSION, HELLO, HEARTBEAT_ACK, REPLY = 9, 10, 11, 13
MAX_ATTEMPTS = 8  # consecutive failed connects before a client gives up


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


def raise_nofile() -> int:
    """Lift the soft fd limit to the hard one: each connection is a file descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Client:
    __slots__ = (
        "attempts",
        "expect_rooms",
        "gave_up",
        "hb_s",
        "next_hb",
        "pending",
        "positions",
        "ready",
        "seq",
        "session_id",
        "spec",
        "subscribed",
        "tracker",
        "url_idx",
        "ws",
    )

    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.ws: ClientConnection | None = None
        self.session_id: str | None = None
        self.seq: int | None = None  # last dispatch s, for HEARTBEAT and RESUME
        self.tracker = SeqTracker()
        self.ready = False
        self.gave_up = False
        self.url_idx = spec.gateway
        self.attempts = 0
        self.expect_rooms = 0
        self.subscribed = 0
        self.hb_s = 41.25
        self.next_hb = 0.0
        self.pending: dict[int, str] = {}  # request id -> SEND frame not yet acknowledged
        self.positions: dict[int, int] = {}  # room -> last room seq held (RESUME ``rooms``)


class Worker:
    def __init__(self, plan: WorkerPlan, pipe: Connection) -> None:
        self.plan = plan
        self.pipe = pipe
        self.clients = [Client(spec) for spec in plan.clients]
        self.counters: dict[str, int] = {}
        self.latency = Latency()
        self.ack_latency = Latency()
        self.connect_latency = Latency()
        self.timeline = Timeline()
        self.sent_at: dict[int, float] = {}
        self.owner: dict[int, Client] = {}
        self.acked: dict[int, list[int]] = {}
        self.ids = itertools.count(1)
        self.closing = False
        self.measuring = False
        self.mark: float | None = None
        self.resume_s: list[float] = []
        self.sem = asyncio.Semaphore(plan.connect_concurrency)
        self.done = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.pad = "x" * max(0, plan.content_bytes - 20)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # --- the process ------------------------------------------------------------------------
    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        # A thread, not loop.add_reader: the loop would make the pipe non-blocking, and a
        # large command (the acknowledged seqs) then fails half-read with EAGAIN.
        reader = threading.Thread(target=self._read_commands, args=(loop,), daemon=True)
        reader.start()
        self.tasks = [loop.create_task(self._life(c)) for c in self.clients]
        if self.plan.heartbeat:
            self.tasks.append(loop.create_task(self._heartbeats()))
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
        if kind == CMD_RUN:
            self.tasks.append(asyncio.get_running_loop().create_task(self._run(msg[1])))
        elif kind == CMD_MARK:
            self.mark = time.monotonic()
            self.resume_s.clear()
        elif kind == CMD_ACCOUNT:
            self.tasks.append(asyncio.get_running_loop().create_task(self._account(msg[1], msg[2])))
        elif kind == CMD_CLOSE:
            self.tasks.append(asyncio.get_running_loop().create_task(self._close()))

    async def _report_connected(self) -> None:
        while True:
            ready = sum(1 for c in self.clients if c.ready)
            failed = sum(1 for c in self.clients if c.gave_up)
            done = ready + failed >= len(self.clients)
            self.pipe.send((REP_CONNECTED, ready, failed, done))
            if done:
                # Every connection is up: its objects are long-lived, so a full collection must
                # never rescan them mid-run (200-300 ms at 5,000 connections, which would read
                # as gateway latency). Frozen now, before the run starts.
                gctune.tune()
                return
            await asyncio.sleep(0.5)

    async def _report_progress(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            snap = dict(self.counters)
            snap["ready"] = sum(1 for c in self.clients if c.ready)
            self.pipe.send((REP_PROGRESS, snap))

    # --- one client's life: connect, identify or resume, read; again after a drop -----------
    async def _life(self, c: Client) -> None:
        first = True
        while not self.closing:
            try:
                await self._session(c)
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                c.attempts += 1
                self.count("connect_errors")
                self.count(f"err_{type(exc).__name__}")
            if self.closing:
                return
            if c.ready:  # was up: this is a drop, not a failed attempt
                self.count("drops")
            c.ready = False
            if c.attempts >= MAX_ATTEMPTS:
                c.gave_up = True
                return
            if not first or c.session_id is not None:
                self.count("reconnects")
            first = False
            # Resume elsewhere: sessions are not pinned, and the old gateway may be dead.
            c.url_idx = (c.url_idx + 1) % len(self.plan.urls)
            await asyncio.sleep(random.uniform(0.02, 0.3) * min(c.attempts + 1, 4))

    async def _session(self, c: Client) -> None:
        url = self.plan.urls[c.url_idx] + "?v=1&encoding=json"
        async with self.sem:
            t0 = time.monotonic()
            ws = await connect(
                url,
                compression=None,
                open_timeout=self.plan.open_timeout_s,
                ping_interval=None,
                close_timeout=2,
                max_size=1 << 22,
                max_queue=None,
                local_addr=(c.spec.source, 0),
            )
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
                self._delivered(c, d)
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

    def _delivered(self, c: Client, d: dict[str, Any]) -> None:
        if not c.tracker.see(int(d["room_id"]), int(d["seq"])):
            self.count("duplicate_frames")
            return
        self.count("delivered")
        content: str = d["content"]
        sent_ns = int(content[: content.index(" ")])
        ms = (time.monotonic_ns() - sent_ns) / 1e6
        if self.measuring:
            self.latency.record_ms(ms)
            self.timeline.delivered(ms)

    def _reply(self, env: Envelope) -> None:
        req = env.id
        if req is None:
            return
        c = self.owner.pop(req, None)
        t0 = self.sent_at.pop(req, None)
        if c is None or t0 is None:
            return  # a re-sent request answered twice
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

    # --- process-wide loops -----------------------------------------------------------------
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
        while self.owner and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a dict
            await asyncio.sleep(0.05)
        self.count("unacked", len(self.owner))
        self.pipe.send((REP_ACKED, self.acked, dict(self.counters)))

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
        self.sent_at[req] = now_ns / 1e9
        self.owner[req] = c
        c.pending[req] = raw
        self.count("sent")
        self.timeline.sent()
        with contextlib.suppress(ConnectionClosed):
            await ws.send(raw)  # if it fails the client re-sends it after resuming

    async def _account(self, acked: dict[int, list[int]], wait_s: float) -> None:
        """Wait (bounded) until every receiver saw every acknowledged seq, then count."""
        deadline = time.monotonic() + wait_s
        acked_sets = {room: frozenset(seqs) for room, seqs in acked.items()}
        while time.monotonic() < deadline:
            if all(
                c.tracker.missing(c.spec.room_id, acked_sets.get(c.spec.room_id, ())) == 0
                for c in self.clients
                if not c.gave_up
            ):
                break
            await asyncio.sleep(0.2)
        self.measuring = False
        lost = sum(c.tracker.lost(acked_sets, (c.spec.room_id,)) for c in self.clients)
        counters = dict(self.counters)
        counters["lost"] = lost
        counters["duplicated"] = sum(c.tracker.duplicated for c in self.clients)
        counters["expected"] = sum(len(acked_sets.get(c.spec.room_id, ())) for c in self.clients)
        counters["identified"] = sum(1 for c in self.clients if c.session_id is not None)
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
                    list(self.resume_s),
                ),
            )
        )

    async def _close(self) -> None:
        self.closing = True

        async def bye(ws: ClientConnection) -> None:
            with contextlib.suppress(Exception):
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

        uvloop.run(Worker(plan, pipe).main())
    except ImportError:  # pragma: no cover - uvloop is a dependency, this is a fallback
        asyncio.run(Worker(plan, pipe).main())
    finally:
        pipe.close()
