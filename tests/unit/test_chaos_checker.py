"""The chaos checker's accounting on made-up records: every rule of loadtest/chaos/checker.py,
each anomaly counted once and attributed to the fault that owns it."""

from __future__ import annotations

from loadtest.chaos.checker import check, markdown
from loadtest.chaos.records import MemberLog, RoomLog, SendLog, StoredEvent, Window

ROOM = 7
A, B, AUTHOR = 1, 2, 3


def _send(seq: int, t: float, nonce: str | None = None) -> SendLog:
    return SendLog(nonce or f"n{seq}", AUTHOR, ROOM, t_sent=t - 0.1, t_ack=t, seq=seq, path="gw")


def _truth(*seqs: int, extra: list[StoredEvent] | None = None) -> dict[int, list[StoredEvent]]:
    events = [StoredEvent(s, "MESSAGE_CREATE", AUTHOR, f"n{s}") for s in seqs]
    return {ROOM: sorted(events + (extra or []), key=lambda e: e.seq)}


def _member(user: int, gw: list[tuple[int, float]], base: int = 0, **kw: object) -> MemberLog:
    return MemberLog(user, {ROOM: RoomLog(base=base, gw=gw, **kw)})  # type: ignore[arg-type]


def _row(report: object, kind: str) -> dict[str, object]:
    return next(r for r in report.table() if r["kind"] == kind)  # type: ignore[attr-defined]


def test_a_clean_run_counts_every_pair_and_no_anomaly() -> None:
    sends = [_send(1, 1.0), _send(2, 2.0), _send(3, 3.0)]
    members = [
        _member(A, [(1, 1.1), (2, 2.1), (3, 3.1)]),
        _member(B, [(1, 1.2), (2, 2.2), (3, 3.2)]),
    ]
    report = check(members, sends, _truth(1, 2, 3), [])
    t = report.totals
    assert (t["acked"], t["expected"], t["delivered"]) == (3, 6, 6)
    assert report.failures == 0
    assert _row(report, "none")["acked"] == 3 and _row(report, "none")["delivered"] == 6


def test_lost_duplicated_and_reordered_are_each_counted_once() -> None:
    sends = [_send(s, float(s)) for s in (1, 2, 3, 4)]
    members = [
        _member(A, [(1, 1.1), (3, 3.1), (4, 4.1)]),  # 2 lost
        _member(B, [(1, 1.1), (3, 3.1), (2, 3.2), (4, 4.1), (4, 4.2)]),  # 2 late, 4 twice
    ]
    report = check(members, sends, _truth(1, 2, 3, 4), [])
    t = report.totals
    assert (t["lost"], t["reordered"], t["duplicated"]) == (1, 1, 1)
    assert t["delivered"] == 7
    assert report.examples["lost"][0] | {"acked_at": 0} == {
        "member": A,
        "room": ROOM,
        "seq": 2,
        "acked_at": 0,
        "fault": "none",
    }
    assert report.failures == 3


def test_history_refetch_counts_as_delivered_and_a_repeat_as_duplicate() -> None:
    sends = [_send(s, float(s)) for s in (1, 2, 3)]
    members = [
        _member(A, [(1, 1.1), (3, 3.1)], hist=[(2, 5.0)]),
        _member(B, [(1, 1.1), (2, 2.1), (3, 3.1)], hist=[(2, 5.0)]),
    ]
    report = check(members, sends, _truth(1, 2, 3), [])
    assert report.totals["lost"] == 0
    assert report.totals["reordered"] == 0  # history is not the gateway's order
    assert report.totals["duplicated"] == 1  # B had 2 already


def test_nothing_at_or_below_the_base_is_owed() -> None:
    sends = [_send(s, float(s)) for s in (1, 2, 3)]
    report = check([_member(A, [(3, 3.1)], base=2)], sends, _truth(1, 2, 3), [])
    assert report.totals["expected"] == 1 and report.failures == 0


def test_after_its_own_leave_a_member_is_owed_nothing_and_must_get_nothing() -> None:
    leave = StoredEvent(3, "MEMBER_LEAVE", user_id=A)
    sends = [_send(s, float(s)) for s in (1, 2, 4, 5)]
    window = Window("member_leave", f"user{A}", 2.5, 2.6, member=A, room=ROOM)
    members = [_member(A, [(1, 1.1), (2, 2.1), (3, 3.1), (5, 5.1)])]  # 4 missing: not owed
    report = check(members, sends, _truth(1, 2, 4, 5, extra=[leave]), [window])
    assert report.totals["leaked"] == 1
    assert report.totals["lost"] == 0
    assert _row(report, "member_leave")["leaked"] == 1
    assert _row(report, "member_leave")["injected"] == 1


def test_the_store_is_the_ground_truth_for_acknowledged_sends() -> None:
    sends = [
        _send(1, 1.0),
        _send(2, 2.0, nonce="gone"),  # acknowledged, never stored
        SendLog("n3", AUTHOR, ROOM, 3.0, t_ack=3.0, seq=9),  # acknowledged with another seq
        SendLog("never", AUTHOR, ROOM, 4.0),  # never acknowledged
        SendLog("no", AUTHOR, ROOM, 4.0, error="FORBIDDEN"),
    ]
    twice = StoredEvent(4, "MESSAGE_CREATE", AUTHOR, "n1")  # the retry of n1 stored again
    members = [_member(A, [(1, 1.1), (3, 3.1), (4, 4.1)])]
    report = check(members, sends, _truth(1, 3, extra=[twice]), [])
    t = report.totals
    assert (t["not_stored"], t["ack_mismatch"], t["stored_twice"]) == (1, 1, 1)
    assert (t["unacked"], t["refused"]) == (1, 1)
    assert t["lost"] == 2  # seq 2 and seq 9 never reached A


