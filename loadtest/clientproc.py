"""A client worker process without its wire protocol: thousands of connections on one loop.

The base of loadtest/worker.py (shardchat, docs/protocol.md v1) and loadtest/peers/worker.py
(Engine.IO v4 / Socket.IO v5): a subclass brings its ``Client`` state, ``_session`` (connect,
handshake, then read every frame of one connection), ``_send`` (one message, its request id
in ``inflight``), what counts as identified and as a reconnect, and if need be more errors
that end a session (``SESSION_ERRORS``) and process-wide loops (``_loops``: heartbeats). The
rest is here, spoken to the parent (loadtest/harness.py) in the messages of loadtest/plan.py
over one pipe:

- commands are read by a thread and run on the loop: CMD_RUN, CMD_ACCOUNT, CMD_MARK (resume
  times, ``resume_s``, count from now; only a protocol that resumes adds to them), CMD_CLOSE
  (also when the parent is gone);
- REP_CONNECTED every 0.5 s until every client is ready or gave up (then the long-lived
  connection objects are frozen out of the GC's way), REP_PROGRESS with the counters every
  second;
- each client's life: its session again after a drop or a failed attempt, on the next URL after
  a random back-off, until MAX_ATTEMPTS consecutive failures (``gave_up``);
- the send phase, ONE sender task per process: this worker's ``rate`` paced from ``t0``, round
  robin over the ready senders of the phase's rooms (``send_skipped`` when none is), then up to
  10 s for the answers to the last sends; what is still in flight counts ``unacked``; REP_ACKED;
- deliveries: the content starts with the send time (``time.monotonic_ns()``), latency = receive
  time - send time, recorded while measuring; a message seen again is counted
  (``duplicate_frames``), not dropped;
- accounting: wait (bounded) until every receiver saw every acknowledged message of its room,
  then lost, duplicated, expected, identified, gave_up; REP_RESULT;
- close: the open connections closed in slices of ``connect_concurrency``, every task cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import resource
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any, Generic, Protocol, TypeVar

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

MAX_ATTEMPTS = 8  # consecutive failed connects before a client gives up


def raise_nofile() -> int:
    """Lift the soft fd limit to the hard one: each connection is a file descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Client:
    """What the process side knows of one connection; a protocol adds its own slots."""

    __slots__ = ("attempts", "gave_up", "ready", "spec", "tracker", "url_idx", "ws")

    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.ws: ClientConnection | None = None
        self.tracker = SeqTracker()  # (room, seq or nonce) seen, with duplicates counted
        self.ready = False
        self.gave_up = False
        self.url_idx = spec.gateway
        self.attempts = 0


C = TypeVar("C", bound=Client)


class ClientProcess(ABC, Generic[C]):
    # what ends a session (counted as a connect error), besides cancellation
    SESSION_ERRORS: tuple[type[Exception], ...] = (
        OSError,
        TimeoutError,
        InvalidHandshake,
        ConnectionClosed,
    )

    def __init__(self, plan: WorkerPlan, pipe: Connection, clients: list[C]) -> None:
        self.plan = plan
        self.pipe = pipe
        self.clients = clients
        self.counters: dict[str, int] = {}
        self.latency = Latency()
        self.ack_latency = Latency()
        self.connect_latency = Latency()
        self.timeline = Timeline()
        self.inflight: dict[int, tuple[C, float]] = {}  # request id -> (client, send time s)
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

    # --- what the protocol provides ---------------------------------------------------------
    @abstractmethod
    async def _session(self, c: C) -> None:
        """Connect (``_connect``, under ``sem``), handshake until ``c.ready``, read until closed."""

    @abstractmethod
    async def _send(self, c: C, ws: ClientConnection) -> None:
        """One message from ``c``, registered in ``inflight`` until its answer."""

    @abstractmethod
    def _identified(self, c: C) -> bool:
        """Whether ``c`` counts as ``identified`` in the result."""

    @abstractmethod
    def _is_reconnect(self, c: C, first: bool) -> bool:
        """Whether ``c``'s next attempt counts as a reconnect (``first``: after its first one)."""

    def _loops(self) -> list[Coroutine[Any, Any, None]]:
        """Process-wide loops of the protocol (heartbeats), one task each."""
        return []

    def _connect(self, url: str, c: C) -> connect:
        return connect(
            url,
            compression=None,  # deflate costs about 64 KiB per connection
            open_timeout=self.plan.open_timeout_s,
            ping_interval=None,  # each protocol has its own heartbeat
            close_timeout=2,
            max_size=1 << 22,
            max_queue=None,
            local_addr=(c.spec.source, 0),
        )

    def _delivered(self, c: C, room: int, key: int, content: str) -> None:
        """A message received: ``key`` (its seq or nonce) identifies it within ``room``."""
        if not c.tracker.see(room, key):
            self.count("duplicate_frames")
            return
        self.count("delivered")
        sent_ns = int(content[: content.index(" ")])
        ms = (time.monotonic_ns() - sent_ns) / 1e6
        if self.measuring:
            self.latency.record_ms(ms)
            self.timeline.delivered(ms)

    # --- the process ------------------------------------------------------------------------
    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        # A thread, not loop.add_reader: the loop would make the pipe non-blocking, and a
        # large command (the acknowledged seqs) then fails half-read with EAGAIN.
        reader = threading.Thread(target=self._read_commands, args=(loop,), daemon=True)
        reader.start()
        self.tasks = [loop.create_task(self._life(c)) for c in self.clients]
        self.tasks += [loop.create_task(coro) for coro in self._loops()]
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
        elif kind == CMD_MARK:
            self.mark = time.monotonic()
            self.resume_s.clear()
        elif kind == CMD_ACCOUNT:
            self.tasks.append(loop.create_task(self._account(msg[1], msg[2])))
        elif kind == CMD_CLOSE:
            self.tasks.append(loop.create_task(self._close()))

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

    # --- one client's life: a session, again after a drop -----------------------------------
    async def _life(self, c: C) -> None:
        first = True
        while not self.closing:
            try:
                await self._session(c)
            except self.SESSION_ERRORS as exc:
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
            if self._is_reconnect(c, first):
                self.count("reconnects")
            first = False
            # Next URL: the old server may be dead (a shardchat session resumes on any gateway).
            c.url_idx = (c.url_idx + 1) % len(self.plan.urls)
            await asyncio.sleep(random.uniform(0.02, 0.3) * min(c.attempts + 1, 4))

    # --- the phases -------------------------------------------------------------------------
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

    async def _account(self, acked: dict[int, list[int]], wait_s: float) -> None:
        """Wait (bounded) until every receiver saw every acknowledged message, then count."""
        deadline = time.monotonic() + wait_s
        acked_sets = {room: frozenset(keys) for room, keys in acked.items()}
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
        counters["identified"] = sum(1 for c in self.clients if self._identified(c))
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


class Runnable(Protocol):
    async def main(self) -> None: ...


P = TypeVar("P")


def run_process(worker: Callable[[P, Connection], Runnable], plan: P, pipe: Connection) -> None:
    """A spawned worker process's body: fd limit lifted, GC tuned, ``worker`` run on uvloop
    (this harness's ClientProcess, or any other client process, e.g. loadtest/chaos)."""
    raise_nofile()
    gctune.tune(freeze=False)
    try:
        import uvloop

        uvloop.run(worker(plan, pipe).main())
    except ImportError:  # pragma: no cover - uvloop is a dependency, this is a fallback
        asyncio.run(worker(plan, pipe).main())
    finally:
        pipe.close()
