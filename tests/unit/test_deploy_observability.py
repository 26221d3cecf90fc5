"""Prometheus config, Grafana provisioning and dashboards, and the metrics contract METRICS.md."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
METRICS_MD = GRAFANA / "METRICS.md"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"

METRIC_ROW = re.compile(r"^\| `(shardchat_[a-z0-9_]+)` \| (gauge|counter|histogram) \|", re.M)
METRIC_USE = re.compile(r"\bshardchat_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# The contract the brief fixed; METRICS.md must keep all of them with these types.
REQUIRED = {
    "shardchat_gateway_connections": "gauge",
    "shardchat_gateway_sessions": "gauge",
    "shardchat_gateway_subscriptions": "gauge",
    "shardchat_gateway_frames_in_total": "counter",
    "shardchat_gateway_frames_out_total": "counter",
    "shardchat_gateway_bytes_out_total": "counter",
    "shardchat_gateway_fanout_batch_size": "histogram",
    "shardchat_gateway_delivery_latency_seconds": "histogram",
    "shardchat_gateway_slow_consumer_cuts_total": "counter",
    "shardchat_gateway_assigned_partitions": "gauge",
    "shardchat_gateway_records_consumed_total": "counter",
    "shardchat_gateway_records_unrouted_total": "counter",
    "shardchat_gateway_partition_lag": "gauge",
    "shardchat_chat_sends_total": "counter",
    "shardchat_chat_send_latency_seconds": "histogram",
    "shardchat_outbox_published_total": "counter",
    "shardchat_outbox_pending": "gauge",
    "shardchat_edge_requests_total": "counter",
    "shardchat_edge_request_latency_seconds": "histogram",
    "shardchat_router_placements_total": "counter",
    "shardchat_router_live_gateways": "gauge",
}


def contract() -> dict[str, str]:
    """METRICS.md as {name: type}."""
    return dict(METRIC_ROW.findall(METRICS_MD.read_text()))


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _exprs(board: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for panel in board["panels"]:
        out.extend(t["expr"] for t in panel.get("targets", []))
        for inner in panel.get("panels", []):
            out.extend(t["expr"] for t in inner.get("targets", []))
    for var in board.get("templating", {}).get("list", []):
        query = var.get("query")
        out.append(query["query"] if isinstance(query, dict) else str(query or ""))
    return out


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_dashboards", GRAFANA / "generate_dashboards.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_metrics_contract_is_complete() -> None:
    names = contract()
    for name, kind in REQUIRED.items():
        assert names.get(name) == kind, name
    for name, kind in names.items():
        assert (kind == "counter") == name.endswith("_total"), name


def test_dashboard_files() -> None:
    boards = _dashboards()
    assert set(boards) == {"gateways.json", "kafka.json", "write-path.json", "edge.json"}
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", ["gateways.json", "kafka.json", "write-path.json", "edge.json"])
def test_dashboard_is_valid_grafana_json(name: str) -> None:
    board = json.loads((DASHBOARDS / name).read_text())
    for key in ("uid", "title", "panels", "schemaVersion", "time"):
        assert key in board, key
    assert isinstance(board["schemaVersion"], int)
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in board["panels"]:
        assert panel["type"] in ("row", "timeseries", "stat", "gauge", "table", "heatmap")
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "prometheus"
            assert panel["targets"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(set(refs)) == len(refs)
            for target in panel["targets"]:
                expr = target["expr"]
                assert expr.count("(") == expr.count(")"), expr
                assert expr.count("{") == expr.count("}"), expr


def test_every_dashboard_metric_is_in_the_contract() -> None:
    names = contract()
    for file, board in _dashboards().items():
        for expr in _exprs(board):
            for used in METRIC_USE.findall(expr):
                if used in names:
                    assert names[used] != "histogram", f"{file}: {used} needs _bucket/_sum/_count"
                    continue
                base = next((used[: -len(s)] for s in HISTOGRAM_SUFFIXES if used.endswith(s)), "")
                assert names.get(base) == "histogram", f"{file}: {used} is not in METRICS.md"


def test_dashboards_cover_the_brief() -> None:
    used = {
        file: {m for e in _exprs(board) for m in METRIC_USE.findall(e)}
        for file, board in _dashboards().items()
    }
    assert {
        "shardchat_gateway_connections",
        "shardchat_gateway_sessions",
        "shardchat_gateway_frames_out_total",
        "shardchat_gateway_bytes_out_total",
        "shardchat_gateway_fanout_batch_size_bucket",
        "shardchat_gateway_delivery_latency_seconds_bucket",
        "shardchat_gateway_slow_consumer_cuts_total",
        "shardchat_gateway_assigned_partitions",
        "shardchat_gateway_records_unrouted_total",
        "shardchat_gateway_records_consumed_total",
    } <= used["gateways.json"]
    assert "shardchat_gateway_partition_lag" in used["kafka.json"]
    assert {
        "shardchat_chat_sends_total",
        "shardchat_chat_send_latency_seconds_bucket",
        "shardchat_outbox_pending",
        "shardchat_outbox_published_total",
    } <= used["write-path.json"]
    assert {
        "shardchat_edge_requests_total",
        "shardchat_edge_request_latency_seconds_bucket",
    } <= used["edge.json"]


def test_committed_dashboards_match_generator() -> None:
    rendered = _load_generator().render()
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text() == text, (
            f"{name} is stale: run python deploy/grafana/generate_dashboards.py"
        )


def test_prometheus_config() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert len(jobs) == len(config["scrape_configs"])
    ports = {"shardchat-edge": ("edge", 8080), "shardchat-gateway": ("gateway", 8081),
             "shardchat-router": ("router", 8082)}  # fmt: skip
    for job, (host, port) in ports.items():
        sd = jobs[job]["dns_sd_configs"][0]
        assert sd["names"] == [host] and sd["port"] == port and sd["type"] == "A"
        assert jobs[job].get("metrics_path", "/metrics") == "/metrics"
    assert re.fullmatch(r"\d+[smh]", config["global"]["scrape_interval"])


def test_grafana_provisioning() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "shardchat.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
