"""Bounded-load rendezvous hashing: which gateway a client with an affinity key should use.

Pure functions over a snapshot of live gateways (no I/O), so every service computes the same
answer from the same snapshot.

Why rendezvous (highest random weight) rather than a ketama ring (uhashring): it needs no ring to
build or cache when the live set changes at every heartbeat, its preference order for a key is
the natural "next on the ring" for bounded load, and adding an N-th gateway moves exactly the
keys that now rank it first, about 1/N of them, all onto the new gateway.

Bounded load (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads"): with
``c`` = ``load_factor``, a gateway is eligible when its sessions plus the new one stay within
``ceil(c * (total + 1) / n)``; a key goes to the first eligible gateway in its preference order.
Some gateway is always eligible when c >= 1 (they cannot all be above the average).

Guarantees:
- draining gateways are never chosen; no candidate -> ``None``.
- the same key maps to the same gateway while the set and loads stay within bounds.
- no key -> the less loaded of two random candidates (power of two choices): near least-loaded
  without sending every keyless client to the same gateway between two load reports.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence

from shardchat.registry import GatewayRecord

DEFAULT_LOAD_FACTOR = 1.25


def _weight(key_digest: bytes, gateway_id: str) -> int:
    digest = hashlib.blake2b(gateway_id.encode(), digest_size=8, key=key_digest).digest()
    return int.from_bytes(digest, "big")


def preference_order(key: str, gateway_ids: Sequence[str]) -> list[str]:
    """Gateway ids from most to least preferred for ``key`` (ties broken by id)."""
    # Keyed hash of the gateway id under a digest of the key: any key length, one pass each.
    key_digest = hashlib.blake2b(key.encode(), digest_size=32).digest()
    return sorted(gateway_ids, key=lambda g: (-_weight(key_digest, g), g))


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
    """The first gateway in ``key``'s preference order whose load stays within the bound."""
    candidates = _candidates(gateways, exclude)
    if not candidates:
        return None
    by_id = {g.gateway_id: g for g in candidates}
    cap = capacity(sum(g.sessions for g in candidates), len(candidates), load_factor)
    for gateway_id in preference_order(key, list(by_id)):
        if by_id[gateway_id].sessions + 1 <= cap:
            return by_id[gateway_id]
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
