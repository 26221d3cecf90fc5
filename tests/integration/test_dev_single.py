"""``shardchat dev`` end to end: one real process from a clean folder, driven over HTTP and
WebSocket the way a user's browser and the Python client drive it.

No engine is needed (embedded adapters); it sits in tests/integration because it starts a real
server process.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from shardchat.client import EdgeClient, GatewayClient
from tests.browser.dev_process import run_dev

pytestmark = pytest.mark.timeout(120)

ROOM_QUERY = "mutation($n: String!, $m: [ID!]) { createRoom(name: $n, memberIds: $m) { id name } }"
SEND = (
    "mutation($r: ID!, $c: String!, $n: String!) "
    "{ sendMessage(roomId: $r, content: $c, nonce: $n) { id seq content authorId } }"
)
HISTORY = "query($r: ID!) { messages(roomId: $r) { items { content seq } hasMore } }"


async def test_dev_serves_web_graphql_and_gateway_then_stops_on_sigint(tmp_path: Path) -> None:
    with run_dev(tmp_path) as dev:
        async with httpx.AsyncClient(base_url=dev.edge_url, timeout=10) as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
            page = await http.get("/")
            assert page.status_code == 200 and "<title>shardchat</title>" in page.text
            assert (await http.get("/app.js")).status_code == 200
            assert "shardchat" in (await http.get("/metrics")).text

        async with EdgeClient(dev.edge_url) as alice, EdgeClient(dev.edge_url) as bob:
            a = await alice.register("alice", "correct horse battery")
            b = await bob.register("bob", "battery staple horse")
            await bob.login("bob", "battery staple horse")  # login works as well as register
            created = await alice.graphql(ROOM_QUERY, {"n": "lobby", "m": [b.user["id"]]})
            room = created["createRoom"]["id"]
            sent = await alice.graphql(SEND, {"r": room, "c": "hello over graphql", "n": "n-1"})
            assert sent["sendMessage"]["content"] == "hello over graphql"
            page1 = await bob.graphql(HISTORY, {"r": room})
            assert [m["content"] for m in page1["messages"]["items"]] == ["hello over graphql"]

            url, gateway_id = await alice.gateway(key=room)
            assert url.startswith("ws://127.0.0.1:") and gateway_id
            ga = await GatewayClient.connect(url, alice.access_token)
            gb = await GatewayClient.connect(url, bob.access_token)
            try:
                head = int(sent["sendMessage"]["seq"])  # deliver what comes after it
                await ga.subscribe({int(room): head})
                await gb.subscribe({int(room): head})
                await ga.send(int(room), "hi bob", "n-2")
                got = await gb.next_event("MESSAGE_CREATE")
                assert got.d["content"] == "hi bob" and got.d["author_id"] == a.user["id"]
                await gb.send(int(room), "hi alice", "n-3")
                mine = await ga.next_event("MESSAGE_CREATE")
                assert mine.d["content"] == "hi bob"  # her own message comes first, in seq order
                back = await ga.next_event("MESSAGE_CREATE")
                assert back.d["content"] == "hi alice" and back.d["seq"] == got.d["seq"] + 1
                # a GraphQL send reaches the gateway sessions too (outbox -> event log -> gateway)
                await bob.graphql(SEND, {"r": room, "c": "via edge", "n": "n-4"})
                assert (await ga.next_event("MESSAGE_CREATE")).d["content"] == "via edge"
            finally:
                await ga.close()
                await gb.close()

        started = time.monotonic()
        code, took = dev.interrupt()
        assert code == 0, dev.output()
        assert took < 8, f"took {took:.1f}s to stop"
        assert time.monotonic() - started < 10
    assert (tmp_path / "data" / "shardchat.sqlite3").is_file()
    assert "Traceback" not in dev.output(), dev.output()
