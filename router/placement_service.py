"""``Placement``: choose a gateway for a client, reusable without HTTP (router app, GraphQL edge's
``gateway(key)``, a draining gateway's RECONNECT url).

It reads ``Registry.live_gateways`` at most once per ``snapshot_ttl_s`` (a reconnect storm must
not become a registry storm) and counts its own placements on top of the snapshot's loads, so
bounded load holds between two gateway heartbeats instead of sending a whole burst to one
gateway. Several router replicas each count their own: the bound is then approximate, which is
what the load factor's slack is for.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Collection

import msgspec

from router import placement
from shardchat.registry import GatewayRecord, Registry


class NoGatewayAvailable(Exception):
    """No live, non-draining gateway to place a client on."""


class Placement:
    def __init__(
        self,
        registry: Registry,
        *,
        load_factor: float = placement.DEFAULT_LOAD_FACTOR,
        snapshot_ttl_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._registry = registry
        self._load_factor = load_factor
        self._snapshot_ttl_s = snapshot_ttl_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._snapshot: list[GatewayRecord] = []
        self._taken_at = -float("inf")
        self._placed: dict[str, int] = {}  # placements since the snapshot was taken
        self._refresh_lock = asyncio.Lock()

    async def live(self, *, fresh: bool = False) -> list[GatewayRecord]:
        """Live gateways (draining ones included) as of at most ``snapshot_ttl_s`` ago.

        Raises ``RegistryUnavailable`` when the registry cannot be read.
        """
        if fresh or self._clock() - self._taken_at >= self._snapshot_ttl_s:
            async with self._refresh_lock:  # single flight: one read per expiry
                if fresh or self._clock() - self._taken_at >= self._snapshot_ttl_s:
                    self._snapshot = await self._registry.live_gateways()
                    self._taken_at = self._clock()
                    self._placed.clear()
        return list(self._snapshot)

    async def choose(self, key: str | None, *, exclude: Collection[str] = ()) -> GatewayRecord:
        """The gateway for ``key`` (bounded-load consistent hash) or, without a key, a lightly
        loaded one. ``exclude``: ids not to choose (a draining gateway excludes itself).

        Raises ``NoGatewayAvailable``, or ``RegistryUnavailable``.
        """
        snapshot = await self.live()
        loaded = [
            msgspec.structs.replace(g, sessions=g.sessions + self._placed.get(g.gateway_id, 0))
            if g.gateway_id in self._placed
            else g
            for g in snapshot
        ]
        skip = frozenset(exclude)
        if key:
            chosen = placement.choose_for_key(
                key, loaded, load_factor=self._load_factor, exclude=skip
            )
        else:
            chosen = placement.choose_any(loaded, rng=self._rng, exclude=skip)
        if chosen is None:
            raise NoGatewayAvailable("no live gateway accepts sessions")
        self._placed[chosen.gateway_id] = self._placed.get(chosen.gateway_id, 0) + 1
        # Return the registry's record (real load), not the locally adjusted copy.
        return next(g for g in snapshot if g.gateway_id == chosen.gateway_id)
