"""shardchat.client against the real edge (ASGI) and a real gateway server."""

from __future__ import annotations

from pathlib import Path

from gateway.server import serve_gateway
from shardchat.client import EdgeClient, GatewayClient, ShardchatError
from shardchat.config import Settings
from tests.unit.test_graphql_api import make_edge


async def test_edge_client_and_gateway_resume(tmp_path: Path) -> None:
    async with make_edge(tmp_path) as edge:
        settings = Settings(host="127.0.0.1", gateway_port=0, heartbeat_interval_ms=5000)
        gw = await serve_gateway(settings, edge.auth, edge.chat, edge.log, edge.registry)
        edge.placement.record = edge.placement.record.__class__(gateway_id="gw", url=gw.url)
        try:
            client = EdgeClient("http://edge", http=edge.http)
            session = await client.register("pyclient", "correct horse battery")
            old_refresh = session.refresh_token
            await client.refresh()
            assert client.session is not None and client.session.refresh_token != old_refresh
            room = (await client.graphql('mutation { createRoom(name: "py") { id } }'))[
                "createRoom"
            ]["id"]
            try:
                await client.graphql("{ nope }")
            except ShardchatError as exc:
                assert exc.code == "BAD_USER_INPUT"
            url, gid = await client.gateway("k")
            assert url == gw.url and gid == "gw"

            async def discover() -> str:
                return (await client.gateway())[0]

            gc = await GatewayClient.connect(url, client.access_token, discover=discover)
            try:
                await gc.subscribe({int(room): 0})
                first = await gc.send(int(room), "one", "nonce-1")
                ev = await gc.next_event("MESSAGE_CREATE")
                assert ev.d["id"] == first["id"] and ev.d["content"] == "one"
                await gc.drop(4000)  # resumable close: reconnect + RESUME
                second = await gc.send(int(room), "two", "nonce-2")
                again = await gc.send(int(room), "two", "nonce-2")  # idempotent retry
                assert again["id"] == second["id"]
                ev2 = await gc.next_event("MESSAGE_CREATE")
                assert ev2.d["content"] == "two" and ev2.d["seq"] == ev.d["seq"] + 1
                assert gc.reconnects >= 1
            finally:
                await gc.close()
        finally:
            await gw.close()
