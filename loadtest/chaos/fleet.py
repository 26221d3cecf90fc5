"""The parent side of the chaos client processes: start them, route commands, gather records."""

from __future__ import annotations

import itertools
import time
from typing import Any

from loadtest.chaos.client import ChaosPlan, worker_main
from loadtest.chaos.records import MemberLog, SendLog
from loadtest.harness import WorkerPool
from loadtest.report import Progress


class Fleet(WorkerPool[ChaosPlan]):
    def __init__(self, plans: list[ChaosPlan], progress: Progress) -> None:
        super().__init__(plans, worker_main, "chaos-client", progress)
        self.where = {m.user_id: w for w, plan in enumerate(plans) for m in plan.members}
        self.total = len(self.where)
        self.ready: dict[int, int] = {}
        self.live: dict[int, dict[str, int]] = {}
        self.inflight: dict[int, int] = {}
        self.sent: dict[int, tuple[list[SendLog], dict[str, int]]] = {}
        self.records: dict[int, tuple[list[MemberLog], dict[str, int]]] = {}
        self.bursts: dict[int, int] = {}  # burst id -> processes still sending it
        self._burst_ids = itertools.count(1)

    def _on_report(self, w: int, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "progress":
            self.ready[w], self.live[w], self.inflight[w] = msg[1], msg[2], msg[3]
        elif kind == "sent":
            self.sent[w] = (msg[1], msg[2])
        elif kind == "records":
            self.records[w] = (msg[1], msg[2])
        elif kind == "burst_done":
            self.bursts[msg[1]] -= 1

    def to_member(self, user_id: int, msg: tuple[Any, ...]) -> None:
        """A command for the process that holds ``user_id``."""
        self.pipes[self.where[user_id]].send(msg)

    def burst(self, room: int, count: int, seconds: float, exclude: int) -> int:
        """``count`` large messages into ``room`` (within ``seconds`` at most), shared by the
        processes, each from its members in the room but ``exclude``. Its id, for
        ``burst_done``."""
        burst = next(self._burst_ids)
        self.bursts[burst] = len(self.pipes)
        self._broadcast(("burst", burst, room, -(-count // len(self.pipes)), seconds, exclude))
        return burst

    def burst_done(self, burst: int) -> bool:
        return self.bursts.get(burst, 0) <= 0

    def counter(self, name: str) -> int:
        return sum(c.get(name, 0) for c in self.live.values())

    def status(self) -> dict[str, Any]:
        return {
            "ready": f"{sum(self.ready.values())}/{self.total}",
            "acked": self.counter("acked"),
            "inflight": sum(self.inflight.values()),
            "received": self.counter("received"),
            "again": self.counter("received_again"),
            "resumed": self.counter("resumed"),
            "invalid": self.counter("invalid_session"),
        }

    def show(self, **extra: Any) -> None:
        self.progress.update(**self.status(), **extra)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while sum(self.ready.values()) < self.total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sum(self.ready.values())}/{self.total} members ready")
            self.pump(0.2)
            self.show()

    def start_sending(self, rate: float) -> None:
        self._broadcast(("send", rate / len(self.pipes)))

    def stop_sending(self, wait_s: float) -> tuple[list[SendLog], dict[str, int]]:
        """Every send of the run once the pending ones were acknowledged (or ``wait_s``)."""
        self.sent.clear()
        self._broadcast(("stop_sending", wait_s))
        self._gather(self.sent, wait_s)
        sends = [s for logs, _ in self.sent.values() for s in logs]
        return sends, _sum([c for _, c in self.sent.values()])

    def settle(
        self, acked: dict[int, list[int]], wait_s: float
    ) -> tuple[list[MemberLog], dict[str, int]]:
        """The members' records once they hold every acknowledged message (or ``wait_s``)."""
        self.records.clear()
        self._broadcast(("settle", acked, wait_s))
        self._gather(self.records, wait_s)
        members = [m for logs, _ in self.records.values() for m in logs]
        return members, _sum([c for _, c in self.records.values()])

    def _gather(self, into: dict[int, Any], wait_s: float) -> None:
        deadline = time.monotonic() + wait_s + 60
        while len(into) < len(self.pipes):
            if time.monotonic() > deadline:
                raise TimeoutError("chaos clients did not answer")
            self.pump(0.2)
            self.show()


def _sum(counters: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counters:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out
