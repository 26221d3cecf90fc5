"""``shardchat dev --cluster --gateways 2`` on the real engines: one process per service under the
supervisor, two users on different gateways chatting through PostgreSQL and Kafka, and a
SIGKILLed gateway restarted by the supervisor.

Isolation: a fresh PostgreSQL database, a new Kafka topic and a Redis database of its own (flushed
before and after), all passed by environment like an operator would.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardchat.client import EdgeClient, GatewayClient
from tests.browser.dev_process import dev_cluster_env, run_dev, wait_http_ok
from tests.conftest import MakeTopic, redis_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PARTITIONS = 4
REDIS_DB = 13  # not used by the other tests (they use db 0 with key prefixes)
STARTED = re.compile(r"\[supervisor\] started (gateway-\d+) \(pid (\d+)\)")


@pytest.fixture
def redis_db_url(redis_url: str) -> Iterator[str]:
    with redis_database(redis_url, REDIS_DB) as url:
        yield url


def _pids(output: str, name: str) -> list[int]:
    return [int(pid) for child, pid in STARTED.findall(output) if child == name]


async def _until(client: GatewayClient, content: str, seen: list[str]) -> None:
    """Read MESSAGE_CREATE into ``seen`` until ``content`` arrives."""
    while not seen or seen[-1] != content:
        seen.append((await client.next_event("MESSAGE_CREATE", 30)).d["content"])


async def test_cluster_chat_across_gateways_and_restart(
    tmp_path: Path,
    fresh_pg_dsn: str,
    make_topic: MakeTopic,
    redis_db_url: str,
    kafka_bootstrap: str,
) -> None:
    topic = await make_topic(PARTITIONS, prefix="devcluster")
    env = dev_cluster_env(
        2,
        pg_dsn=fresh_pg_dsn,
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        partitions=PARTITIONS,
        redis_url=redis_db_url,
    )
    gw_base = int(env["SHARDCHAT_GATEWAY_PORT"])
    with run_dev(tmp_path, ["--cluster", "--gateways", "2"], env, ready_within_s=120) as dev:
        gw_urls = [f"ws://127.0.0.1:{gw_base + i}/ws" for i in range(2)]
        for i in range(2):
            await wait_http_ok(f"http://127.0.0.1:{gw_base + i}/readyz")
        async with EdgeClient(dev.edge_url) as alice, EdgeClient(dev.edge_url) as bob:
            await alice.register("alice", "correct horse battery")
            b = await bob.register("bob", "battery staple horse")
            q = 'mutation($m: [ID!]) { createRoom(name: "c", memberIds: $m) { id lastSeq } }'
            room_info = (await alice.graphql(q, {"m": [b.user["id"]]}))["createRoom"]
            room, head = int(room_info["id"]), int(room_info["lastSeq"])
            # one user per gateway: delivery must cross processes through Kafka
            ga = await GatewayClient.connect(gw_urls[0], alice.access_token)
            gb = await GatewayClient.connect(gw_urls[1], bob.access_token)
            try:
                assert ga.gateway_id != gb.gateway_id
                await ga.subscribe({room: head})
                await gb.subscribe({room: head})
                seen_a: list[str] = []
                seen_b: list[str] = []
                await ga.send(room, "from gateway 0", "n-1")
                await _until(gb, "from gateway 0", seen_b)
                await gb.send(room, "from gateway 1", "n-2")
                await _until(ga, "from gateway 1", seen_a)
                await _until(gb, "from gateway 1", seen_b)  # his own, echoed in seq order

                # SIGKILL gateway-1: the supervisor reports it and starts it again. Wait first
                # for the gateway's periodic session save (about once a second while the session
                # changes): a crash sooner loses the saved subscriptions (see the report).
                await asyncio.sleep(3)
                (old_pid,) = _pids(dev.output(), "gateway-1")
                os.kill(old_pid, signal.SIGKILL)
                dev.wait_for(f"gateway-1 (pid {old_pid}) exited with code -9", 20)
                crashed_at = dev.output().index(f"(pid {old_pid}) exited")
                dev.wait_for("started gateway-1 (pid", 20, after=crashed_at)
                new_pids = _pids(dev.output(), "gateway-1")
                assert len(new_pids) == 2 and new_pids[1] != old_pid
                await wait_http_ok(f"http://127.0.0.1:{gw_base + 1}/readyz")

                # bob's client resumes (on the restarted gateway) and misses nothing
                await ga.send(room, "after the crash", "n-3")
                await _until(gb, "after the crash", seen_b)
                await _until(ga, "after the crash", seen_a)
                expected = ["from gateway 0", "from gateway 1", "after the crash"]
                assert seen_b == expected and seen_a == expected  # in order, each once
            finally:
                await ga.close()
                await gb.close()
        code, _took = dev.interrupt(signal.SIGINT, within_s=60)
        assert code == 0, dev.output()
        assert "restarting" not in dev.output().split("stopping children")[-1]
