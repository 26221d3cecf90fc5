"""The nemesis's plan: which faults, on what, for how long, all drawn from one seed.

Pure: the same seed, duration and population give the same plan, so a failing run is replayed
with its printed ``--seed``. Two streams:

- cluster faults, one at a time (each is injected, held, healed, then a gap): every kind of
  ``CLUSTER_KINDS`` once per round, rounds in a seeded order, at least one whole round, more
  while they fit in the duration (estimated with ``HEAL_S``, what a heal takes here);
- member faults, at fixed times beside them: a member offline (resuming later, or starting a new
  session and subscribing ``after_seq``) while a burst of large messages builds a multi-MiB
  backlog in one of its rooms, a member that stops reading under such a burst, and members
  leaving rooms (one while it is offline, so its leave arrives in the replay).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

CLUSTER_KINDS = (
    "gateway_kill",
    "gateway_pause",
    "edge_kill",
    "router_kill",
    "kafka_kill",
    "pg_restart",
    "redis_restart",
    "redis_flush",
    "net_latency",
    "net_stall",
    "net_reset",
)
MEMBER_KINDS = ("offline_resume", "offline_subscribe", "slow_consumer", "member_leave")
KINDS = CLUSTER_KINDS + MEMBER_KINDS
LINKS = ("pg", "redis", "kafka")
#: Seconds a heal takes on this box beyond the hold (a restart and its readiness wait).
HEAL_S = {"gateway_kill": 5, "edge_kill": 4, "router_kill": 3, "kafka_kill": 35, "pg_restart": 4}
LARGE_CHARS = 4000  # the content limit: the largest message a client may send
SMALL_CHARS = 100  # the other messages
MIN_MEMBERS_LEFT = 3  # a leave never shrinks a room below this
#: A member is away (or not reading) at most this long, backlog complete or not: a RESUME must
#: come well inside the 5-minute resume window.
MAX_AWAY_S = 270.0


def away_limit(hold_s: float) -> float:
    """How long a member fault planned for ``hold_s`` may last while its backlog builds."""
    return min(2 * hold_s + 30, MAX_AWAY_S)


@dataclass(frozen=True)
class Profile:
    """Hold ranges (seconds) and pacing; ``short`` for the test command, ``long`` for runs of
    ten minutes and more."""

    warmup_s: float
    gap_s: tuple[float, float]
    hold_s: dict[str, tuple[float, float]]
    member_every_s: float
    offline_s: tuple[float, float]
    slow_s: tuple[float, float]
    backlog_mib: tuple[float, float]
    # what a member that stops reading is sent meanwhile: past the gateway's 1 MiB outbound
    # limit AND the kernel's socket buffers (about 4.5 MiB on loopback here), or no cut happens
    slow_backlog_mib: tuple[float, float] = (6.0, 8.0)

    def hold(self, rng: random.Random, kind: str) -> float:
        lo, hi = self.hold_s.get(kind, (0.0, 0.0))
        return round(rng.uniform(lo, hi), 2)


SHORT = Profile(
    warmup_s=5,
    gap_s=(1, 2),
    hold_s={
        "gateway_kill": (1, 2),
        "gateway_pause": (10, 11),
        "edge_kill": (1, 2),
        "router_kill": (1, 2),
        "kafka_kill": (1, 3),
        "pg_restart": (1, 2),
        "redis_restart": (1, 2),
        "net_latency": (4, 6),
        "net_stall": (3, 4),
        "net_reset": (1, 2),
    },
    member_every_s=25,
    offline_s=(18, 22),
    slow_s=(12, 15),
    backlog_mib=(2.5, 3.0),
)
LONG = Profile(
    warmup_s=10,
    gap_s=(5, 20),
    hold_s={
        "gateway_kill": (1, 5),
        "gateway_pause": (10, 20),
        "edge_kill": (1, 3),
        "router_kill": (1, 3),
        "kafka_kill": (2, 8),
        "pg_restart": (1, 5),
        "redis_restart": (1, 3),
        "net_latency": (5, 15),
        "net_stall": (3, 10),
        "net_reset": (1, 4),
    },
    member_every_s=75,
    offline_s=(60, 240),  # minutes away, inside the 5-minute resume window
    slow_s=(10, 30),
    backlog_mib=(2.5, 5.0),
)


PROFILES = {"short": SHORT, "long": LONG}


def profile_for(duration_s: float, name: str = "") -> Profile:
    """``name``'s profile, else by duration: short under ten minutes."""
    if name:
        return PROFILES[name]
    return SHORT if duration_s < 600 else LONG


@dataclass(frozen=True)
class Fault:
    """One planned fault. ``at_s``: seconds after the start for member faults; for cluster
    faults the gap to wait after the previous one healed (they run back to back)."""

    kind: str
    at_s: float
    hold_s: float
    target: str  # gateway<i> | edge | router | kafka | pg | redis | member index
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    seed: int
    cluster: list[Fault]
    members: list[Fault]  # ordered by at_s

    def only(self, kinds: list[str]) -> Plan:
        """The same plan with only these kinds (a replay of one fault)."""
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        return Plan(
            self.seed,
            [f for f in self.cluster if f.kind in kinds],
            [f for f in self.members if f.kind in kinds],
        )

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"kind": f.kind, "at_s": f.at_s, "hold_s": f.hold_s, "target": f.target, **f.params}
            for f in [*self.cluster, *self.members]
        ]


