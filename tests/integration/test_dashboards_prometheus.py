"""Every Grafana dashboard query returns data from a real Prometheus scraping a dev cluster.

``shardchat dev --cluster --gateways 2`` runs on the local engines (a fresh PostgreSQL database,
a new Kafka topic, a Redis database of its own); the Prometheus of deploy/local/engines.sh (the
Debian package, scraping every second) is told the cluster's /metrics endpoints through a
file_sd targets file. A short load goes through every path the dashboards watch: clients on
both gateways, sends over the gateway and over GraphQL, history pages, typing, placements,
a refused operation. Then each panel's PromQL (``$instance`` as "All") is run as an instant
query: every one must return at least one series, and every template variable must have values.

The Prometheus instance holds test data only: the test deletes all series first, so nothing an
earlier run left can answer for this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shardchat.client import EdgeClient, GatewayClient, ShardchatError
from tests.browser.dev_process import dev_cluster_env, run_dev, wait_http_ok
from tests.conftest import MakeTopic, redis_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
DEFAULT_PROMETHEUS = "http://127.0.0.1:58390"
PARTITIONS = 4
REDIS_DB = 12  # a database of its own (test_dev_cluster uses 13)
GATEWAYS = 2
LOAD_S = 12.0


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL) of every target of every panel."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$instance", ".*")
                out.append((path.stem, panel["title"], expr))
    return out


def variable_queries() -> list[tuple[str, str]]:
    """(dashboard, metric) of each ``label_values(metric, label)`` template variable."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for var in json.loads(path.read_text())["templating"]["list"]:
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["definition"])
            assert m, var["definition"]
            out.append((path.stem, m.group(1)))
    return out


