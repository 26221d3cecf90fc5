"""graphql-transport-ws against a real uvicorn server, spoken by hand with a websockets client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.unit.test_graphql_api import ROOM, SEND, Edge, make_edge

SUB = """subscription($r: ID!, $a: Int) { roomEvents(roomId: $r, afterSeq: $a) {
  __typename
  ... on Message { id seq content nonce author { username } }
  ... on MessageUpdated { id seq content editedAt }
  ... on MessageDeleted { id seq }
  ... on ReactionAdded { messageId userId emoji seq }
  ... on MemberJoined { userId seq }
  ... on MemberLeft { userId seq removedBy }
} }"""


class Server:
    def __init__(self, edge: Edge, url: str) -> None:
        self.edge = edge
        self.url = url


@asynccontextmanager
async def serve_edge(edge: Edge) -> AsyncIterator[str]:
    """The edge app on a real uvicorn server; yields its graphql-transport-ws URL."""
    config = uvicorn.Config(edge.app, host="127.0.0.1", port=0, log_level="warning")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:  # noqa: ASYNC110  (uvicorn offers no started event)
        await asyncio.sleep(0.01)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/graphql"
    finally:
        srv.should_exit = True
        await task


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with make_edge(tmp_path, ws_init_timeout_s=0.5) as edge, serve_edge(edge) as url:
        yield Server(edge, url)


async def open_ws(url: str, **kw: Any) -> ClientConnection:
    return await connect(url, subprotocols=["graphql-transport-ws"], **kw)  # type: ignore[list-item]


async def send(ws: ClientConnection, msg: dict[str, Any]) -> None:
    await ws.send(json.dumps(msg))


async def recv(ws: ClientConnection) -> dict[str, Any]:
    msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
    return msg


async def closed_with(ws: ClientConnection) -> int | None:
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    return ws.close_code


async def init(ws: ClientConnection, token: str) -> None:
    await send(ws, {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
    assert await recv(ws) == {"type": "connection_ack"}


async def test_subscription_history_then_live(server: Server) -> None:
    edge = server.edge
    alice, ta, _ = await edge.user("alice")
    bob, tb, _ = await edge.user("bob")
    room = (await edge.gql(ROOM, {"n": "live", "m": [bob]}, ta))["data"]["createRoom"]
    before = (await edge.gql(SEND, {"r": room["id"], "c": "old", "n": "o1"}, ta))["data"]
    old_seq = before["sendMessage"]["seq"]
    async with await open_ws(server.url) as ws:
        await init(ws, tb)
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}
        await send(
            ws,
            {
                "type": "subscribe",
                "id": "1",
                "payload": {"query": SUB, "variables": {"r": room["id"], "a": old_seq - 1}},
            },
        )
        first = await recv(ws)
        assert first["type"] == "next" and first["id"] == "1"
        ev = first["payload"]["data"]["roomEvents"]
        assert ev["__typename"] == "Message" and ev["content"] == "old"
        assert ev["author"]["username"] == "alice"
        msg = (await edge.gql(SEND, {"r": room["id"], "c": "new", "n": "o2"}, ta))["data"]
        mid = msg["sendMessage"]["id"]
        live = (await recv(ws))["payload"]["data"]["roomEvents"]
        assert live["content"] == "new" and live["seq"] == ev["seq"] + 1
        edit = 'mutation($id: ID!) { editMessage(id: $id, content: "newer") { id } }'
        await edge.gql(edit, {"id": mid}, ta)
        upd = (await recv(ws))["payload"]["data"]["roomEvents"]
        assert upd["__typename"] == "MessageUpdated" and upd["content"] == "newer"
        add = 'mutation($m: ID!) { addReaction(messageId: $m, emoji: "🎉") }'
        await edge.gql(add, {"m": mid}, tb)
        react = (await recv(ws))["payload"]["data"]["roomEvents"]
        assert react == {
            "__typename": "ReactionAdded",
            "messageId": mid,
            "userId": bob,
            "emoji": "🎉",
            "seq": upd["seq"] + 1,
        }
        await edge.gql("mutation($id: ID!) { deleteMessage(id: $id) }", {"id": mid}, ta)
        gone = (await recv(ws))["payload"]["data"]["roomEvents"]
        assert gone["__typename"] == "MessageDeleted" and gone["id"] == mid
        # queries work over the socket too: one next, then complete
        await send(
            ws, {"type": "subscribe", "id": "q", "payload": {"query": "{ me { username } }"}}
        )
        got = [await recv(ws), await recv(ws)]
        assert got[0]["payload"] == {"data": {"me": {"username": "bob"}}}
        assert got[1] == {"type": "complete", "id": "q"}
        await send(ws, {"type": "complete", "id": "1"})
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}
    assert alice


async def test_subscription_errors(server: Server) -> None:
    edge = server.edge
    _, ta, _ = await edge.user("owner")
    _, tc, _ = await edge.user("stranger")
    room = (await edge.gql(ROOM, {"n": "private"}, ta))["data"]["createRoom"]
    async with await open_ws(server.url) as ws:
        await init(ws, tc)
        await send(
            ws,
            {
                "type": "subscribe",
                "id": "a",
                "payload": {"query": SUB, "variables": {"r": room["id"]}},
            },
        )
        err = await recv(ws)
        assert err["type"] == "error" and err["id"] == "a"
        assert err["payload"][0]["extensions"]["code"] == "NOT_FOUND"  # as an unknown room
        await send(ws, {"type": "subscribe", "id": "b", "payload": {"query": "{ nope }"}})
        err = await recv(ws)
        assert (
            err["type"] == "error" and err["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        )


async def test_close_codes(server: Server) -> None:
    edge = server.edge
    _, token, _ = await edge.user("closer")
    room = (await edge.gql(ROOM, {"n": "c"}, token))["data"]["createRoom"]
    sub = {"query": SUB, "variables": {"r": room["id"]}}
    async with await open_ws(server.url) as ws:  # subscribe before ack
        await send(ws, {"type": "subscribe", "id": "1", "payload": sub})
        assert await closed_with(ws) == 4401
    async with await open_ws(server.url) as ws:  # bad token
        await send(ws, {"type": "connection_init", "payload": {"authorization": "Bearer bad"}})
        assert await closed_with(ws) == 4403
    async with await open_ws(server.url) as ws:  # no init in time
        assert await closed_with(ws) == 4408
    async with await open_ws(server.url) as ws:  # two inits
        await init(ws, token)
        await send(ws, {"type": "connection_init"})
        assert await closed_with(ws) == 4429
    async with await open_ws(server.url) as ws:  # duplicate subscriber id
        await init(ws, token)
        await send(ws, {"type": "subscribe", "id": "1", "payload": sub})
        await send(ws, {"type": "subscribe", "id": "1", "payload": sub})
        assert await closed_with(ws) == 4409
    async with await open_ws(server.url) as ws:  # garbage
        await ws.send("not json")
        assert await closed_with(ws) == 4400
    async with await open_ws(server.url) as ws:  # unknown type
        await send(ws, {"type": "nope"})
        assert await closed_with(ws) == 4400
    header = {"Authorization": f"Bearer {token}"}
    async with await open_ws(server.url, additional_headers=header) as ws:  # token in header
        await send(ws, {"type": "connection_init"})
        assert await recv(ws) == {"type": "connection_ack"}


async def test_transport_rules_of_graphql_ws(server: Server) -> None:
    """What the graphql-ws library's server does, to the letter (its close codes and echoes)."""
    for offered in (None, ["graphql-ws"]):  # none, or only the legacy subscriptions-transport-ws
        async with await connect(server.url, subprotocols=offered) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol is None
            assert await closed_with(ws) == 4406
            assert ws.close_reason == "Subprotocol not acceptable"
    async with await open_ws(server.url) as ws:
        await send(ws, {"type": "ping", "payload": {"n": 1}})
        assert await recv(ws) == {"type": "pong", "payload": {"n": 1}}
        await send(ws, {"type": "ping", "payload": {}})
        assert await recv(ws) == {"type": "pong", "payload": {}}
        await send(ws, {"type": "pong", "payload": {"unsolicited": True}})  # needs no answer
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}
    _, token, _ = await server.edge.user("rules")
    bad_messages: list[dict[str, Any]] = [
        {"type": "ping", "payload": "x"},
        {"type": "subscribe", "id": "1", "payload": {"variables": {}}},
        {"type": "subscribe", "id": "1", "payload": {"query": "{ me { id } }", "extensions": 1}},
        {"type": "subscribe", "id": "1", "payload": {"query": "{ me { id } }", "operationName": 2}},
        {"type": "subscribe", "id": "", "payload": {"query": "{ me { id } }"}},
        {"type": "next", "id": "1", "payload": {}},  # a server-only message
        {"type": "complete"},
    ]
    for bad in bad_messages:
        async with await open_ws(server.url) as ws:
            await init(ws, token)
            await send(ws, bad)
            assert await closed_with(ws) == 4400, bad


async def test_connection_params_carry_the_token(server: Server) -> None:
    _, token, _ = await server.edge.user("params")
    for params in (
        {"authorization": f"Bearer {token}"},
        {"Authorization": token},
        {"authToken": token},
        {"authToken": f"Bearer {token}"},
        {"token": token},
    ):
        async with await open_ws(server.url) as ws:
            await send(ws, {"type": "connection_init", "payload": params})
            assert await recv(ws) == {"type": "connection_ack"}, params
    for params in ({"token": "Basic abc"}, {"authToken": ""}, {"other": token}):
        async with await open_ws(server.url) as ws:
            await send(ws, {"type": "connection_init", "payload": params})
            assert await closed_with(ws) == 4403, params