def test_faults_own_their_time_and_members_their_own_faults() -> None:
    kill = Window("gateway_kill", "gateway0", 10.0, 12.0)
    stall = Window("net_stall", "kafka", 20.0, 25.0)
    offline = Window("offline_resume", f"user{B}", 14.0, 30.0, member=B)
    sends = [_send(1, 5.0), _send(2, 11.0), _send(3, 15.0), _send(4, 22.0)]
    members = [
        # A: seq 2 lost (acked during the kill); seq 4 arrives 3 s after the stall healed
        _member(A, [(1, 5.1), (3, 15.1), (4, 28.0)]),
        # B: offline 14-30, its backlog arrives by 31.5; seq 3 (acked while offline) lost
        _member(B, [(1, 5.1), (2, 11.1), (4, 31.5)]),
    ]
    report = check(
        members,
        sends,
        _truth(1, 2, 3, 4),
        [kill, stall, offline],
        kinds=["gateway_kill", "net_stall", "offline_resume"],
    )
    rows = {r["kind"]: r for r in report.table()}
    assert [r["kind"] for r in report.table()] == [
        "none",
        "gateway_kill",
        "net_stall",
        "offline_resume",
    ]
    assert rows["gateway_kill"]["lost"] == 1  # A's seq 2
    assert rows["offline_resume"]["lost"] == 1  # B's seq 3, acked while B was away
    assert rows["gateway_kill"]["acked"] == 2  # seqs 2 and 3 were acked between 10 and 20
    assert rows["offline_resume"]["acked"] == 2  # B's pairs acked during 14-30: seqs 3, 4
    assert rows["offline_resume"]["delivered"] == 1
    # The stall's recovery ignores B (away for its own fault): A's seq 4 came 3 s after 25.
    assert rows["net_stall"]["recovery_p50_s"] == 3.0
    assert rows["offline_resume"]["recovery_p50_s"] == 1.5
    assert rows["gateway_kill"]["recovery_p99_s"] == 0.0
    assert rows["offline_resume"]["backlog_max_mib"] == round(2 * 100 / 2**20, 2)
    assert rows["gateway_kill"]["backlog_max_mib"] is None


def test_a_member_fault_reports_the_backlog_it_came_back_to() -> None:
    offline = Window("offline_subscribe", f"user{A}", 10.0, 40.0, member=A)
    sends = [
        SendLog(f"n{s}", AUTHOR, ROOM, s - 0.1, large=True, t_ack=float(s), seq=s)
        for s in range(11, 39)
    ]
    members = [_member(A, [(s, 41.0 + s / 100) for s in range(11, 39)])]
    report = check(members, sends, _truth(*range(11, 39)), [offline])
    row = _row(report, "offline_subscribe")
    assert row["acked"] == 28 and row["delivered"] == 28
    assert row["backlog_max_mib"] == round(28 * 4000 / 2**20, 2)
    p50 = row["recovery_p50_s"]
    assert isinstance(p50, float) and 1.0 <= p50 <= 1.4  # the last one arrived at 41.38


def test_a_fault_not_recovered_before_the_next_one_has_no_recovery_time() -> None:
    first = Window("edge_kill", "edge", 10.0, 12.0)
    second = Window("kafka_kill", "kafka", 14.0, 40.0)
    sends = [_send(1, 11.0), _send(2, 20.0)]
    members = [_member(A, [(1, 41.0), (2, 41.5)])]  # both held up by the Kafka outage
    report = check(members, sends, _truth(1, 2), [first, second], kinds=["edge_kill"])
    edge, kafka = _row(report, "edge_kill"), _row(report, "kafka_kill")
    assert edge["recovery_p50_s"] is None and edge["recovery_cut"] == 1
    assert kafka["recovery_p50_s"] == 1.5 and kafka["recovery_cut"] == 0
    assert "(1 cut)" in markdown(report)


def test_duplicates_count_where_they_were_received() -> None:
    kill = Window("gateway_kill", "gateway1", 10.0, 11.0)
    sends = [_send(1, 9.0)]
    members = [_member(A, [(1, 9.1), (1, 10.5)])]
    report = check(members, sends, _truth(1), [kill], kinds=["gateway_kill"])
    assert _row(report, "gateway_kill")["duplicated"] == 1
    assert _row(report, "none")["duplicated"] == 0


def test_markdown_has_one_line_per_kind() -> None:
    report = check([], [], {}, [Window("redis_flush", "redis", 1.0, 1.0)], kinds=["redis_flush"])
    text = markdown(report)
    lines = text.splitlines()
    assert lines[0].startswith("| fault | injected | acked |")
    assert lines[-1].startswith("| redis_flush | 1 |")
    assert len(lines) == 4  # header, rule, none, redis_flush
