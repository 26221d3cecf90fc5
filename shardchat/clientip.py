"""The real client address behind trusted proxies (pure: no I/O).

``X-Forwarded-For`` is believed only when the connection comes from a configured trusted proxy
(``Settings.trusted_proxies``): then the rightmost address in it that is not itself a trusted
proxy is the client (each proxy appends the address it received the request from, so entries
left of the first untrusted one may be forged by the client). From anyone else the header is
ignored and the peer address is the client. Used for every per-IP limit (edge and gateway).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@cache
def networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    """Parse ``trusted`` (addresses or CIDRs); a bad entry raises ValueError at start-up."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in trusted)


def _is_trusted(address: str, nets: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in net for net in nets)


def real_client(peer: str, forwarded_for: str | None, trusted: tuple[str, ...]) -> str:
    """The client's address: ``peer`` unless ``peer`` is a trusted proxy and the header says."""
    nets = networks(trusted)
    if not nets or not forwarded_for or not _is_trusted(peer, nets):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, nets):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage where an address belongs: no better answer than the proxy
    return hops[0] if hops else peer
