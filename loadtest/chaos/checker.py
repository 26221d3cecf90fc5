"""The chaos checker: what every member received against what was acknowledged and stored.

Pure (records in, a report out), so its accounting is tested on made-up records. The rules:

- An acknowledged message is one whose send got REPLY ok or a ``sendMessage`` result. It must be
  in the Store with the seq the ack gave (``not_stored`` / ``ack_mismatch`` otherwise), and no
  ``(author, nonce)`` may be stored twice (``stored_twice``: a retried send made two messages).
- Every member that stayed in a room (no MEMBER_LEAVE of theirs in the Store) must hold every
  acknowledged message of it with a seq above its ``base`` (where it first went live), through
  the gateway or a history refetch after ``recovered: false``: each missing one is ``lost``.
- A room seq received more than once, by any path, is ``duplicated`` (each extra copy); one
  received below the highest seq the gateway already gave that member in that room is
  ``reordered``.
- A member that left a room must receive nothing of it after its own MEMBER_LEAVE: each such
  event is ``leaked``.

Attribution to fault kinds: cluster faults (member None) run one at a time, so each owns the
time from its start until the next one starts (before the first: ``none``). A member's own
fault (offline, slow, leave) owns what concerns that member from its start until it recovered.
``acked`` of a cluster fault counts the messages acknowledged in its time; ``delivered`` and
``lost`` count (member, message) pairs: under the member's own fault when the message was
acknowledged while it lasted (and then ``acked`` there counts those pairs), else under the
cluster fault of the acknowledgement. A duplicate or reorder counts where it was received
(a member's fault owns it until it recovered); a leak under its ``member_leave``.

Recovery time of a fault: how long after it was healed (``t1``) the last message first sent
before ``t1`` reached a member it concerns (cluster faults: every member not inside a fault of
its own for that message; member faults: that member), 0 when everything was there at ``t1``.
Lost messages are not in it (they are in ``lost``). A cluster fault whose messages were not all
there when the next cluster fault started has no recovery time (the next fault's would be in
it): it is counted in ``recovery_cut`` instead.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from loadtest.chaos.records import MemberLog, SendLog, StoredEvent, Window
from loadtest.chaos.schedule import LARGE_CHARS, SMALL_CHARS

NONE = "none"
COLUMNS = (
    "injected",
    "acked",
    "delivered",
    "lost",
    "duplicated",
    "reordered",
    "leaked",
)
MEMBER_GRACE_S = 60.0  # a member fault that never recovered owns this long after it was healed
MAX_EXAMPLES = 20  # per anomaly kind in the report


@dataclass
class Row:
    kind: str
    injected: int = 0
    acked: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    leaked: int = 0
    recovery_s: list[float] = field(default_factory=list)
    recovery_cut: int = 0  # injections not recovered when the next cluster fault started
    backlog_bytes: dict[int, int] = field(default_factory=dict)  # member fault -> its backlog

    def as_dict(self) -> dict[str, Any]:
        rec = sorted(self.recovery_s)
        return {
            "kind": self.kind,
            **{c: getattr(self, c) for c in COLUMNS},
            "recovery_p50_s": _pct(rec, 50),
            "recovery_p99_s": _pct(rec, 99),
            "recovery_max_s": round(rec[-1], 3) if rec else None,
            "recovery_cut": self.recovery_cut,
            "backlog_max_mib": (
                round(max(self.backlog_bytes.values()) / 2**20, 2) if self.backlog_bytes else None
            ),
        }


@dataclass
class Report:
    rows: list[Row]
    totals: dict[str, int]
    examples: dict[str, list[dict[str, Any]]]
    delays_s: list[float] = field(default_factory=list)  # first send attempt -> arrival, per pair

    @property
    def failures(self) -> int:
        t = self.totals
        keys = ("lost", "duplicated", "reordered", "leaked", "stored_twice", "ack_mismatch")
        return sum(t[k] for k in keys) + t["not_stored"] + t["unacked"] + t["refused"]

    def table(self) -> list[dict[str, Any]]:
        return [row.as_dict() for row in self.rows]


def _pct(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return None
    rank = max(1, math.ceil(pct / 100 * len(values)))
    return round(values[rank - 1], 3)


@dataclass
class _Pair:
    """One (member, acknowledged message) that must arrive."""

    member: int
    room: int
    seq: int
    t_sent: float
    t_ack: float
    t_got: float | None  # None: lost
    size: int  # content characters
    excused: bool = False  # inside a fault of the member's own


class _Attribution:
    """Which fault kind owns a moment (cluster faults) or a member's moment (its own faults)."""

    def __init__(self, windows: list[Window], recovery: dict[int, float | None]) -> None:
        cluster = sorted((w for w in windows if w.member is None), key=lambda w: w.t0)
        self._starts = [w.t0 for w in cluster]
        self._cluster = cluster
        self._own: dict[int, list[tuple[float, float, Window]]] = {}
        for w in windows:
            if w.member is None or w.kind == "member_leave":
                continue
            rec = recovery.get(id(w))
            until = w.t1 + (rec if rec is not None else MEMBER_GRACE_S)
            self._own.setdefault(w.member, []).append((w.t0, until, w))

    def cluster_at(self, t: float) -> Window | None:
        i = bisect.bisect_right(self._starts, t) - 1
        return self._cluster[i] if i >= 0 else None

    def own_at(self, member: int, t: float, *, recovering: bool = True) -> Window | None:
        """The member's own fault at ``t``: from its start until it recovered, or only until
        it was healed (``recovering=False``: what was acknowledged while it lasted)."""
        for t0, until, w in self._own.get(member, ()):
            if t0 <= t <= (until if recovering else w.t1):
                return w
        return None

    def at(self, member: int, t: float) -> Window | None:
        return self.own_at(member, t) or self.cluster_at(t)


