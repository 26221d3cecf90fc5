"""Prometheus metrics of the GraphQL edge (names are what dashboards query)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "shardchat_edge_requests",
    "GraphQL operations by type and outcome (ok, or the first error code, or rejected)",
    ["operation_type", "outcome"],
)
LATENCY = Histogram(
    "shardchat_edge_request_latency_seconds",
    "GraphQL operation latency, receipt to response",
    ["operation_type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
SUBSCRIPTIONS = Gauge(
    "shardchat_edge_graphql_subscriptions", "Active graphql-transport-ws subscriptions"
)
WS_CONNECTIONS = Gauge(
    "shardchat_edge_graphql_ws_connections", "Open graphql-transport-ws connections"
)
