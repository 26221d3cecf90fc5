"""Prometheus metrics of the gateway (names are what dashboards read; keep them stable)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("shardchat_gateway_connections", "Open WebSocket connections")
SESSIONS = Gauge("shardchat_gateway_sessions", "Identified or resumed sessions")
SUBSCRIPTIONS = Gauge("shardchat_gateway_subscriptions", "Live room subscriptions")
FRAMES_IN = Counter("shardchat_gateway_frames_in", "Frames received from clients")
FRAMES_OUT = Counter("shardchat_gateway_frames_out", "Frames written to clients")
BYTES_OUT = Counter("shardchat_gateway_bytes_out", "Bytes written to client transports")
FANOUT_BATCH = Histogram(
    "shardchat_gateway_fanout_batch",
    "Recipients of one room event on this gateway",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
)
DELIVERY_LATENCY = Histogram(
    "shardchat_gateway_delivery_latency_seconds",
    "Room event created_at_ms to its frames written on this gateway",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SLOW_CONSUMER_CUTS = Counter(
    "shardchat_gateway_slow_consumer_cuts", "Connections closed with 4010 (outbound over limit)"
)
ASSIGNED_PARTITIONS = Gauge(
    "shardchat_gateway_assigned_partitions", "Event-log partitions this gateway consumes"
)
RECORDS_CONSUMED = Counter("shardchat_gateway_records_consumed", "Event-log records consumed")
RECORDS_WASTED = Counter(
    "shardchat_gateway_records_wasted",
    "Consumed records of rooms with no local subscriber (waste ratio = wasted / consumed)",
)
GAP_FILLS = Counter("shardchat_gateway_gap_fills", "Room seq gaps filled from the Store")
DUPLICATES_DROPPED = Counter("shardchat_gateway_duplicates_dropped", "Room events deduped by seq")
CLOSES = Counter("shardchat_gateway_closes", "Connections closed by the server", ["code"])