def plan(
    seed: int,
    duration_s: float,
    *,
    gateways: int,
    rooms: list[list[int]],
    profile: Profile | None = None,
) -> Plan:
    """The faults of one run. ``rooms``: member indexes of each room (index into the
    population's users); member faults name members and rooms by these indexes."""
    prof = profile or profile_for(duration_s)
    rng = random.Random(seed)
    return Plan(
        seed,
        _cluster(rng, prof, duration_s, gateways),
        _members(random.Random(rng.random()), prof, duration_s, rooms),
    )


def _cluster(rng: random.Random, prof: Profile, duration_s: float, gateways: int) -> list[Fault]:
    faults: list[Fault] = []
    t = prof.warmup_s
    while True:
        kinds = list(CLUSTER_KINDS)
        rng.shuffle(kinds)
        links = rng.sample(LINKS, len(LINKS))  # the round's three network faults: one per link
        drafted: list[Fault] = []
        for kind in kinds:
            gap = round(rng.uniform(*prof.gap_s), 2)
            hold = prof.hold(rng, kind)
            link = links.pop() if kind.startswith("net_") else ""
            drafted.append(_cluster_fault(rng, kind, gap, hold, gateways, link))
            t += gap + hold + HEAL_S.get(kind, 0)
        if faults and t > duration_s:
            return faults
        faults += drafted


def _cluster_fault(
    rng: random.Random, kind: str, gap: float, hold: float, gws: int, link: str
) -> Fault:
    if kind in ("gateway_kill", "gateway_pause"):
        return Fault(kind, gap, hold, f"gateway{rng.randrange(gws)}")
    if kind.startswith("net_"):
        params: dict[str, Any] = {}
        if kind == "net_latency":
            params = {"latency_ms": rng.randrange(50, 401), "jitter_ms": rng.randrange(0, 101)}
        return Fault(kind, gap, hold, link, params)
    target = {
        "edge_kill": "edge",
        "router_kill": "router",
        "kafka_kill": "kafka",
        "pg_restart": "pg",
    }.get(kind, "redis")
    return Fault(kind, gap, hold, target)


def _members(
    rng: random.Random, prof: Profile, duration_s: float, rooms: list[list[int]]
) -> list[Fault]:
    """Member faults every ``member_every_s``, kinds cycling in a seeded order; a member has
    one fault at a time; each offline_resume also makes its member leave another of its rooms
    while away (the leave lands in the RESUME replay)."""
    members_of = {k: list(m) for k, m in enumerate(rooms)}
    rooms_of: dict[int, list[int]] = {}
    for k, members in members_of.items():
        for m in members:
            rooms_of.setdefault(m, []).append(k)
    busy_until: dict[int, float] = {}
    faults: list[Fault] = []
    cycle = [k for k in MEMBER_KINDS if k != "member_leave"]
    rng.shuffle(cycle)
    cycle.append("member_leave")  # the online leave; offline leaves ride on offline_resume
    t = prof.warmup_s + 3
    i = 0
    while True:
        kind = cycle[i % len(cycle)]
        hold = round(rng.uniform(*(prof.slow_s if kind == "slow_consumer" else prof.offline_s)), 2)
        if kind == "member_leave":
            hold = 0.0
        if t + hold > duration_s - 5 and i >= len(cycle):
            return sorted(faults, key=lambda f: f.at_s)
        free = sorted(m for m in rooms_of if busy_until.get(m, -1.0) < t)
        if not free:  # everyone is busy: skip this slot
            t += prof.member_every_s
            i += 1
            continue
        member = rng.choice(free)
        if kind == "member_leave":
            leave = _leave(rng, member, t, rooms_of, members_of, set())
            if leave is not None:
                faults.append(leave)
        else:
            room = rng.choice(rooms_of[member])
            faults.append(_away(rng, prof, kind, t, hold, member, room))
            if kind == "offline_resume":
                at = round(t + hold / 2, 2)
                leave = _leave(rng, member, at, rooms_of, members_of, {room})
                if leave is not None:
                    faults.append(leave)
        # away until the backlog is complete, at most the nemesis's limit: then free again
        busy_until[member] = t + away_limit(hold) + 10
        t += prof.member_every_s
        i += 1


def _away(
    rng: random.Random,
    prof: Profile,
    kind: str,
    t: float,
    hold: float,
    member: int,
    room: int,
) -> Fault:
    """Offline or slow, with a burst of large messages into ``room`` from its other members
    (each sends its share; a member leaving the room stops sending there)."""
    mib = rng.uniform(*(prof.slow_backlog_mib if kind == "slow_consumer" else prof.backlog_mib))
    count = int(mib * 1024 * 1024 / LARGE_CHARS) + 1
    params = {
        "room": room,
        "burst_count": count,
        "backlog_mib": round(mib, 2),
    }
    return Fault(kind, round(t, 2), hold, str(member), params)


def _leave(
    rng: random.Random,
    member: int,
    t: float,
    rooms_of: dict[int, list[int]],
    members_of: dict[int, list[int]],
    keep: set[int],
) -> Fault | None:
    """``member`` leaves one of its rooms (none of ``keep``), if one can lose a member and
    the member keeps at least one room."""
    choices = [
        r
        for r in rooms_of[member]
        if r not in keep and len(members_of[r]) > MIN_MEMBERS_LEFT and len(rooms_of[member]) > 1
    ]
    if not choices:
        return None
    room = rng.choice(choices)
    rooms_of[member].remove(room)
    members_of[room].remove(member)
    return Fault("member_leave", round(t, 2), 0.0, str(member), {"room": room})