@dataclass
class Prometheus:
    url: str
    targets_dir: Path

    async def query(self, http: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
        resp = await http.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = resp.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@pytest.fixture
def prometheus() -> Prometheus:
    url = os.environ.get("SHARDCHAT_PROMETHEUS_URL", DEFAULT_PROMETHEUS)
    targets = os.environ.get("SHARDCHAT_PROMETHEUS_TARGETS")
    where = (
        Path(targets) if targets else ROOT / "deploy" / "local" / "state" / "prometheus" / "targets"
    )
    try:
        ready = httpx.get(f"{url}/-/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        ready = False
    if not ready or not where.is_dir():
        pytest.fail(
            f"Prometheus is not up at {url} (targets {where}): "
            "bash deploy/local/engines.sh up prometheus",
            pytrace=False,
        )
    # Only this test writes here: start from an empty TSDB so every answer is this run's.
    wipe = httpx.post(
        f"{url}/api/v1/admin/tsdb/delete_series", params={"match[]": '{__name__=~".+"}'}
    )
    assert wipe.status_code == 204, wipe.text
    return Prometheus(url, where)


@pytest.fixture
def redis_db_url(redis_url: str) -> Iterator[str]:
    with redis_database(redis_url, REDIS_DB) as url:
        yield url


@pytest.fixture
async def scraped(
    prometheus: Prometheus,
    tmp_path: Path,
    fresh_pg_dsn: str,
    kafka_bootstrap: str,
    make_topic: MakeTopic,
    redis_db_url: str,
) -> AsyncIterator[dict[str, str]]:
    """The running cluster, listed in Prometheus' targets: service -> base URL."""
    env = dev_cluster_env(
        GATEWAYS,
        pg_dsn=fresh_pg_dsn,
        kafka_bootstrap=kafka_bootstrap,
        topic=await make_topic(PARTITIONS, prefix="dash"),
        partitions=PARTITIONS,
        redis_url=redis_db_url,
    )
    # The traffic below sends a mutation per user several times a second: lift the per-user
    # mutation limit (its own tests are in test_security_edge.py), or the load is refused.
    env |= {"SHARDCHAT_GRAPHQL_MUTATION_BURST": "1000", "SHARDCHAT_GRAPHQL_MUTATION_PER_S": "1000"}
    base = int(env["SHARDCHAT_GATEWAY_PORT"])
    urls = {
        "edge": f"http://127.0.0.1:{env['SHARDCHAT_EDGE_PORT']}",
        "router": f"http://127.0.0.1:{env['SHARDCHAT_ROUTER_PORT']}",
    } | {f"gateway-{i}": f"http://127.0.0.1:{base + i}" for i in range(GATEWAYS)}
    targets = [
        {"targets": [url.removeprefix("http://")], "labels": {"service": name}}
        for name, url in urls.items()
    ]
    listed = prometheus.targets_dir / f"test-{secrets.token_hex(4)}.json"
    with run_dev(tmp_path, ["--cluster", "--gateways", str(GATEWAYS)], env, ready_within_s=120):
        async with httpx.AsyncClient(timeout=5) as http:
            for url in urls.values():
                await wait_http_ok(f"{url}/readyz", 60)
            partial = listed.with_suffix(".tmp")
            partial.write_text(json.dumps(targets))
            partial.rename(listed)  # whole, or not at all: Prometheus watches the folder
            try:
                await _until_scraped(http, prometheus, len(urls))
                yield urls
            finally:
                listed.unlink()


async def _until_scraped(
    http: httpx.AsyncClient, prometheus: Prometheus, count: int, within_s: float = 30
) -> None:
    for _ in range(int(within_s / 0.5)):
        up = await prometheus.query(http, 'up{job="shardchat"} == 1')
        if len(up) >= count:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"Prometheus did not scrape {count} targets within {within_s}s")


@dataclass
class Load:
    users: list[EdgeClient]
    clients: list[GatewayClient]
    room: int


@contextlib.asynccontextmanager
async def _connected(urls: dict[str, str]) -> AsyncIterator[Load]:
    """Four users in one room, each with a gateway session (alternating gateways)."""
    gateways = [urls[f"gateway-{i}"].replace("http", "ws") + "/ws" for i in range(GATEWAYS)]
    users = [EdgeClient(urls["edge"]) for _ in range(4)]
    clients: list[GatewayClient] = []
    try:
        ids = []
        for i, user in enumerate(users):
            session = await user.register(f"dash{i}_{secrets.token_hex(3)}", "correct horse b")
            ids.append(session.user["id"])
        made = await users[0].graphql(
            'mutation($m: [ID!]) { createRoom(name: "load", memberIds: $m) { id } }',
            {"m": ids[1:]},
        )
        room = int(made["createRoom"]["id"])
        async with httpx.AsyncClient(timeout=5) as http:
            for i, user in enumerate(users):
                await user.gateway(f"key-{i}")  # placement through the edge
                await http.get(f"{urls['router']}/gateway", params={"key": f"r{i}"})
                gc = await GatewayClient.connect(gateways[i % GATEWAYS], user.access_token)
                await gc.subscribe({room: None})
                clients.append(gc)
        yield Load(users, clients, room)
    finally:
        for gc in clients:
            await gc.close()
        for user in users:
            await user.aclose()


async def _traffic(load: Load, seconds: float) -> int:
    """Sends over the gateway and over GraphQL, typing, history pages, a refused query;
    returns the acknowledged sends."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    n = 0
    while loop.time() < deadline:
        n += 1
        author = n % len(load.users)
        if n % 2:
            await load.clients[author].send(load.room, f"over the gateway {n}", f"g{n}")
        else:
            await load.users[author].graphql(
                "mutation($r: ID!, $c: String!, $n: String!)"
                " { sendMessage(roomId: $r, content: $c, nonce: $n) { id } }",
                {"r": str(load.room), "c": f"over GraphQL {n}", "n": f"q{n}"},
            )
        if n % 5 == 0:
            await load.clients[author].typing(load.room)
            await load.users[author].graphql(
                "query($r: ID!) { messages(roomId: $r, limit: 20) { items { id } } }",
                {"r": str(load.room)},
            )
        if n % 25 == 0:
            with pytest.raises(ShardchatError):  # an error outcome for the edge panels
                await load.users[author].graphql('{ room(id: "not-an-id") { id } }')
        await asyncio.sleep(0.05)
    return n


async def test_every_dashboard_query_returns_data(
    prometheus: Prometheus, scraped: dict[str, str]
) -> None:
    empty = []
    async with _connected(scraped) as load, httpx.AsyncClient(timeout=10) as http:
        assert await _traffic(load, LOAD_S) > 20
        await asyncio.sleep(3)  # a few more scrapes after the last send
        for board, title, expr in panel_queries():
            if not await prometheus.query(http, expr):
                empty.append(f"{board} / {title}: {expr}")
        for board, metric in variable_queries():
            if not await prometheus.query(http, metric):
                empty.append(f"{board} variable over {metric}")
        (connected,) = await prometheus.query(http, "sum(shardchat_gateway_connections)")
        assert connected["value"][1] == str(len(load.clients))
    assert not empty, "queries without data:\n" + "\n".join(empty)
