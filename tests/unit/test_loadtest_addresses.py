"""Client source addresses: loopback only, handed out round robin, sized for the port range."""

from __future__ import annotations

import pytest

from loadtest.addresses import RoundRobin, needed_addresses, source_addresses
from loadtest.harness import HarnessOptions, plan_clients
from loadtest.population import Population


def test_source_addresses_are_consecutive_loopback() -> None:
    assert source_addresses(3) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    with pytest.raises(ValueError):
        source_addresses(0)
    with pytest.raises(ValueError):
        source_addresses(2, first="127.255.255.255")  # would leave 127/8


def test_round_robin_is_even() -> None:
    rr = RoundRobin(["a", "b", "c"])
    got = [rr() for _ in range(9)]
    assert got == ["a", "b", "c"] * 3


def test_needed_addresses() -> None:
    assert needed_addresses(1000, 2) == 1
    assert needed_addresses(100_000, 2) == 2  # 50k per gateway > 28k ports per pair
    assert needed_addresses(100_000, 1) == 4


def test_plan_spreads_rooms_over_workers_gateways_and_sources() -> None:
    rooms = [(10, [1, 2, 3, 4]), (20, [5, 6, 7, 8])]
    pop = Population({u: f"t{u}" for u in range(1, 9)}, rooms)
    opts = HarnessOptions(workers=2, sources=["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    plans = plan_clients(pop, ["ws://g0", "ws://g1"], opts)
    specs = [c for p in plans for c in p.clients]
    assert sorted(c.user_id for c in specs) == list(range(1, 9))
    assert {c.source for c in specs} == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
    for room_id, _members in rooms:
        mine = [c for c in specs if c.room_id == room_id]
        assert {c.gateway for c in mine} == {0, 1}  # every room crosses gateways
        assert sum(c.sender for c in mine) == 1
    assert all(len(p.clients) == 4 for p in plans)
    assert {c.gateway for c in specs if c.sender} == {0, 1}  # senders spread too


def test_plan_spreads_senders_when_room_size_is_a_multiple_of_workers() -> None:
    rooms = [(100 + k, list(range(10 * k + 1, 10 * k + 11))) for k in range(8)]
    pop = Population({u: "t" for u in range(1, 81)}, rooms)
    plans = plan_clients(pop, ["ws://g0", "ws://g1"], HarnessOptions(workers=2))
    senders = [(p.index, c.gateway) for p in plans for c in p.clients if c.sender]
    assert {w for w, _ in senders} == {0, 1}
    assert {g for _, g in senders} == {0, 1}
    assert len(set(senders)) == 4  # workers and gateways are not locked together
