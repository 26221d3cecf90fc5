"""What a chaos run records: plain dataclasses, pickled from the client processes to the parent.

Times are ``time.monotonic()`` seconds (CLOCK_MONOTONIC is system-wide on Linux: every process
of the run agrees on it), so a delivery in a client process and a fault in the parent compare.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Window:
    """One injected fault: ``kind`` on ``target`` from ``t0`` until healed at ``t1``."""

    kind: str
    target: str
    t0: float
    t1: float
    detail: dict[str, Any] = field(default_factory=dict)
    member: int | None = None  # the user a client-side fault (offline, slow, leave) is about
    room: int | None = None  # the room of a leave


@dataclass
class RoomLog:
    """One member's view of one room."""

    base: int | None = None  # room seq where it first went live: nothing before it is owed
    gw: list[tuple[int, float]] = field(default_factory=list)  # (seq, t) of each durable event
    hist: list[tuple[int, float]] = field(default_factory=list)  # (seq, t) refetched over GraphQL


@dataclass
class MemberLog:
    user_id: int
    rooms: dict[int, RoomLog] = field(default_factory=dict)
    windows: list[Window] = field(default_factory=list)  # its own faults
    counters: dict[str, int] = field(default_factory=dict)


@dataclass
class SendLog:
    """One message a client sent (attempted at least once), retried with the same nonce until
    acknowledged."""

    nonce: str
    author: int
    room: int
    t_sent: float  # its first attempt
    large: bool = False
    attempts: int = 0
    t_ack: float | None = None
    seq: int | None = None
    path: str = ""  # what acknowledged it: gw (SEND) or gql (sendMessage)
    error: str = ""  # a refusal that ended the retries (never expected)


@dataclass(frozen=True)
class StoredEvent:
    """A room event as the Store holds it: the ground truth the checker compares against."""

    seq: int
    type: str
    author: int | None = None  # MESSAGE_CREATE
    nonce: str | None = None  # MESSAGE_CREATE
    user_id: int | None = None  # MEMBER_JOIN / MEMBER_LEAVE
