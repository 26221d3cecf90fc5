"""What the parent hands each client worker process, and the messages they exchange.

Plain dataclasses: they cross the spawn boundary by pickle. Parent -> worker commands and
worker -> parent reports are tuples whose first item is one of the names below.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClientSpec:
    user_id: int
    token: str
    room_id: int
    sender: bool  # does this connection send in the run phase
    gateway: int  # index into WorkerPlan.urls of the first gateway to try
    source: str  # local address to bind (127.0.0.x)


@dataclass(frozen=True)
class WorkerPlan:
    index: int
    urls: list[str]
    clients: list[ClientSpec]
    connect_concurrency: int = 50
    content_bytes: int = 120
    heartbeat: bool = True
    open_timeout_s: float = 20.0
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunPhase:
    """Send ``rate`` messages per second (this worker's share) from ``t0`` for ``duration_s``.

    ``t0`` is a ``time.monotonic()`` value: CLOCK_MONOTONIC is system-wide on Linux, so every
    process agrees on it and the timelines line up. ``rooms`` limits senders to those rooms.
    """

    t0: float
    duration_s: float
    rate: float
    rooms: frozenset[int] | None = None


# parent -> worker
CMD_RUN = "run"  # (CMD_RUN, RunPhase)
CMD_ACCOUNT = "account"  # (CMD_ACCOUNT, {room: [acked seqs]}, wait_s)
CMD_MARK = "mark"  # (CMD_MARK,): start counting resumes from now (storm)
CMD_CLOSE = "close"  # (CMD_CLOSE,)

# worker -> parent
REP_CONNECTED = "connected"  # (REP_CONNECTED, identified, failed, done: bool)
REP_PROGRESS = "progress"  # (REP_PROGRESS, {counter: n})
REP_ACKED = "acked"  # (REP_ACKED, {room: [seq]}, {counter: n})
REP_RESULT = "result"  # (REP_RESULT, WorkerResult)


@dataclass
class WorkerResult:
    counters: dict[str, int]
    latency: bytes  # Latency.encode() of send -> receive, ms
    ack_latency: bytes  # send -> REPLY ok
    connect_latency: bytes  # TCP connect -> READY
    timeline: list[tuple[int, int, int, float]]  # (t, sent, delivered, p99_ms)
    resume_s: list[float] = field(default_factory=list)  # seconds after the mark, per resume
