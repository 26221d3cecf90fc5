"""Every metric a Grafana dashboard queries is really exported by a running service.

The real commands (``shardchat migrate|router|gateway|edge``) run as subprocesses on the local
engines (a fresh PostgreSQL database, a fresh Kafka topic, Redis), each on a free port (port 0:
the service prints where it listens). After a little traffic (register, create a room, send over
GraphQL and over the gateway, ask the router for a gateway) each service's ``/metrics`` is
scraped, and every ``shardchat_*`` name found in ``deploy/grafana/dashboards/*.json`` PromQL
must appear as a sample of some service. Histograms are queried as ``_bucket``/``_sum``/
``_count`` and counters as ``_total``: exactly the sample names of the exposition format, so
names are compared as they are.

Subprocesses rather than one process: all services of one process share prometheus_client's
registry, which would hide a metric that only the "wrong" service defines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shardchat.client import EdgeClient, GatewayClient, ShardchatError
from tests.conftest import S3Target
from tests.files_fixtures import has_gps, jpeg_with_gps

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
METRICS_MD = ROOT / "deploy" / "grafana" / "METRICS.md"
METRIC_ROW = re.compile(r"^\| `(shardchat_[a-z0-9_]+)` \| (gauge|counter|histogram) \|", re.M)
#: METRICS.md section title -> the services that must export its names themselves.
SECTION_SERVICES = {
    "Gateway": ("gateway",),
    "Write path": ("edge", "gateway"),
    "Files": ("edge", "gateway"),
    "Edge": ("edge",),
    "Router": ("router",),
}
METRIC_NAME = re.compile(r"\bshardchat_[a-z0-9_]+")
LISTENING = re.compile(r"listening on (\S+)")
PARTITIONS = 8
START_TIMEOUT_S = 60.0


def dashboard_metrics() -> dict[str, set[str]]:
    """Metric name -> the dashboards whose PromQL (any ``expr``) uses it."""
    used: dict[str, set[str]] = {}

    def walk(node: object, board: str) -> None:
        if isinstance(node, dict):
            expr = node.get("expr")
            if isinstance(expr, str):
                for name in METRIC_NAME.findall(expr):
                    used.setdefault(name, set()).add(board)
            for value in node.values():
                walk(value, board)
        elif isinstance(node, list):
            for value in node:
                walk(value, board)

    for path in sorted(DASHBOARDS.glob("*.json")):
        walk(json.loads(path.read_text()), path.name)
    return used


def contract_by_service() -> dict[str, set[str]]:
    """Service -> the METRICS.md names (as declared: counters without ``_total``) it must export."""
    out: dict[str, set[str]] = {}
    for section in re.split(r"^## ", METRICS_MD.read_text(), flags=re.M)[1:]:
        title = section.split("(", 1)[0].split("\n", 1)[0].strip()
        services = SECTION_SERVICES.get(title)
        assert services is not None, f"METRICS.md section {title!r} names no known service"
        for name, kind in METRIC_ROW.findall(section):
            family = name.removesuffix("_total") if kind == "counter" else name
            for service in services:
                out.setdefault(service, set()).add(family)
    return out


@dataclass
class Exposition:
    samples: set[str]  # series names, as PromQL sees them (x_total, x_bucket, ...)
    families: set[str]  # declared metrics (# TYPE), labelled ones with no series yet included


def parse_exposition(text: str) -> Exposition:
    families = list(text_string_to_metric_families(text))
    return Exposition(
        samples={sample.name for family in families for sample in family.samples},
        families={family.name for family in families},
    )


@dataclass
class Service:
    name: str
    proc: asyncio.subprocess.Process
    url: str  # what it printed: http://host:port/ or ws://host:port/ws
    log: Path

    @property
    def metrics_url(self) -> str:
        base = re.sub(r"^ws", "http", self.url).split("/", 3)[:3]
        return "/".join(base) + "/metrics"


@dataclass
class Cluster:
    env: dict[str, str]
    tmp: Path
    services: dict[str, Service] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def _cmd(self, command: str) -> list[str]:
        return [sys.executable, "-m", "shardchat.cli", command]

    async def run(self, command: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self._cmd(command),
            env=self.env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), START_TIMEOUT_S)
        assert proc.returncode == 0, f"shardchat {command} failed:\n{out.decode()}"

    async def start(self, command: str) -> Service:
        log_path = self.tmp / f"{command}.log"
        log_file = log_path.open("wb")
        self._logs.append(log_file)
        proc = await asyncio.create_subprocess_exec(
            *self._cmd(command),
            env=self.env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
        assert proc.stdout is not None
        try:
            # The service prints one "... listening on URL" line once it serves.
            while True:
                line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
                if not line:
                    raise AssertionError(
                        f"shardchat {command} exited ({await proc.wait()}) before listening:\n"
                        + log_path.read_text()
                    )
                found = LISTENING.search(line.decode())
                if found:
                    break
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        service = Service(command, proc, found.group(1), log_path)
        self.services[command] = service
        return service

    async def stop(self) -> None:
        # Reverse start order: the edge first, then the gateway (it drains), the router last.
        for service in reversed(list(self.services.values())):
            proc = service.proc
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        for log_file in self._logs:
            log_file.close()


@pytest.fixture
async def cluster(
    tmp_path: Path,
    fresh_pg_dsn: str,
    fresh_topic: str,
    kafka_bootstrap: str,
    redis_url: str,
    s3: S3Target,
    fresh_bucket: str,
) -> AsyncIterator[Cluster]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDCHAT_")}
    env.update(
        {
            "SHARDCHAT_STORE": "postgres",
            "SHARDCHAT_POSTGRES_DSN": fresh_pg_dsn,
            "SHARDCHAT_POSTGRES_POOL_SIZE": "4",
            "SHARDCHAT_EVENT_LOG": "kafka",
            "SHARDCHAT_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "SHARDCHAT_KAFKA_TOPIC": fresh_topic,
            "SHARDCHAT_KAFKA_PARTITIONS": str(PARTITIONS),
            "SHARDCHAT_REGISTRY": "redis",
            "SHARDCHAT_REDIS_URL": redis_url,
            "SHARDCHAT_OBJECT_STORE": "s3",
            "SHARDCHAT_S3_ENDPOINT": s3.endpoint,
            "SHARDCHAT_S3_ACCESS_KEY": s3.access_key,
            "SHARDCHAT_S3_SECRET_KEY": s3.secret_key,
            "SHARDCHAT_S3_BUCKET": fresh_bucket,
            "SHARDCHAT_HOST": "127.0.0.1",
            "SHARDCHAT_EDGE_PORT": "0",
            "SHARDCHAT_GATEWAY_PORT": "0",
            "SHARDCHAT_ROUTER_PORT": "0",
            # One signing key for all: the gateway verifies the edge's access tokens.
            "SHARDCHAT_JWT_KEYS": json.dumps({"k1": secrets.token_urlsafe(48)}),
            # Sweeps often enough that the relay sets shardchat_outbox_pending during the test.
            "SHARDCHAT_OUTBOX_RELAY_AFTER_MS": "200",
            "SHARDCHAT_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    c = Cluster(env, tmp_path)
    await c.run("migrate")
    try:
        for command in ("router", "gateway", "edge"):
            await c.start(command)
        yield c
    finally:
        await c.stop()


@contextlib.asynccontextmanager
async def traffic(c: Cluster) -> AsyncIterator[None]:
    """Register, create a room, send over GraphQL and over the gateway (with an image), download
    it and its thumbnail, place via the router; then yield with the gateway session still in its
    room, so the room's partition is still assigned (its lag series exists) while scraping: it
    goes 5 s after the session (linger), which a loaded box can take to reach the scrape."""
    edge_url = c.services["edge"].url.rstrip("/")
    gateway_url = c.services["gateway"].url
    async with EdgeClient(edge_url) as edge:
        session = await edge.register(f"m{secrets.token_hex(4)}", "correct horse battery")
        created = await edge.graphql(
            'mutation { createRoom(name: "metrics") { id } }',
        )
        room_id = int(created["createRoom"]["id"])
        gw = await GatewayClient.connect(gateway_url, edge.access_token, reconnect=False)
        try:
            await gw.subscribe([room_id])
            await edge.graphql(
                "mutation($r: ID!, $c: String!, $n: String!) "
                "{ sendMessage(roomId: $r, content: $c, nonce: $n) { id } }",
                {"r": str(room_id), "c": "over graphql", "n": "g-1"},
            )
            await gw.next_event("MESSAGE_CREATE", wait_s=20)
            await gw.send(room_id, "over the gateway")
            await gw.next_event("MESSAGE_CREATE", wait_s=20)
            image = await edge.upload(room_id, jpeg_with_gps(), "p.jpg", "image/jpeg")
            await gw.send(room_id, "a picture", attachment_ids=[image])
            pictured = await gw.next_event("MESSAGE_CREATE", wait_s=20)
            assert [a["id"] for a in pictured.d["attachments"]] == [image]
            assert not has_gps(await edge.download(image))
            # the gateway verified it, so its own file worker makes the thumbnail
            for _ in range(100):
                try:
                    await edge.download(image, thumbnail=True)
                    break
                except ShardchatError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("no thumbnail within 10 s")
            router_url = c.services["router"].url.rstrip("/")
            async with httpx.AsyncClient(timeout=10) as http:
                resp = await http.get(f"{router_url}/gateway")
                assert resp.status_code in (200, 503), resp.text
            # The relay sweeps every outbox_relay_after_ms / 2: let it run at least once.
            await asyncio.sleep(0.5)
            yield
        finally:
            await gw.close()
        assert session.user["username"].startswith("m")


async def scrape(c: Cluster) -> dict[str, Exposition]:
    out: dict[str, Exposition] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for name, service in c.services.items():
            resp = await http.get(service.metrics_url)
            assert resp.status_code == 200, f"{name} {service.metrics_url}: {resp.status_code}"
            out[name] = parse_exposition(resp.text)
    return out


def test_dashboards_query_metrics() -> None:
    # Guards the parser below: if the dashboards moved or changed format, say so plainly.
    used = dashboard_metrics()
    assert "shardchat_chat_sends_total" in used
    assert "shardchat_chat_send_latency_seconds_bucket" in used


async def test_every_dashboard_metric_is_exported(cluster: Cluster) -> None:
    async with traffic(cluster):
        exported = await scrape(cluster)

    # 1. Dashboards: every queried name is a live series of some service.
    union = set().union(*(e.samples for e in exported.values()))
    missing = {
        name: sorted(boards)
        for name, boards in sorted(dashboard_metrics().items())
        if name not in union
    }
    ours = {
        k: sorted(n for n in e.samples if n.startswith("shardchat_")) for k, e in exported.items()
    }
    assert not missing, (
        "metrics queried by dashboards but exported by no service: "
        + json.dumps(missing, indent=1)
        + "\nexported: "
        + json.dumps(ours, indent=1)
    )

    # 2. METRICS.md: each service declares the names of its sections (the write path in both
    # the edge and the gateway, which both run chat_core). Declared is enough here: a labelled
    # metric (closes by code) has no series until its first label value occurs.
    for service, names in sorted(contract_by_service().items()):
        undeclared = sorted(names - exported[service].families)
        assert not undeclared, f"{service} does not export {undeclared} (METRICS.md)"
