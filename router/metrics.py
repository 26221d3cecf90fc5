"""Router metrics (Prometheus). Names are what the dashboards read; change them together."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PLACEMENT_REQUESTS = Counter(
    "shardchat_router_placements",
    "GET /gateway requests by outcome (ok, no_gateway, registry_error) and keyed (true/false).",
    ["outcome", "keyed"],
)
PLACEMENT_SECONDS = Histogram(
    "shardchat_router_placement_seconds",
    "Time to answer GET /gateway, registry round trip included.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
LIVE_GATEWAYS = Gauge(
    "shardchat_router_live_gateways",
    "Gateways in the registry at the last snapshot, by state (serving, draining).",
    ["state"],
)
DRAIN_REQUESTS = Counter(
    "shardchat_router_drain_requests",
    "POST /drain/{gateway_id} requests by outcome (ok, not_found, registry_error).",
    ["outcome"],
)
