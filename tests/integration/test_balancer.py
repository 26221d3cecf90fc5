"""``shardchat dev --cluster`` behind the local HAProxy (deploy/local/engines.sh): per-client
limits keyed on the real client address, Origin checks and RESUME, all through one public port.

Clients bind distinct loopback sources (127.0.0.2, 127.0.0.3): HAProxy appends that address to
X-Forwarded-For and the services trust only HAProxy (127.0.0.1).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shardchat.client import EdgeClient
from tests.browser.dev_process import dev_cluster_env, free_ports, run_dev, wait_http_ok
from tests.conftest import MakeTopic
from tests.gateway_client import Client
from tests.integration.test_dev_cluster import redis_db_url  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ENGINES = Path(__file__).resolve().parents[2] / "deploy" / "local" / "engines.sh"
ORIGIN = "https://chat.example"


@pytest.fixture
def balancer_port() -> Iterator[int]:
    port = free_ports(1)[0]
    yield port
    env = {**os.environ, "SHARDCHAT_HAPROXY_PORT": str(port)}
    subprocess.run(["bash", str(ENGINES), "down", "haproxy"], env=env, check=False)


async def test_limits_origin_and_resume_through_haproxy(
    tmp_path: Path,
    fresh_pg_dsn: str,
    make_topic: MakeTopic,
    redis_db_url: str,  # noqa: F811
    kafka_bootstrap: str,
    balancer_port: int,
) -> None:
    public = f"127.0.0.1:{balancer_port}"
    env = dev_cluster_env(
        2,
        pg_dsn=fresh_pg_dsn,
        kafka_bootstrap=kafka_bootstrap,
        topic=await make_topic(4, prefix="balancer"),
        partitions=4,
        redis_url=redis_db_url,
    )
    gw_base = int(env["SHARDCHAT_GATEWAY_PORT"])
    env |= {
        "SHARDCHAT_ALLOWED_ORIGINS": f'["{ORIGIN}"]',
        "SHARDCHAT_HAPROXY_PORT": str(balancer_port),
        "SHARDCHAT_IDENTIFY_PER_WINDOW": "2",
        "SHARDCHAT_IDENTIFY_WINDOW_S": "60",
    }
    # dev --cluster --balancer: HAProxy in front, placement on its /ws, its X-Forwarded-For trusted
    args = ["--cluster", "--gateways", "2", "--balancer"]
    with run_dev(tmp_path, args, env, ready_within_s=120):
        for i in range(2):
            await wait_http_ok(f"http://127.0.0.1:{gw_base + i}/readyz")
        await wait_http_ok(f"http://{public}/readyz")

        # Origin on HTTP POST, through the balancer
        async with httpx.AsyncClient(base_url=f"http://{public}") as http:
            body = {"query": "{ __typename }"}
            evil = await http.post("/graphql", json=body, headers={"Origin": "https://evil.x"})
            assert evil.status_code == 403
            ok = await http.post("/graphql", json=body, headers={"Origin": ORIGIN})
            assert ok.status_code == 200
        async with EdgeClient(f"http://{public}") as alice:
            await alice.register("alice", "correct horse battery")
            token = await alice.access_token()

        ws = f"ws://{public}/ws"
        # Origin on the gateway WebSocket: absent or foreign is 4503
        c = await Client.open(ws)
        assert await c.close_code() == 4503

        def from_(ip: str, forged: str | None = None) -> dict[str, object]:
            headers = {"X-Forwarded-For": forged} if forged else {}
            return {"origin": ORIGIN, "local_addr": (ip, 0), "additional_headers": headers}

        # per-client IDENTIFY limit: 2 per client address, whatever X-Forwarded-For it forges
        first = await Client.open(ws, **from_("127.0.0.2"))  # type: ignore[arg-type]
        ready = await first.identify(token)
        second = await Client.open(ws, **from_("127.0.0.2", "10.9.9.9"))  # type: ignore[arg-type]
        await second.identify(token)
        third = await Client.open(ws, **from_("127.0.0.2", "10.9.9.8"))  # type: ignore[arg-type]
        await third.recv()
        await third.send(2, {"token": token})
        assert await third.close_code() == 4008
        other = await Client.open(ws, **from_("127.0.0.3"))  # type: ignore[arg-type]
        await other.identify(token)  # another client behind the same balancer: its own bucket

        # RESUME through the balancer (whichever gateway it lands on)
        await first.ws.close(4000)
        back = await Client.open(ws, **from_("127.0.0.4"))  # type: ignore[arg-type]
        frames = await back.resume(token, ready["d"]["session_id"], ready["s"])
        assert frames[-1]["t"] == "RESUMED", frames
        for client in (second, other, back):
            await client.ws.close()
