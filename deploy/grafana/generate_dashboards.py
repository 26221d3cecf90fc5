"""Generate deploy/grafana/dashboards/*.json (Grafana dashboard JSON, schemaVersion 39).

Edit the panels here, then run ``python deploy/grafana/generate_dashboards.py``; a unit test checks
that the committed JSON equals this script's output and that every metric used is in METRICS.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "prometheus"}
OUT_DIR = Path(__file__).resolve().parent / "dashboards"

Json = dict[str, Any]


def p_hist(q: float, metric: str, by: str = "", flt: str = "") -> str:
    """The quantile of a histogram over 1m, summed over instances (optionally kept by `by`)."""
    labels = "le" if not by else f"le, {by}"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{flt}[1m])))"


class Board:
    """Lays panels out on Grafana's 24-column grid, left to right, top to bottom."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self.uid = uid
        self.title = title
        self.description = description
        self.panels: list[Json] = []
        self.templating: list[Json] = []
        self._x = 0
        self._y = 0
        self._row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "id": len(self.panels) + 1,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y},
                "panels": [],
            }
        )
        self._y += 1

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_h
            self._x = 0
            self._row_h = 0

    def _place(self, w: int, h: int) -> Json:
        if self._x + w > 24:
            self._newline()
        pos = {"h": h, "w": w, "x": self._x, "y": self._y}
        self._x += w
        self._row_h = max(self._row_h, h)
        return pos

    def panel(
        self,
        title: str,
        targets: list[tuple[str, str]],
        *,
        unit: str = "short",
        kind: str = "timeseries",
        w: int = 12,
        h: int = 8,
        description: str = "",
        stack: bool = False,
    ) -> None:
        refs = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        panel: Json = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DATASOURCE,
            "gridPos": self._place(w, h),
            "targets": [
                {
                    "refId": refs[i],
                    "datasource": DATASOURCE,
                    "expr": expr,
                    "legendFormat": legend,
                    "range": True,
                }
                for i, (expr, legend) in enumerate(targets)
            ],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        }
        if kind == "timeseries":
            panel["fieldConfig"]["defaults"]["custom"] = {
                "drawStyle": "line",
                "lineWidth": 1,
                "fillOpacity": 10,
                "showPoints": "never",
                "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            }
            panel["options"] = {
                "legend": {
                    "displayMode": "table",
                    "placement": "bottom",
                    "calcs": ["lastNotNull", "max"],
                },
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
        elif kind == "stat":
            panel["options"] = {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value",
                "graphMode": "area",
                "textMode": "auto",
            }
        self.panels.append(panel)

    def variable(self, name: str, query: str, label: str) -> None:
        self.templating.append(
            {
                "name": name,
                "label": label,
                "type": "query",
                "datasource": DATASOURCE,
                "query": {"query": query, "refId": "StandardVariableQuery"},
                "definition": query,
                "refresh": 2,
                "multi": True,
                "includeAll": True,
                "allValue": ".*",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "sort": 1,
            }
        )

    def to_json(self) -> Json:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["shardchat"],
            "timezone": "browser",
            "editable": False,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "refresh": "10s",
            "time": {"from": "now-30m", "to": "now"},
            "timepicker": {},
            "annotations": {"list": []},
            "links": [],
            "templating": {"list": self.templating},
            "panels": self.panels,
        }


def gateways() -> Board:
    b = Board(
        "shardchat-gateways", "shardchat / gateways", "WebSocket gateways: sessions and fan-out"
    )
    b.variable("instance", "label_values(shardchat_gateway_connections, instance)", "gateway")
    g = '{instance=~"$instance"}'
    b.row("Sessions")
    b.panel(
        "Connections (all gateways)",
        [("sum(shardchat_gateway_connections)", "connections")],
        kind="stat",
        w=6,
        h=4,
    )
    b.panel(
        "Sessions (all gateways)",
        [("sum(shardchat_gateway_sessions)", "sessions")],
        kind="stat",
        w=6,
        h=4,
    )
    b.panel(
        "Live gateways (router)",
        [("max(shardchat_router_live_gateways)", "gateways")],
        kind="stat",
        w=6,
        h=4,
    )
    b.panel(
        "Placements /s (router)",
        [("sum(rate(shardchat_router_placements_total[1m]))", "placements/s")],
        kind="stat",
        w=6,
        h=4,
        unit="reqps",
    )
    b.panel(
        "Connections per gateway",
        [(f"sum by (instance) (shardchat_gateway_connections{g})", "{{instance}}")],
    )
    b.panel(
        "Sessions and subscriptions per gateway",
        [
            (f"sum by (instance) (shardchat_gateway_sessions{g})", "sessions {{instance}}"),
            (
                f"sum by (instance) (shardchat_gateway_subscriptions{g})",
                "subscriptions {{instance}}",
            ),
        ],
    )
    b.row("Fan-out")
    b.panel(
        "Frames out /s",
        [
            (
                f"sum by (instance) (rate(shardchat_gateway_frames_out_total{g}[1m]))",
                "out {{instance}}",
            ),
            (
                f"sum by (instance) (rate(shardchat_gateway_frames_in_total{g}[1m]))",
                "in {{instance}}",
            ),
        ],
        unit="ops",
    )
    b.panel(
        "Bytes out /s",
        [(f"sum by (instance) (rate(shardchat_gateway_bytes_out_total{g}[1m]))", "{{instance}}")],
        unit="Bps",
    )
    b.panel(
        "Fan-out batch size (connections per room event)",
        [
            (p_hist(0.5, "shardchat_gateway_fanout_batch_size", flt=g), "p50"),
            (p_hist(0.99, "shardchat_gateway_fanout_batch_size", flt=g), "p99"),
            (
                f"sum(rate(shardchat_gateway_fanout_batch_size_sum{g}[1m]))"
                f" / sum(rate(shardchat_gateway_fanout_batch_size_count{g}[1m]))",
                "mean",
            ),
        ],
        description="Connections one room event is written to here; the frame is encoded once "
        "for all of them.",
    )
    b.panel(
        "Delivery latency (commit to socket write)",
        [
            (p_hist(0.5, "shardchat_gateway_delivery_latency_seconds", flt=g), "p50"),
            (p_hist(0.99, "shardchat_gateway_delivery_latency_seconds", flt=g), "p99"),
        ],
        unit="s",
        description="Targets: p50 <= 5 ms, p99 <= 25 ms end to end.",
    )
    b.row("Health")
    b.panel(
        "Slow-consumer cuts /s (close 4010)",
        [
            (
                f"sum by (instance) (rate(shardchat_gateway_slow_consumer_cuts_total{g}[5m]))",
                "{{instance}}",
            )
        ],
        unit="ops",
        w=8,
    )
    b.panel(
        "Assigned Kafka partitions",
        [(f"sum by (instance) (shardchat_gateway_assigned_partitions{g})", "{{instance}}")],
        w=8,
    )
    b.panel(
        "Waste ratio (records read that no local session wanted)",
        [
            (
                f"sum by (instance) (rate(shardchat_gateway_records_unrouted_total{g}[5m]))"
                " / clamp_min(sum by (instance)"
                f" (rate(shardchat_gateway_records_consumed_total{g}[5m])), 1e-9)",
                "{{instance}}",
            )
        ],
        unit="percentunit",
        w=8,
        description="unrouted / consumed. High means partitions carry rooms this gateway "
        "doesn't serve: "
        "placement affinity or partition count needs a look.",
    )
    b.panel(
        "Recovery: catch-up frames /s and log skips",
        [
            (
                f"sum by (instance) (rate(shardchat_gateway_catchup_frames_total{g}[1m]))",
                "catch-up {{instance}}",
            ),
            (
                f"sum by (instance) (increase(shardchat_gateway_log_skips_total{g}[5m]))",
                "log skips {{instance}}",
            ),
        ],
        w=24,
        description="Frames sent by paced catch-ups (RESUME replays, SUBSCRIBE after_seq, rooms "
        "resynced after a burst); log skips are partitions whose skipped records were read "
        "from the Store (offset resets, records lost by Kafka): any is worth a look.",
    )
    return b


def kafka() -> Board:
    b = Board("shardchat-kafka", "shardchat / kafka", "Room-event log as the gateways see it")
    b.row("Lag")
    b.panel(
        "Total lag (worst gateway per partition)",
        [("sum(max by (partition) (shardchat_gateway_partition_lag))", "records")],
        kind="stat",
        w=6,
        h=4,
    )
    b.panel(
        "Max partition lag",
        [("max(shardchat_gateway_partition_lag)", "records")],
        kind="stat",
        w=6,
        h=4,
    )
    b.panel(
        "Records consumed /s",
        [("sum(rate(shardchat_gateway_records_consumed_total[1m]))", "records/s")],
        kind="stat",
        w=6,
        h=4,
        unit="ops",
    )
    b.panel(
        "Events published /s",
        [("sum(rate(shardchat_outbox_published_total[1m]))", "events/s")],
        kind="stat",
        w=6,
        h=4,
        unit="ops",
    )
    b.panel(
        "Lag per partition (worst gateway)",
        [("max by (partition) (shardchat_gateway_partition_lag)", "p{{partition}}")],
        w=24,
        h=10,
        description="Exported by each gateway for the partitions it has assigned; "
        "a partition no gateway "
        "serves has no series.",
    )
    b.panel(
        "Lag per gateway and partition",
        [("shardchat_gateway_partition_lag", "{{instance}} p{{partition}}")],
        w=24,
        h=10,
    )
    b.row("Throughput")
    b.panel(
        "Records consumed and unrouted /s per gateway",
        [
            (
                "sum by (instance) (rate(shardchat_gateway_records_consumed_total[1m]))",
                "consumed {{instance}}",
            ),
            (
                "sum by (instance) (rate(shardchat_gateway_records_unrouted_total[1m]))",
                "unrouted {{instance}}",
            ),
        ],
        unit="ops",
    )
    b.panel(
        "Assigned partitions per gateway",
        [("sum by (instance) (shardchat_gateway_assigned_partitions)", "{{instance}}")],
    )
    return b


def write_path() -> Board:
    b = Board(
        "shardchat-write-path", "shardchat / write path", "Send, commit, ack, outbox, publish"
    )
    b.row("Sends")
    b.panel(
        "Acks /s",
        [('sum(rate(shardchat_chat_sends_total{outcome="ok"}[1m]))', "acks/s")],
        kind="stat",
        w=6,
        h=4,
        unit="ops",
    )
    b.panel(
        "Ack latency p99",
        [(p_hist(0.99, "shardchat_chat_send_latency_seconds"), "p99")],
        kind="stat",
        w=6,
        h=4,
        unit="s",
    )
    b.panel("Outbox pending", [("sum(shardchat_outbox_pending)", "rows")], kind="stat", w=6, h=4)
    b.panel(
        "Relay share of published",
        [
            (
                'sum(rate(shardchat_outbox_published_total{path="relay"}[5m]))'
                " / clamp_min(sum(rate(shardchat_outbox_published_total[5m])), 1e-9)",
                "relay share",
            )
        ],
        kind="stat",
        w=6,
        h=4,
        unit="percentunit",
    )
    b.panel(
        "Sends /s by outcome",
        [("sum by (outcome) (rate(shardchat_chat_sends_total[1m]))", "{{outcome}}")],
        unit="ops",
        stack=True,
    )
    b.panel(
        "Ack latency (send to ack, commit included)",
        [
            (p_hist(0.5, "shardchat_chat_send_latency_seconds"), "p50"),
            (p_hist(0.99, "shardchat_chat_send_latency_seconds"), "p99"),
        ],
        unit="s",
    )
    b.row("Outbox")
    b.panel(
        "Outbox pending per process",
        [("sum by (instance) (shardchat_outbox_pending)", "{{instance}}")],
    )
    b.panel(
        "Published /s by path",
        [("sum by (path) (rate(shardchat_outbox_published_total[1m]))", "{{path}}")],
        unit="ops",
        stack=True,
        description="fast = handed to the producer right after commit; "
        "relay = swept by the backstop. "
        "A steady relay rate means the fast path is failing.",
    )
    b.row("History cache")
    b.panel(
        "History cache hit ratio",
        [
            (
                'sum by (kind) (rate(shardchat_history_cache_requests_total{outcome="hit"}[5m]))'
                " / sum by (kind) (rate(shardchat_history_cache_requests_total[5m]))",
                "{{kind}}",
            )
        ],
        unit="percentunit",
        description="Share of newest-page (messages) and catch-up (events) reads served by the "
        "cache instead of the Store.",
    )
    b.panel(
        "History cache lookups /s",
        [
            (
                "sum by (kind, outcome) (rate(shardchat_history_cache_requests_total[1m]))",
                "{{kind}} {{outcome}}",
            ),
            ("sum(rate(shardchat_history_cache_dropped_total[1m]))", "dropped"),
        ],
        unit="ops",
    )
    return b


def edge() -> Board:
    b = Board("shardchat-edge", "shardchat / edge", "GraphQL edge: requests and latency; files")
    b.row("Requests")
    b.panel(
        "Requests /s",
        [("sum(rate(shardchat_edge_requests_total[1m]))", "req/s")],
        kind="stat",
        w=8,
        h=4,
        unit="reqps",
    )
    b.panel(
        "Error ratio",
        [
            (
                'sum(rate(shardchat_edge_requests_total{outcome!="ok"}[5m]))'
                " / clamp_min(sum(rate(shardchat_edge_requests_total[5m])), 1e-9)",
                "errors",
            )
        ],
        kind="stat",
        w=8,
        h=4,
        unit="percentunit",
    )
    b.panel(
        "Latency p99",
        [(p_hist(0.99, "shardchat_edge_request_latency_seconds"), "p99")],
        kind="stat",
        w=8,
        h=4,
        unit="s",
    )
    b.panel(
        "Requests /s by operation and outcome",
        [
            (
                "sum by (operation_type, outcome) (rate(shardchat_edge_requests_total[1m]))",
                "{{operation_type}} {{outcome}}",
            )
        ],
        unit="reqps",
        w=24,
        stack=True,
    )
    b.row("Latency")
    b.panel(
        "Latency p50 / p99",
        [
            (p_hist(0.5, "shardchat_edge_request_latency_seconds"), "p50"),
            (p_hist(0.99, "shardchat_edge_request_latency_seconds"), "p99"),
        ],
        unit="s",
    )
    b.panel(
        "Latency p99 by operation type",
        [
            (
                p_hist(0.99, "shardchat_edge_request_latency_seconds", by="operation_type"),
                "{{operation_type}}",
            )
        ],
        unit="s",
    )
    b.row("Files")
    b.panel(
        "Uploads /s by outcome",
        [
            ("sum(rate(shardchat_files_upload_urls_total[1m]))", "upload URLs"),
            ("sum by (outcome) (rate(shardchat_files_uploads_total[1m]))", "checked {{outcome}}"),
        ],
        unit="ops",
        w=8,
        description="Upload URLs handed out by createUpload, and the server's checks at the first "
        "send: ok, refused (size, checksum, type, image), missing, unavailable (store down).",
    )
    b.panel(
        "Bytes stored /s",
        [("sum(rate(shardchat_files_uploaded_bytes_total[1m]))", "verified uploads")],
        unit="Bps",
        w=8,
    )
    b.panel(
        "Upload failure ratio",
        [
            (
                'sum(rate(shardchat_files_uploads_total{outcome!="ok"}[5m]))'
                " / clamp_min(sum(rate(shardchat_files_uploads_total[5m])), 1e-9)",
                "failed",
            )
        ],
        kind="stat",
        w=8,
        unit="percentunit",
    )
    b.panel(
        "Downloads /s",
        [("sum by (kind) (rate(shardchat_files_downloads_total[1m]))", "{{kind}}")],
        unit="ops",
        w=8,
    )
    b.panel(
        "Thumbnail time p50 / p99",
        [
            (p_hist(0.5, "shardchat_files_thumbnail_seconds"), "p50"),
            (p_hist(0.99, "shardchat_files_thumbnail_seconds"), "p99"),
        ],
        unit="s",
        w=8,
    )
    b.panel(
        "Thumbnails and sweeps /s",
        [
            ("sum by (outcome) (rate(shardchat_files_thumbnails_total[1m]))", "thumb {{outcome}}"),
            ("sum by (reason) (rate(shardchat_files_swept_objects_total[5m]))", "swept {{reason}}"),
        ],
        unit="ops",
        w=8,
    )
    return b


BOARDS = {"gateways": gateways, "kafka": kafka, "write-path": write_path, "edge": edge}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {
        f"{name}.json": json.dumps(build().to_json(), indent=2, sort_keys=False) + "\n"
        for name, build in BOARDS.items()
    }


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT_DIR / name).write_text(text)
        print(f"wrote {OUT_DIR / name}")


if __name__ == "__main__":
    main()
