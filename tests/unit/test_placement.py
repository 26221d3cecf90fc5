"""Placement: bounded-load consistent hashing on a ketama ring (router/placement.py) and the
Placement service."""

from __future__ import annotations

import collections
import math
import random

import pytest
from uhashring import HashRing

from router import placement
from router.placement_service import NoGatewayAvailable, Placement
from shardchat.adapters.memory_registry import MemoryRegistry
from shardchat.registry import GatewayRecord

KEYS = [f"user:{i}" for i in range(10_000)]


def gws(n: int, **loads: int) -> list[GatewayRecord]:
    return [GatewayRecord(f"g{i}", f"ws://g{i}/ws", loads.get(f"g{i}", 0)) for i in range(n)]


def owners(gateways: list[GatewayRecord]) -> dict[str, str]:
    out = {}
    for key in KEYS:
        chosen = placement.choose_for_key(key, gateways)
        assert chosen is not None
        out[key] = chosen.gateway_id
    return out


def test_same_key_same_gateway_while_the_set_is_stable() -> None:
    gateways = gws(5)
    first = owners(gateways)
    assert owners(list(reversed(gateways))) == first  # order of the listing does not matter
    assert owners(gateways) == first


def test_keys_spread_evenly() -> None:
    counts = collections.Counter(owners(gws(5)).values())
    assert set(counts) == {f"g{i}" for i in range(5)}
    for count in counts.values():
        assert abs(count - 2000) < 2000 * 0.1


def test_adding_a_gateway_moves_about_one_nth_and_only_to_it() -> None:
    before = owners(gws(5))
    after = owners(gws(6))
    moved = [k for k in KEYS if before[k] != after[k]]
    assert abs(len(moved) / len(KEYS) - 1 / 6) < 0.03
    assert {after[k] for k in moved} == {"g5"}


def test_removing_a_gateway_moves_only_its_keys() -> None:
    before = owners(gws(6))
    after = owners([g for g in gws(6) if g.gateway_id != "g2"])
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "g2"}


def test_overloaded_gateway_is_skipped_to_the_next_in_order() -> None:
    gateways = gws(4)
    key = "user:42"
    favourite = placement.preference_order(key, [g.gateway_id for g in gateways])
    # favourite[0] holds far more than 1.25 x the average: the key goes to the runner-up
    loaded = gws(4, **{favourite[0]: 100})
    chosen = placement.choose_for_key(key, loaded)
    assert chosen is not None and chosen.gateway_id == favourite[1]


def test_bounded_load_holds_for_a_burst() -> None:
    """Sequential placement with load feedback never exceeds ceil(c * average)."""
    loads = dict.fromkeys((f"g{i}" for i in range(8)), 0)
    rng = random.Random(7)
    for n in range(1, 4001):
        # a skewed key distribution: a few hot keys repeated
        key = f"hot:{rng.randrange(3)}" if rng.random() < 0.5 else f"k:{n}"
        gateways = [GatewayRecord(g, "ws://x", s) for g, s in loads.items()]
        chosen = placement.choose_for_key(key, gateways, load_factor=1.25)
        assert chosen is not None
        loads[chosen.gateway_id] += 1
        assert max(loads.values()) <= math.ceil(1.25 * n / len(loads))


def test_first_choice_is_the_ketama_owner() -> None:
    """With no load the key goes where any ketama client (uhashring, libketama) would put it."""
    ring = HashRing(nodes=[f"g{i}" for i in range(5)], hash_fn="ketama")
    chosen = owners(gws(5))
    assert all(chosen[k] == ring.get_node(k) for k in KEYS[:500])


def test_ring_is_rebuilt_only_when_the_live_set_changes() -> None:
    placement._ring.cache_clear()
    for n in range(50):  # loads, listing order and exclusions change; the set does not
        gateways = gws(4, g0=n, g1=2 * n)
        if n % 2:
            gateways.reverse()
        placement.choose_for_key(f"k{n}", gateways, exclude=frozenset({f"g{n % 4}"}))
    assert placement._ring.cache_info().misses == 1
    placement.choose_for_key("k", gws(5))  # a gateway joined
    placement.choose_for_key("k", [*gws(4), GatewayRecord("g4", "ws://g4/ws", draining=True)])
    assert placement._ring.cache_info().misses == 2  # draining: back to the 4-gateway ring


def test_excluding_walks_on_to_the_next_on_the_ring() -> None:
    gateways = gws(5)
    for key in KEYS[:200]:
        order = placement.preference_order(key, [g.gateway_id for g in gateways])
        chosen = placement.choose_for_key(key, gateways, exclude=frozenset({order[0]}))
        assert chosen is not None and chosen.gateway_id == order[1]


def test_draining_gateways_are_never_chosen() -> None:
    gateways = [*gws(3), GatewayRecord("d", "ws://d/ws", 0, draining=True)]
    assert all(v != "d" for v in owners(gateways).values())
    only_draining = [GatewayRecord("d", "ws://d/ws", draining=True)]
    assert placement.choose_for_key("k", only_draining) is None
    assert placement.choose_any(only_draining) is None
    assert placement.choose_for_key("k", []) is None


def test_exclude() -> None:
    chosen = placement.choose_for_key("k", gws(2), exclude=frozenset({"g0"}))
    assert chosen is not None and chosen.gateway_id == "g1"


def test_keyless_prefers_lightly_loaded() -> None:
    gateways = gws(3, g0=1000, g1=1000, g2=0)
    rng = random.Random(1)
    picks = collections.Counter(
        placement.choose_any(gateways, rng=rng).gateway_id for _ in range(300)
    )
    assert picks["g2"] > 150  # chosen whenever sampled, two of three pairs
    assert picks["g0"] + picks["g1"] > 0  # yet not a herd onto one gateway


# -- the Placement service --------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_service_counts_its_own_placements_between_snapshots() -> None:
    clock = Clock()
    registry = MemoryRegistry(clock=clock)
    for i in range(4):
        await registry.heartbeat_gateway(GatewayRecord(f"g{i}", f"ws://g{i}/ws"), 60)
    service = Placement(registry, clock=clock, snapshot_ttl_s=10)
    counts = collections.Counter(
        [(await service.choose("same-key")).gateway_id for _ in range(100)]
    )
    # one hot key cannot pile everything onto one gateway before the next heartbeat
    assert max(counts.values()) <= math.ceil(1.25 * 100 / 4)


async def test_service_raises_when_nothing_is_live_and_sees_new_gateways() -> None:
    clock = Clock()
    registry = MemoryRegistry(clock=clock)
    service = Placement(registry, clock=clock, snapshot_ttl_s=1)
    with pytest.raises(NoGatewayAvailable):
        await service.choose("k")
    await registry.heartbeat_gateway(GatewayRecord("g0", "ws://g0/ws"), 60)
    clock.now += 1.5
    assert (await service.choose("k")).url == "ws://g0/ws"
    assert (await service.choose(None)).gateway_id == "g0"
    with pytest.raises(NoGatewayAvailable):
        await service.choose(None, exclude={"g0"})
