"""The nemesis's plan: replayable from its seed, every kind covered, member faults sane."""

from __future__ import annotations

import pytest

from loadtest.chaos.schedule import CLUSTER_KINDS, KINDS, MEMBER_KINDS, MIN_MEMBERS_LEFT, plan
from loadtest.scenarios.chaos import memberships

ROOMS = memberships(7, 24, 6, 3)


def test_same_seed_same_plan_other_seed_other_plan() -> None:
    a = plan(11, 120, gateways=2, rooms=ROOMS)
    assert a == plan(11, 120, gateways=2, rooms=ROOMS)
    assert a.describe() != plan(12, 120, gateways=2, rooms=ROOMS).describe()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_short_plan_injects_every_kind_at_least_once(seed: int) -> None:
    p = plan(seed, 120, gateways=2, rooms=ROOMS)
    assert sorted(f.kind for f in p.cluster) == sorted(CLUSTER_KINDS)  # one round exactly
    assert {f.kind for f in p.members} == set(MEMBER_KINDS)
    assert {f.kind for f in [*p.cluster, *p.members]} == set(KINDS)
    assert [f.at_s for f in p.members] == sorted(f.at_s for f in p.members)
    net = [f.target for f in p.cluster if f.kind.startswith("net_")]
    assert sorted(net) == ["kafka", "pg", "redis"]  # every link gets a network fault


def test_a_long_plan_repeats_rounds_within_the_duration() -> None:
    p = plan(5, 1800, gateways=3, rooms=ROOMS)
    assert len(p.cluster) % len(CLUSTER_KINDS) == 0 and len(p.cluster) > len(CLUSTER_KINDS)
    assert {f.target for f in p.cluster if f.kind == "gateway_kill"} <= {
        "gateway0",
        "gateway1",
        "gateway2",
    }
    offline = [f for f in p.members if f.kind.startswith("offline")]
    assert all(60 <= f.hold_s <= 240 for f in offline)  # minutes, inside the resume window
    assert all(f.at_s + f.hold_s <= 1800 for f in p.members)


def test_member_faults_build_multi_mib_backlogs() -> None:
    p = plan(3, 1800, gateways=2, rooms=ROOMS)
    for f in p.members:
        if f.kind == "member_leave":
            continue
        member, room = int(f.target), f.params["room"]
        assert member in ROOMS[room]
        assert f.params["burst_count"] * 4000 >= 2.5 * 1024 * 1024


def test_leaves_keep_rooms_and_members_alive_and_one_happens_while_offline() -> None:
    p = plan(3, 1800, gateways=2, rooms=ROOMS)
    members = [list(r) for r in ROOMS]
    rooms_of = {m: {k for k, r in enumerate(ROOMS) if m in r} for r in ROOMS for m in r}
    for f in p.members:
        if f.kind != "member_leave":
            continue
        member, room = int(f.target), f.params["room"]
        members[room].remove(member)  # it was a member until then
        rooms_of[member].discard(room)
        assert len(members[room]) >= MIN_MEMBERS_LEFT and rooms_of[member]
    away = [f for f in p.members if f.kind == "offline_resume"]
    leaves = [f for f in p.members if f.kind == "member_leave"]
    assert any(
        lv.target == a.target and a.at_s < lv.at_s < a.at_s + a.hold_s
        for a in away
        for lv in leaves
    )


def test_only_keeps_the_named_kinds_and_refuses_unknown_ones() -> None:
    p = plan(1, 120, gateways=2, rooms=ROOMS).only(["kafka_kill", "slow_consumer"])
    assert {f.kind for f in p.cluster} == {"kafka_kill"}
    assert {f.kind for f in p.members} == {"slow_consumer"}
    with pytest.raises(ValueError, match="unknown fault kinds"):
        p.only(["meteor"])


def test_memberships_are_drawn_from_the_seed_and_never_too_small() -> None:
    assert memberships(7, 24, 6, 3) == ROOMS
    assert all(len(r) >= MIN_MEMBERS_LEFT + 2 for r in memberships(9, 10, 6, 3))
    assert all(len(set(r)) == len(r) for r in ROOMS)
    with pytest.raises(SystemExit):
        memberships(1, 2, 6, 3)
