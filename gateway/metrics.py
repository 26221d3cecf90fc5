"""Prometheus metrics of the gateway: names, types, labels and buckets EXACTLY as
deploy/grafana/METRICS.md lists them (the dashboards read these names; a test scrapes /metrics
and checks every gateway name of that table is exported).

Counters are declared without ``_total``: prometheus_client appends it on export.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

CONNECTIONS = Gauge("shardchat_gateway_connections", "Open WebSocket connections")
SESSIONS = Gauge("shardchat_gateway_sessions", "Identified sessions held (live connection)")
SUBSCRIPTIONS = Gauge("shardchat_gateway_subscriptions", "(session, room) subscriptions held")
FRAMES_IN = Counter("shardchat_gateway_frames_in", "Client frames received")
FRAMES_OUT = Counter("shardchat_gateway_frames_out", "Frames written to clients")
BYTES_OUT = Counter("shardchat_gateway_bytes_out", "Payload bytes written to client sockets")
SLOW_CONSUMER_CUTS = Counter(
    "shardchat_gateway_slow_consumer_cuts", "Connections closed with 4010 (outbound over limit)"
)
ASSIGNED_PARTITIONS = Gauge(
    "shardchat_gateway_assigned_partitions", "Event-log partitions assign()ed to this gateway"
)
RECORDS_CONSUMED = Counter("shardchat_gateway_records_consumed", "Event-log records read")
RECORDS_UNROUTED = Counter(
    "shardchat_gateway_records_unrouted",
    "Records read that no local session wanted (waste ratio = unrouted / consumed)",
)
GAP_FILLS = Counter("shardchat_gateway_gap_fills", "Room seq gaps filled from the Store")
CATCHUP_FRAMES = Counter(
    "shardchat_gateway_catchup_frames",
    "Frames sent by paced catch-ups (RESUME replay, SUBSCRIBE after_seq, resynced rooms)",
)
LOG_SKIPS = Counter(
    "shardchat_gateway_log_skips",
    "Partitions whose records the log reader skipped, read from the Store instead",
)
DUPLICATES_DROPPED = Counter(
    "shardchat_gateway_duplicates_dropped", "Room events dropped as duplicates by seq"
)
CLOSES = Counter("shardchat_gateway_closes", "Connections closed by the server", ["code"])
PARTITION_LAG = Gauge(
    "shardchat_gateway_partition_lag",
    "High watermark minus this gateway's position, per assigned partition",
    ["partition"],
)

FRAMES_PER_WRITE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class FramesPerWrite(Collector):
    """``shardchat_gateway_frames_per_write``, observed once per connection write.

    Why a custom collector: ``Histogram.observe`` takes a lock and costs about a microsecond;
    the flusher observes once per connection per tick, so it only bumps a list slot here and
    the histogram is built when Prometheus scrapes.
    """

    name = "shardchat_gateway_frames_per_write"

    def __init__(self) -> None:
        self.counts = [0] * (len(FRAMES_PER_WRITE_BUCKETS) + 1)  # last slot: +Inf
        self.total = 0
        top = FRAMES_PER_WRITE_BUCKETS[-1]
        # frames -> bucket slot, precomputed: the flusher pays one index per write.
        self._slot = [bisect_left(FRAMES_PER_WRITE_BUCKETS, n) for n in range(top + 1)]
        self._overflow = len(FRAMES_PER_WRITE_BUCKETS)

    def observe(self, frames: int) -> None:
        slot = self._slot[frames] if frames < len(self._slot) else self._overflow
        self.counts[slot] += 1
        self.total += frames

    def collect(self) -> Iterable[Metric]:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(
            [*map(str, FRAMES_PER_WRITE_BUCKETS), "+Inf"], self.counts, strict=True
        ):
            cumulative += count
            buckets.append((bound, cumulative))
        family = HistogramMetricFamily(
            self.name, "Frames coalesced into one connection write", unit=""
        )
        family.add_metric([], buckets, float(self.total))
        yield family


FRAMES_PER_WRITE = FramesPerWrite()
REGISTRY.register(FRAMES_PER_WRITE)


class HotHistogram(Collector):
    """A histogram for the fan-out hot path: ``observe`` is one bisect and two adds.

    Why not ``Histogram``: its ``observe`` costs about 0.6 us (a lock per bucket and sum), and
    fan-out observes twice per room event, which was ~12% of the CPU of a 10-member room's
    fan-out. ``observe(value, count)`` also records ``count`` equal values at once. The
    exported family (name, ``le`` labels, ``_bucket``/``_sum``/``_count``) is the same as
    ``prometheus_client.Histogram``'s; it is only ever touched from the event-loop thread.
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in buckets)
        self._labels = [*map(floatToGoString, self.bounds), "+Inf"]
        self.counts = [0] * (len(self.bounds) + 1)  # last slot: +Inf
        self.sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        # bisect_left: the first bound >= value, i.e. the ``le`` bucket holding it.
        self.counts[bisect_left(self.bounds, value)] += count
        self.sum += value * count

    def collect(self) -> Iterable[Metric]:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(self._labels, self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, self.sum)
        yield family


FANOUT_BATCH_SIZE = HotHistogram(
    "shardchat_gateway_fanout_batch_size",
    "Connections one room event is written to on this gateway (encoded once for all)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
)
REGISTRY.register(FANOUT_BATCH_SIZE)
DELIVERY_LATENCY = HotHistogram(
    "shardchat_gateway_delivery_latency_seconds",
    "Room event creation (commit time in the record) to socket write",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
REGISTRY.register(DELIVERY_LATENCY)


def closed(code: int) -> None:
    """Count a server-side close (``code`` is from ``protocol.close_codes.CloseCode``)."""
    CLOSES.labels(str(code)).inc()
