"""The parent side of a load test: plan clients, spawn worker processes, run phases, merge.

Clients are spread so every room's members sit on several workers AND several gateways (the
i-th member of the population goes to worker i % W, gateway i % G): each message then crosses
processes and gateways, as it would in production. Workers report over one pipe each; the
parent merges HDR histograms (``Latency.decode``), counters and timelines, and accounts for
lost/duplicated deliveries with the full set of acknowledged seqs (see loadtest/accounting.py).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeVar

from loadtest.addresses import RoundRobin
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
from loadtest.population import Population
from loadtest.report import Latency, Progress, Timeline, TimelinePoint
from loadtest.worker import worker_main


@dataclass
class HarnessOptions:
    workers: int = 2
    senders_per_room: int = 1
    sources: list[str] = field(default_factory=lambda: ["127.0.0.2"])
    connect_concurrency: int = 50
    content_bytes: int = 120
    progress: bool = True


@dataclass
class Merged:
    counters: dict[str, int]
    latency: Latency
    ack_latency: Latency
    connect_latency: Latency
    timeline: Timeline
    resume_s: list[float]


def plan_clients(pop: Population, urls: list[str], opts: HarnessOptions) -> list[WorkerPlan]:
    """Assign every member of every room to a worker, a gateway and a source address, so that
    rooms, and senders, are spread evenly over all of them."""
    source = RoundRobin(opts.sources)
    per_worker: list[list[ClientSpec]] = [[] for _ in range(opts.workers)]
    workers, gateways = opts.workers, len(urls)
    for k, (room_id, members) in enumerate(pop.rooms):
        for rank, uid in enumerate(members):
            # Offsets by room index, or every room's first member (its sender) would land on
            # worker 0 and gateway 0 whenever the room size is a multiple of W or G.
            spec = ClientSpec(
                uid,
                pop.tokens[uid],
                room_id,
                rank < opts.senders_per_room,
                (k + k // workers + rank) % gateways,
                source(),
            )
            per_worker[(k + rank) % workers].append(spec)
    return [
        WorkerPlan(w, urls, clients, opts.connect_concurrency, opts.content_bytes)
        for w, clients in enumerate(per_worker)
        if clients
    ]


P = TypeVar("P")


class WorkerPool(Generic[P]):
    """Client worker processes, one pipe each: spawned with their plan, commanded, pumped.

    A subclass reads the reports in ``_on_report``; ``close`` sends ``CMD_CLOSE`` and waits."""

    def __init__(
        self,
        plans: list[P],
        entry: Callable[[P, Connection], None],
        process_name: str,
        progress: Progress,
    ) -> None:
        self.plans = plans
        self.entry = entry
        self.process_name = process_name
        self.progress = progress
        self.pipes: list[Connection] = []
        self.procs: list[mp.process.BaseProcess] = []

    def start(self) -> None:
        ctx = mp.get_context("spawn")  # no forked copies of the parent's loop, sockets or pools
        for i, plan in enumerate(self.plans):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=self.entry,
                args=(plan, child),
                daemon=True,
                name=f"{self.process_name}-{i}",
            )
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    def close(self, timeout_s: float = 30.0) -> None:
        for pipe in self.pipes:
            try:
                pipe.send((CMD_CLOSE,))
            except OSError:
                continue
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.progress.done()

    def _broadcast(self, msg: tuple[Any, ...]) -> None:
        for pipe in self.pipes:
            pipe.send(msg)

    def pump(self, timeout_s: float) -> None:
        """Read every report that arrives within ``timeout_s``."""
        ready = wait(self.pipes, timeout_s)
        for pipe in ready:
            assert isinstance(pipe, Connection)
            w = self.pipes.index(pipe)
            try:
                while pipe.poll():
                    self._on_report(w, pipe.recv())
            except EOFError as exc:
                raise RuntimeError(f"load-test worker {w} died") from exc

    def _on_report(self, w: int, msg: tuple[Any, ...]) -> None:
        raise NotImplementedError


class Harness(WorkerPool[WorkerPlan]):
    """One run's client worker processes, driven and merged: ``entry`` is their function
    (loadtest/worker.py's, or the Socket.IO one of loadtest/peers/worker.py)."""

    def __init__(
        self,
        scenario: str,
        plans: list[WorkerPlan],
        opts: HarnessOptions,
        *,
        entry: Callable[[WorkerPlan, Connection], None] = worker_main,
        process_name: str = "loadtest-worker",
    ) -> None:
        super().__init__(plans, entry, process_name, Progress(scenario, opts.progress))
        self.opts = opts
        self.connected: dict[int, tuple[int, int, bool]] = {}
        self.live: dict[int, dict[str, int]] = {}
        self.acked: dict[int, tuple[dict[int, list[int]], dict[str, int]]] = {}
        self.results: dict[int, WorkerResult] = {}
        self.total = sum(len(p.clients) for p in plans)

    def _on_report(self, w: int, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == REP_CONNECTED:
            self.connected[w] = (msg[1], msg[2], msg[3])
        elif kind == REP_PROGRESS:
            self.live[w] = msg[1]
        elif kind == REP_ACKED:
            self.acked[w] = (msg[1], msg[2])
        elif kind == REP_RESULT:
            self.results[w] = msg[1]

    def _sum_live(self, key: str) -> int:
        return sum(c.get(key, 0) for c in self.live.values())

    def show(self, **extra: Any) -> None:
        self.progress.update(
            ready=self._sum_live("ready"),
            sent=self._sum_live("sent"),
            acked=self._sum_live("acked"),
            delivered=self._sum_live("delivered"),
            reconnects=self._sum_live("reconnects"),
            errors=self._sum_live("errors"),
            **extra,
        )

    # --- phases -------------------------------------------------------------------------------
    def wait_connected(self, timeout_s: float) -> tuple[int, int, float]:
        """Until every client is identified (or gave up): (identified, failed, seconds)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            self.pump(0.2)
            ready = sum(v[0] for v in self.connected.values())
            failed = sum(v[1] for v in self.connected.values())
            self.progress.update(connecting=f"{ready}/{self.total}", failed=failed)
            if len(self.connected) == len(self.pipes) and all(
                v[2] for v in self.connected.values()
            ):
                return ready, failed, time.monotonic() - t0
        ready = sum(v[0] for v in self.connected.values())
        failed = sum(v[1] for v in self.connected.values())
        return ready, failed, time.monotonic() - t0

    def run(
        self,
        duration_s: float,
        rate: float,
        rooms: frozenset[int] | None = None,
        during: Callable[[float], None] | None = None,
    ) -> dict[int, list[int]]:
        """Send at ``rate`` msgs/s in total for ``duration_s``; the acknowledged seqs by room.

        ``during(elapsed_s)`` is called about 10 times a second (kills, memory samples).
        """
        self.acked.clear()
        t0 = time.monotonic() + 0.5  # let every worker get the command before the start
        share = rate / len(self.pipes)
        self._broadcast((CMD_RUN, RunPhase(t0, duration_s, share, rooms)))
        while len(self.acked) < len(self.pipes):
            self.pump(0.1)
            if during is not None:
                during(time.monotonic() - t0)
            self.show()
            if time.monotonic() > t0 + duration_s + 60:
                raise TimeoutError("workers did not finish the run phase")
        merged: dict[int, list[int]] = {}
        for by_room, _counters in self.acked.values():
            for room, seqs in by_room.items():
                merged.setdefault(room, []).extend(seqs)
        return merged

    def mark(self) -> None:
        """Resume times are measured from now (storm: just before the kill)."""
        self._broadcast((CMD_MARK,))

    def account(self, acked: dict[int, list[int]], wait_s: float = 10.0) -> Merged:
        self.results.clear()
        self._broadcast((CMD_ACCOUNT, acked, wait_s))
        deadline = time.monotonic() + wait_s + 60
        while len(self.results) < len(self.pipes):
            self.pump(0.2)
            self.show()
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not report results")
        return merge(list(self.results.values()))


def merge(results: list[WorkerResult]) -> Merged:
    counters: dict[str, int] = {}
    lat, ack, conn = Latency(), Latency(), Latency()
    timeline = Timeline()
    resume: list[float] = []
    for r in results:
        for k, v in r.counters.items():
            counters[k] = counters.get(k, 0) + v
        lat.merge(Latency.decode(r.latency))
        ack.merge(Latency.decode(r.ack_latency))
        conn.merge(Latency.decode(r.connect_latency))
        timeline.merge([TimelinePoint(t, s, d, p) for t, s, d, p in r.timeline])
        resume.extend(r.resume_s)
    return Merged(counters, lat, ack, conn, timeline, sorted(resume))
