"""Client source addresses on 127.0.0.x, handed out round robin.

Linux picks an ephemeral port per (source address, destination address:port); the local range
here (32768-60999) gives about 28k connections per pair. Spreading clients over several source
addresses on the loopback /8 (all of 127.0.0.0/8 is local on Linux, no setup needed) lifts that
ceiling, and also spreads the gateway's per-IP IDENTIFY limit buckets.
"""

from __future__ import annotations

import ipaddress

EPHEMERAL_PORTS_PER_PAIR = 28_000


def source_addresses(count: int, first: str = "127.0.0.2") -> list[str]:
    """``count`` consecutive loopback addresses starting at ``first``."""
    if count < 1:
        raise ValueError("count must be >= 1")
    start = ipaddress.IPv4Address(first)
    addrs = [str(start + i) for i in range(count)]
    if not all(ipaddress.IPv4Address(a).is_loopback for a in addrs):
        raise ValueError("source addresses must stay inside 127.0.0.0/8")
    return addrs


def needed_addresses(connections: int, destinations: int) -> int:
    """Source addresses needed so no (source, destination) pair runs out of ports."""
    per_dest = -(-connections // max(1, destinations))
    return max(1, -(-per_dest // EPHEMERAL_PORTS_PER_PAIR))


class RoundRobin:
    """The i-th connection gets ``addrs[i % len(addrs)]``: even use of every address."""

    def __init__(self, addrs: list[str]) -> None:
        if not addrs:
            raise ValueError("at least one address")
        self.addrs = list(addrs)
        self._next = 0

    def __call__(self) -> str:
        addr = self.addrs[self._next % len(self.addrs)]
        self._next += 1
        return addr