def check(
    members: Iterable[MemberLog],
    sends: Iterable[SendLog],
    truth: Mapping[int, list[StoredEvent]],
    windows: list[Window],
    *,
    t_start: float = 0.0,
    kinds: Iterable[str] = (),
) -> Report:
    """The report of one run. ``kinds`` fixes the order of the rows (and lists kinds that
    were planned but never injected); ``t_start`` makes example times relative to the run."""
    members = list(members)
    sends = list(sends)
    totals = dict.fromkeys(
        (
            "sends",
            "acked",
            "unacked",
            "refused",
            "not_stored",
            "ack_mismatch",
            "stored_twice",
            "expected",
            "delivered",
            "lost",
            "duplicated",
            "reordered",
            "leaked",
        ),
        0,
    )
    examples: dict[str, list[dict[str, Any]]] = {}

    def example(kind: str, **info: Any) -> None:
        bucket = examples.setdefault(kind, [])
        if len(bucket) < MAX_EXAMPLES:
            bucket.append(info)

    # --- the Store: stored messages by (author, nonce), leaves by (room, user) --------------
    stored: dict[tuple[int, str], list[tuple[int, int]]] = {}
    left_at_seq: dict[tuple[int, int], int] = {}
    for room, events in truth.items():
        for ev in events:
            if ev.type == "MESSAGE_CREATE" and ev.author is not None and ev.nonce is not None:
                stored.setdefault((ev.author, ev.nonce), []).append((room, ev.seq))
            elif ev.type == "MEMBER_LEAVE" and ev.user_id is not None:
                left_at_seq.setdefault((room, ev.user_id), ev.seq)
    for (author, nonce), copies in stored.items():
        if len(copies) > 1:
            totals["stored_twice"] += len(copies) - 1
            example("stored_twice", author=author, nonce=nonce, copies=copies)

    # --- the sends -------------------------------------------------------------------------
    acked: dict[int, list[SendLog]] = {}
    totals["sends"] = len(sends)
    for s in sends:
        if s.error:
            totals["refused"] += 1
            example("refused", nonce=s.nonce, room=s.room, error=s.error)
            continue
        if s.t_ack is None or s.seq is None:
            totals["unacked"] += 1
            example("unacked", nonce=s.nonce, room=s.room, t=round(s.t_sent - t_start, 3))
            continue
        totals["acked"] += 1
        copies = stored.get((s.author, s.nonce), [])
        if not copies:
            totals["not_stored"] += 1
            example("not_stored", nonce=s.nonce, room=s.room, seq=s.seq)
        elif (s.room, s.seq) != copies[0]:
            totals["ack_mismatch"] += 1
            example("ack_mismatch", nonce=s.nonce, acked=(s.room, s.seq), stored=copies[0])
        acked.setdefault(s.room, []).append(s)

    # --- per member and room: what arrived, how ----------------------------------------------
    pairs: list[_Pair] = []
    anomalies: list[tuple[str, int, int, int, float]] = []  # (what, member, room, seq, t)
    for m in members:
        for room, log in m.rooms.items():
            first: dict[int, float] = {}
            top = log.base or 0
            for seq, t in log.gw:
                if seq in first:
                    anomalies.append(("duplicated", m.user_id, room, seq, t))
                elif seq < top:
                    anomalies.append(("reordered", m.user_id, room, seq, t))
                first.setdefault(seq, t)
                top = max(top, seq)
            for seq, t in log.hist:
                if seq in first:
                    anomalies.append(("duplicated", m.user_id, room, seq, t))
                first.setdefault(seq, t)
            leave = left_at_seq.get((room, m.user_id))
            if leave is not None:
                for seq, t in log.gw:
                    if seq > leave:
                        anomalies.append(("leaked", m.user_id, room, seq, t))
                continue  # a member that left is owed nothing
            base = log.base or 0
            for s in acked.get(room, ()):
                assert s.seq is not None and s.t_ack is not None
                if s.seq > base:
                    size = LARGE_CHARS if s.large else SMALL_CHARS
                    pairs.append(
                        _Pair(m.user_id, room, s.seq, s.t_sent, s.t_ack, first.get(s.seq), size)
                    )

    # --- recovery per fault ------------------------------------------------------------------
    own: dict[int, list[Window]] = {}
    for w in windows:
        if w.member is not None and w.kind != "member_leave":
            own.setdefault(w.member, []).append(w)
    for p in pairs:
        got = p.t_got if p.t_got is not None else math.inf
        p.excused = any(w.t0 <= got and p.t_sent <= w.t1 for w in own.get(p.member, ()))
    recovery: dict[int, float | None] = {}
    cut: set[int] = set()  # cluster faults not recovered when the next one started
    cluster = sorted((w for w in windows if w.member is None), key=lambda w: w.t0)
    next_start = {id(a): b.t0 for a, b in itertools.pairwise(cluster)}
    done = sorted((p for p in pairs if p.t_got is not None), key=lambda p: p.t_sent)
    everyone = _PrefixMax([p for p in done if not p.excused])
    by_member: dict[int, _PrefixMax] = {}
    for w in windows:
        if w.kind == "member_leave":
            recovery[id(w)] = None
            continue
        if w.member is None:
            latest = everyone.upto(w.t1)
            if latest is not None and latest > next_start.get(id(w), math.inf):
                recovery[id(w)] = None
                cut.add(id(w))
                continue
        else:
            if w.member not in by_member:
                by_member[w.member] = _PrefixMax([p for p in done if p.member == w.member])
            latest = by_member[w.member].upto(w.t1)
        recovery[id(w)] = max(0.0, latest - w.t1) if latest is not None else 0.0
    attribution = _Attribution(windows, recovery)

    # --- the table ---------------------------------------------------------------------------
    order = [NONE, *kinds]
    for w in windows:
        if w.kind not in order:
            order.append(w.kind)
    rows = {kind: Row(kind) for kind in order}
    for w in windows:
        row = rows[w.kind]
        row.injected += 1
        rec = recovery[id(w)]
        if rec is not None:
            row.recovery_s.append(rec)
        row.recovery_cut += id(w) in cut

    def kind_of(w: Window | None) -> str:
        return w.kind if w is not None else NONE

    totals["expected"] = len(pairs)
    for s_room in acked.values():
        for s in s_room:
            assert s.t_ack is not None
            rows[kind_of(attribution.cluster_at(s.t_ack))].acked += 1
    for p in pairs:
        owner = attribution.own_at(p.member, p.t_ack, recovering=False)
        row = rows[owner.kind if owner else kind_of(attribution.cluster_at(p.t_ack))]
        if owner is not None:
            row.acked += 1  # a member fault counts its member's messages, and their bytes
            row.backlog_bytes[id(owner)] = row.backlog_bytes.get(id(owner), 0) + p.size
        if p.t_got is not None:
            totals["delivered"] += 1
            row.delivered += 1
        else:
            totals["lost"] += 1
            row.lost += 1
            example(
                "lost",
                member=p.member,
                room=p.room,
                seq=p.seq,
                acked_at=round(p.t_ack - t_start, 3),
                fault=row.kind,
            )
    leaves = {(w.member, w.room): w for w in windows if w.kind == "member_leave"}
    for what, member, room, seq, t in anomalies:
        totals[what] += 1
        if what == "leaked":
            owner_w = leaves.get((member, room)) or attribution.at(member, t)
        else:
            owner_w = attribution.at(member, t)
        kind = kind_of(owner_w)
        setattr(rows[kind], what, getattr(rows[kind], what) + 1)
        example(what, member=member, room=room, seq=seq, t=round(t - t_start, 3), fault=kind)
    delays = [p.t_got - p.t_sent for p in pairs if p.t_got is not None]
    return Report(list(rows.values()), totals, examples, delays)


class _PrefixMax:
    """Latest delivery among pairs sent up to a time (pairs sorted by ``t_sent``)."""

    def __init__(self, pairs: list[_Pair]) -> None:
        self._sent = [p.t_sent for p in pairs]
        self._max: list[float] = []
        top = -math.inf
        for p in pairs:
            assert p.t_got is not None
            top = max(top, p.t_got)
            self._max.append(top)

    def upto(self, t: float) -> float | None:
        i = bisect.bisect_right(self._sent, t)
        return self._max[i - 1] if i else None


def markdown(report: Report) -> str:
    """The per-fault table as Markdown (docs/reliability.md)."""
    head = ["fault", *COLUMNS, "recovery p50 s", "recovery p99 s", "max backlog MiB"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for row in report.table():
        cells = [row["kind"], *(str(row[c]) for c in COLUMNS)]
        for key in ("recovery_p50_s", "recovery_p99_s", "backlog_max_mib"):
            cells.append("-" if row[key] is None else f"{row[key]:.2f}")
        if row["recovery_cut"]:  # the p99 cell says how many did not recover in time
            cells[-2] = f"{cells[-2]} ({row['recovery_cut']} cut)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
