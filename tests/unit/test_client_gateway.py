"""shardchat.client against the real edge (ASGI) and a real gateway server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

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


class _NoSessionWrites:
    """A Registry view for a "crashed" gateway: session writes vanish, the rest passes."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def save_session_if(self, *_args: object) -> bool:
        return True

    async def save_sessions_if(self, items: list[Any], _ttl_s: float) -> list[bool]:
        return [True] * len(items)

    async def delete_session_if(self, *_args: object) -> bool:
        return True


@pytest.mark.parametrize("resume_rooms", [True, False], ids=["rooms", "no-rooms"])
async def test_resume_after_a_crash_sends_room_positions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resume_rooms: bool
) -> None:
    """After a gateway crash the client RESUMEs elsewhere listing its room positions, so the
    gateway replays nothing it already has; without them (v1 RESUME) the replay repeats the
    events since the crashed gateway's last save and only the client's dedupe hides them."""
    async with make_edge(tmp_path) as edge:
        settings = Settings(host="127.0.0.1", gateway_port=0, heartbeat_interval_ms=5000)
        gw1 = await serve_gateway(settings, edge.auth, edge.chat, edge.log, edge.registry)
        gw2 = await serve_gateway(settings, edge.auth, edge.chat, edge.log, edge.registry)
        resumes: list[dict[str, Any]] = []
        try:
            client = EdgeClient("http://edge", http=edge.http)
            session = await client.register("crashy", "correct horse battery")
            uid = int(session.user["id"])
            room = int(
                (await client.graphql('mutation { createRoom(name: "c") { id } }'))["createRoom"][
                    "id"
                ]
            )

            async def discover() -> str:
                return gw2.url

            gc = await GatewayClient.connect(
                gw1.url, client.access_token, discover=discover, resume_rooms=resume_rooms
            )
            send_frame = gc._send_frame

            async def spy(frame: dict[str, Any], force: bool = False) -> None:
                if frame["op"] == 6:
                    resumes.append(frame["d"])
                await send_frame(frame, force)

            monkeypatch.setattr(gc, "_send_frame", spy)
            try:
                await gc.subscribe({room: 1})  # saved before the REPLY
                # gw1 "crashes": nothing it does reaches the Registry any more
                monkeypatch.setattr(gw1, "registry", _NoSessionWrites(edge.registry))
                for i in range(5):
                    await edge.chat.send_message(uid, room, f"m{i}", f"n{i}")
                seqs = [(await gc.next_event("MESSAGE_CREATE")).d["seq"] for _ in range(5)]
                assert seqs == [2, 3, 4, 5, 6]
                await gc.drop(4000)
                resumed = await gc.next_event("RESUMED")
                assert resumes and resumes[0]["seq"] > 0
                if resume_rooms:
                    assert resumes[0]["rooms"] == {str(room): 6}
                    assert resumed.d == {"replayed": 0}
                else:
                    assert "rooms" not in resumes[0]
                    assert resumed.d == {"replayed": 5}  # duplicates, dropped by the client
                await edge.chat.send_message(uid, room, "live", "live")
                live = await gc.next_event("MESSAGE_CREATE")
                assert live.d["seq"] == 7 and live.d["content"] == "live"
            finally:
                await gc.close()
        finally:
            await gw1.close()
            await gw2.close()


async def test_edge_client_read_state_and_search(tmp_path: Path) -> None:
    """Two gateway sessions of one user: marking a room read from the edge reaches both as
    READ_STATE; unread and mention counts, mute and user search through EdgeClient."""
    async with make_edge(tmp_path) as edge:
        settings = Settings(host="127.0.0.1", gateway_port=0, heartbeat_interval_ms=5000)
        gw = await serve_gateway(settings, edge.auth, edge.chat, edge.log, edge.registry)
        try:
            alice, bob = (
                EdgeClient("http://edge", http=edge.http),
                EdgeClient("http://edge", http=edge.http),
            )
            await alice.register("reader_alice", "correct horse battery")
            bob_user = (await bob.register("reader_bob", "correct horse battery")).user
            assert [u["username"] for u in await alice.search_users("READER_")] == [
                "reader_alice",
                "reader_bob",
            ]
            made = await alice.graphql(
                'mutation($m: [ID!]) { createRoom(name: "r", memberIds: $m) { id } }',
                {"m": [bob_user["id"]]},
            )
            room = int(made["createRoom"]["id"])
            tabs = [await GatewayClient.connect(gw.url, bob.access_token) for _ in range(2)]
            try:
                for tab in tabs:
                    await tab.subscribe({room: None})
                while not await edge.registry.gateways_for_room(room):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)  # the room map is written in the background
                send = "mutation($r: ID!, $c: String!, $n: String!) { sendMessage(roomId: $r,"
                send += " content: $c, nonce: $n) { seq } }"
                for i, text in enumerate(["hello", "@reader_bob look"]):
                    await alice.graphql(send, {"r": str(room), "c": text, "n": f"n{i}"})
                (listed,) = await bob.rooms()
                assert (listed["unreadCount"], listed["mentionCount"]) == (2, 1)
                state = await bob.mark_read(room, listed["lastSeq"])
                assert (state["unreadCount"], state["mentionCount"]) == (0, 0)
                for tab in tabs:
                    pushed = await tab.next_event("READ_STATE")
                    assert pushed.d["room_id"] == str(room)
                    assert pushed.d["last_read_seq"] == listed["lastSeq"]
                assert (await bob.set_room_muted(room, True))["muted"] is True
                assert (await tabs[0].next_event("READ_STATE")).d["muted"] is True
            finally:
                for tab in tabs:
                    await tab.close()
        finally:
            await gw.close()
