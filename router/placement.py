"""Bounded-load consistent hashing: which gateway a client with an affinity key should use.

Pure functions over a snapshot of live gateways (no I/O), so every service computes the same
answer from the same snapshot.

The ring: a ketama continuum (``uhashring.HashRing``, ``hash_fn="ketama"``: 40 vnodes x 4
replicas = 160 points per gateway, weight 1) over the ids of the live, non-draining gateways.
Building one costs 160 md5s per gateway, so rings are cached by the frozenset of ids and rebuilt
only when that set changes, not at every heartbeat (loads change every beat; the set rarely).
The ring is built from the SORTED ids: ketama resolves a point collision by insertion order,
and every router replica must resolve it the same way. ``exclude`` does not change the ring: the
walk skips excluded ids, which is the same as removing their points, without a rebuild.

A key's preference order is the walk clockwise from the key's point, each gateway once
(``HashRing.range``). Adding an N-th gateway moves only the keys whose walk now meets it first,
about 1/N of them, all onto the new gateway; removing one moves only its own keys.

Bounded load (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads"): with
``c`` = ``load_factor``, a gateway is eligible when its sessions plus the new one stay within
``ceil(c * (total + 1) / n)`` (n = candidates); a key goes to the first eligible gateway on its
walk. Some gateway is always eligible when c >= 1 (they cannot all be above the average).

Guarantees:
- draining (and excluded) gateways are never chosen; no candidate -> ``None``.
- the same key maps to the same gateway while the set and loads stay within bounds, whatever
  the order of the snapshot.
- no key -> the less loaded of two random candidates (power of two choices): near least-loaded
  without sending every keyless client to the same gateway between two load reports.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

from uhashring import HashRing

from shardchat.registry import GatewayRecord

DEFAULT_LOAD_FACTOR = 1.25

#: Rings kept: one per distinct live set. A couple cover a gateway joining or leaving while
#: snapshots of both sets are still in use; more would only hold memory.
_RING_CACHE_SIZE = 4


@functools.lru_cache(maxsize=_RING_CACHE_SIZE)
def _ring(gateway_ids: frozenset[str]) -> Any:  # uhashring has no type hints: a HashRing
    return HashRing(nodes=sorted(gateway_ids), hash_fn="ketama")


def _walk(key: str, gateway_ids: frozenset[str]) -> Iterator[str]:
    """Gateway ids in ring order from ``key``'s point, each once (lazy: stops when dropped)."""
    if not gateway_ids:
        return
    for conf in _ring(gateway_ids).range(key):
        yield str(conf["nodename"])


def preference_order(key: str, gateway_ids: Sequence[str]) -> list[str]:
    """Gateway ids from most to least preferred for ``key``: its clockwise walk of the ring."""
    return list(_walk(key, frozenset(gateway_ids)))


def capacity(total_sessions: int, candidates: int, load_factor: float) -> int:
    """Most sessions a gateway may hold after placing one more (Mirrokni et al.)."""
    return max(1, math.ceil(load_factor * (total_sessions + 1) / candidates))


def _candidates(gateways: Sequence[GatewayRecord], exclude: frozenset[str]) -> list[GatewayRecord]:
    return [g for g in gateways if not g.draining and g.gateway_id not in exclude]


def choose_for_key(
    key: str,
    gateways: Sequence[GatewayRecord],
    *,
    load_factor: float = DEFAULT_LOAD_FACTOR,
    exclude: frozenset[str] = frozenset(),
) -> GatewayRecord | None:
    """The first gateway on ``key``'s ring walk whose load stays within the bound."""
    candidates = _candidates(gateways, exclude)
    if not candidates:
        return None
    by_id = {g.gateway_id: g for g in candidates}
    cap = capacity(sum(g.sessions for g in candidates), len(candidates), load_factor)
    # The ring holds every non-draining gateway (excluded ones too) so that an ``exclude`` set,
    # which differs per caller, never forces a rebuild.
    ring_ids = frozenset(g.gateway_id for g in gateways if not g.draining)
    for gateway_id in _walk(key, ring_ids):
        chosen = by_id.get(gateway_id)
        if chosen is not None and chosen.sessions + 1 <= cap:
            return chosen
    # Only reachable with load_factor < 1: fall back to the least loaded.
    return min(candidates, key=lambda g: (g.sessions, g.gateway_id))


def choose_any(
    gateways: Sequence[GatewayRecord],
    *,
    rng: random.Random | None = None,
    exclude: frozenset[str] = frozenset(),
) -> GatewayRecord | None:
    """No affinity: the less loaded of two random candidates."""
    candidates = _candidates(gateways, exclude)
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    a, b = (rng or random).sample(candidates, 2)
    return a if a.sessions <= b.sessions else b
