"""The GraphQL edge over HTTP against the real SQLite store and the real services."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from chat_core.outbox import OutboxPublisher
from chat_core.service import ChatService
from graphql_edge import EdgeSettings, create_app, query_hash
from graphql_edge.events import LogRoomEvents
from graphql_edge.media import GRAPHQL_RESPONSE
from shardchat.adapters.memory_log import MemoryEventLog
from shardchat.adapters.memory_registry import MemoryRegistry
from shardchat.adapters.sqlite_store import SqliteStore
from shardchat.config import Settings
from shardchat.ephemeral import ReadStateNotifier
from shardchat.migrate import migrate
from shardchat.registry import GatewayRecord
from user_core.service import AuthService


class OnePlacement:
    """The placement of a one-gateway cluster (router/ builds the real one)."""

    def __init__(self, url: str = "ws://127.0.0.1:8081/ws") -> None:
        self.record = GatewayRecord(gateway_id="gw-1", url=url)
        self.keys: list[str | None] = []

    async def choose(self, key: str | None) -> GatewayRecord:
        self.keys.append(key)
        return self.record


class CountingAuth(AuthService):
    """The real AuthService, counting user lookups (to prove batching)."""

    get_users_calls = 0
    get_user_calls = 0

    async def get_users(self, user_ids):  # type: ignore[no-untyped-def]
        self.get_users_calls += 1
        return await super().get_users(user_ids)

    async def get_user(self, user_id):  # type: ignore[no-untyped-def]
        self.get_user_calls += 1
        return await super().get_user(user_id)


@dataclass
class Edge:
    app: Any
    http: httpx.AsyncClient
    auth: CountingAuth
    chat: ChatService
    log: MemoryEventLog
    registry: MemoryRegistry
    placement: OnePlacement
    events: LogRoomEvents

    async def gql(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        token: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"query": query, "variables": variables or {}, **extra}
        resp = await self.http.post("/graphql", json=body, headers=headers)
        result: dict[str, Any] = resp.json()
        # executed (a data entry, even null): 200 for this legacy Accept: */* client; refused
        # before execution (no data entry): a 4xx
        if "data" in result:
            assert resp.status_code == 200, resp.text
        else:
            assert resp.status_code in (400, 403, 422, 429), resp.text
        return result

    async def user(self, name: str | None = None) -> tuple[str, str, str]:
        """Register a user; return (id, access token, refresh token)."""
        name = name or f"u{secrets.token_hex(4)}"
        r = await self.gql(
            "mutation($u: String!, $p: String!) { register(username: $u, password: $p) "
            "{ accessToken refreshToken expiresIn user { id username } } }",
            {"u": name, "p": "correct horse battery"},
        )
        p = r["data"]["register"]
        return p["user"]["id"], p["accessToken"], p["refreshToken"]


@asynccontextmanager
async def make_edge(tmp_path: Path, **overrides: Any) -> AsyncIterator[Edge]:
    """``overrides``: Settings fields (``access_token_ttl_s`` ...) or EdgeSettings fields."""
    names = {f.name for f in msgspec.structs.fields(Settings)}
    edge = {k: v for k, v in overrides.items() if k not in names}
    settings = Settings(
        sqlite_path=str(tmp_path / f"edge-{secrets.token_hex(4)}.sqlite3"),
        **{k: v for k, v in overrides.items() if k in names},
    )
    store = SqliteStore(settings.sqlite_path)
    await store.start()
    await migrate(store)
    log = MemoryEventLog(num_partitions=8)
    await log.start()
    publisher = OutboxPublisher(log, store)
    await publisher.start()
    registry = MemoryRegistry()
    await registry.start()
    auth = CountingAuth(store, registry, settings)
    chat = ChatService(
        store, settings, on_commit=publisher.submit, on_read=ReadStateNotifier(registry)
    )
    events = LogRoomEvents(chat, log, poll_ms=50)
    placement = OnePlacement()
    app = create_app(
        settings,
        auth,
        chat,
        placement,
        events=events,
        presence=registry,
        revocations=registry,
        edge=EdgeSettings(**edge),
    )
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as http:
            yield Edge(app, http, auth, chat, log, registry, placement, events)
    finally:
        await events.close()
        await chat.close()
        await publisher.close()
        await registry.close()
        await log.close()
        await store.close()


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    async with make_edge(tmp_path) as e:
        yield e


def code(result: dict[str, Any]) -> str:
    return str(result["errors"][0]["extensions"]["code"])


ROOM = (
    "mutation($n: String!, $m: [ID!]) { createRoom(name: $n, memberIds: $m) "
    "{ id name lastSeq members { id username status } } }"
)
SEND = (
    "mutation($r: ID!, $c: String!, $n: String!) { sendMessage(roomId: $r, content: $c, "
    "nonce: $n) { id roomId seq authorId content nonce createdAt editedAt deleted "
    "reactions { emoji count me } } }"
)


async def test_smoke(edge: Edge) -> None:
    uid, token, _ = await edge.user("alice")
    r = await edge.gql("{ me { id username status } }", token=token)
    assert r == {"data": {"me": {"id": uid, "username": "alice", "status": "offline"}}}


async def test_auth_flow(edge: Edge) -> None:
    await edge.user("bob")
    dup = await edge.gql(
        'mutation { register(username: "bob", password: "correct horse battery") { accessToken } }'
    )
    assert code(dup) == "BAD_USER_INPUT"
    bad = await edge.gql(
        'mutation { login(username: "bob", password: "nope nope nope") { accessToken } }'
    )
    assert code(bad) == "UNAUTHENTICATED"
    ok = await edge.gql(
        'mutation { login(username: "bob", password: "correct horse battery") '
        "{ accessToken refreshToken expiresIn user { username } } }"
    )
    tokens = ok["data"]["login"]
    assert tokens["expiresIn"] > 0 and tokens["user"]["username"] == "bob"
    refresh = (
        "mutation($r: String!) { refreshToken(refreshToken: $r) { accessToken refreshToken } }"
    )
    rotated = (await edge.gql(refresh, {"r": tokens["refreshToken"]}))["data"]["refreshToken"]
    assert rotated["refreshToken"] != tokens["refreshToken"]
    me = await edge.gql("{ me { username } }", token=rotated["accessToken"])
    assert me["data"]["me"]["username"] == "bob"
    # reusing the spent refresh token is refused (and revokes the family)
    assert code(await edge.gql(refresh, {"r": tokens["refreshToken"]})) == "UNAUTHENTICATED"
    logout = "mutation($r: String!) { logout(refreshToken: $r) }"
    assert (await edge.gql(logout, {"r": rotated["refreshToken"]}))["data"]["logout"] in (
        True,
        False,
    )


async def test_unauthenticated(edge: Edge) -> None:
    assert code(await edge.gql("{ me { id } }")) == "UNAUTHENTICATED"
    assert code(await edge.gql("{ rooms { id } }", token="garbage")) == "UNAUTHENTICATED"
    resp = await edge.http.post(
        "/graphql", json={"query": "{ me { id } }"}, headers={"Authorization": "Basic x"}
    )
    assert resp.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    # a stale token does not stop a login
    r = await edge.gql(
        'mutation { login(username: "x", password: "y") { accessToken } }', token="old"
    )
    assert code(r) in ("UNAUTHENTICATED", "BAD_USER_INPUT")


async def test_rooms_membership_and_errors(edge: Edge) -> None:
    alice, ta, _ = await edge.user("alice")
    bob, tb, _ = await edge.user("bob")
    carol, tc, _ = await edge.user("carol")
    room = (await edge.gql(ROOM, {"n": "general", "m": [bob]}, ta))["data"]["createRoom"]
    assert room["name"] == "general"
    assert {m["username"] for m in room["members"]} == {"alice", "bob"}
    rooms = (await edge.gql("{ rooms { id name lastSeq } }", token=tb))["data"]["rooms"]
    assert [r["id"] for r in rooms] == [room["id"]]
    assert (await edge.gql("{ rooms { id } }", token=tc))["data"]["rooms"] == []
    q = "query($id: ID!) { room(id: $id) { id name lastSeq members { username } } }"
    assert (await edge.gql(q, {"id": room["id"]}, ta))["data"]["room"]["id"] == room["id"]
    assert (await edge.gql(q, {"id": room["id"]}, tc))["data"]["room"] is None  # not in it
    assert (await edge.gql(q, {"id": "12345"}, ta))["data"]["room"] is None
    assert code(await edge.gql(q, {"id": "not-a-number"}, ta)) == "BAD_USER_INPUT"
    join = "mutation($r: ID!) { joinRoom(roomId: $r) { id members { username } } }"
    assert code(await edge.gql(join, {"r": room["id"]}, tc)) == "NOT_FOUND"  # private
    invite = "mutation($r: ID!, $u: [ID!]!) { inviteToRoom(roomId: $r, userIds: $u) }"
    assert (await edge.gql(invite, {"r": room["id"], "u": [carol]}, ta))["data"] == {
        "inviteToRoom": [carol]
    }
    pending = "{ invitations { roomId roomName inviter { username } createdAt } }"
    (inv,) = (await edge.gql(pending, token=tc))["data"]["invitations"]
    assert (inv["roomId"], inv["roomName"], inv["inviter"]["username"]) == (
        room["id"],
        "general",
        "alice",
    )
    joined = (await edge.gql(join, {"r": room["id"]}, tc))["data"]["joinRoom"]
    assert "carol" in {m["username"] for m in joined["members"]}
    assert code(await edge.gql(join, {"r": "999"}, tc)) == "NOT_FOUND"
    leave = "mutation($r: ID!) { leaveRoom(roomId: $r) }"
    assert (await edge.gql(leave, {"r": room["id"]}, tc))["data"]["leaveRoom"] is True
    send = await edge.gql(SEND, {"r": room["id"], "c": "hi", "n": "n1"}, tc)
    assert code(send) == "NOT_FOUND"
    user = "query($id: ID!) { user(id: $id) { id username status } }"
    assert (await edge.gql(user, {"id": carol}, ta))["data"]["user"]["username"] == "carol"
    assert (await edge.gql(user, {"id": "77"}, ta))["data"]["user"] is None
    assert alice != bob


async def test_messages_edit_delete_reactions(edge: Edge) -> None:
    alice, ta, _ = await edge.user("alice")
    bob, tb, _ = await edge.user("bob")
    room = (await edge.gql(ROOM, {"n": "r", "m": [bob]}, ta))["data"]["createRoom"]["id"]
    first = (await edge.gql(SEND, {"r": room, "c": "hello", "n": "n-1"}, ta))["data"]["sendMessage"]
    assert first["roomId"] == room and first["authorId"] == alice and first["nonce"] == "n-1"
    assert first["createdAt"].endswith("Z") and first["editedAt"] is None
    again = (await edge.gql(SEND, {"r": room, "c": "hello", "n": "n-1"}, ta))["data"]["sendMessage"]
    assert again["id"] == first["id"]  # idempotent by (author, nonce)
    edit = (
        "mutation($id: ID!, $c: String!) { editMessage(id: $id, content: $c) "
        "{ id content editedAt } }"
    )
    edited = (await edge.gql(edit, {"id": first["id"], "c": "hello!"}, ta))["data"]["editMessage"]
    assert edited["content"] == "hello!" and edited["editedAt"]
    assert code(await edge.gql(edit, {"id": first["id"], "c": "mine"}, tb)) == "FORBIDDEN"
    assert code(await edge.gql(edit, {"id": "424242", "c": "x"}, ta)) == "NOT_FOUND"
    add = "mutation($m: ID!, $e: String!) { addReaction(messageId: $m, emoji: $e) }"
    assert (await edge.gql(add, {"m": first["id"], "e": "👍"}, tb))["data"]["addReaction"] is True
    assert (await edge.gql(add, {"m": first["id"], "e": "👍"}, ta))["data"]["addReaction"] is True
    rm = "mutation($m: ID!, $e: String!) { removeReaction(messageId: $m, emoji: $e) }"
    assert (await edge.gql(rm, {"m": first["id"], "e": "👍"}, ta))["data"]["removeReaction"] is True
    for i in range(5):
        await edge.gql(SEND, {"r": room, "c": f"m{i}", "n": f"b{i}"}, tb)
    page_q = (
        "query($r: ID!, $b: ID, $a: ID, $n: Int) { messages(roomId: $r, before: $b, after: $a, "
        "limit: $n) { hasMore items { id seq content deleted author { username } "
        "reactions { emoji count me } } } }"
    )
    calls = edge.auth.get_users_calls
    page = (await edge.gql(page_q, {"r": room, "n": 3}, ta))["data"]["messages"]
    assert edge.auth.get_users_calls == calls + 1  # one batch for every author of the page
    assert page["hasMore"] is True and len(page["items"]) == 3
    seqs = [m["seq"] for m in page["items"]]
    assert seqs == sorted(seqs, reverse=True)  # paging back: newest first (ChatService.history)
    older = (await edge.gql(page_q, {"r": room, "b": page["items"][-1]["id"], "n": 50}, ta))[
        "data"
    ]["messages"]
    assert older["hasMore"] is False
    assert older["items"][-1]["content"] == "hello!"
    assert older["items"][-1]["reactions"] == [{"emoji": "👍", "count": 1, "me": False}]
    assert older["items"][-1]["author"]["username"] == "alice"
    newer = (await edge.gql(page_q, {"r": room, "a": first["id"]}, ta))["data"]["messages"]
    assert [m["content"] for m in newer["items"]] == [f"m{i}" for i in range(5)]
    delete = "mutation($id: ID!) { deleteMessage(id: $id) }"
    assert (await edge.gql(delete, {"id": first["id"]}, ta))["data"]["deleteMessage"] is True
    gone = (await edge.gql(page_q, {"r": room, "n": 50}, ta))["data"]["messages"]["items"][-1]
    assert gone["deleted"] is True
    big = await edge.gql(SEND, {"r": room, "c": "x" * 5000, "n": "big"}, ta)
    assert code(big) == "BAD_USER_INPUT"


async def test_room_members_and_status_are_batched(edge: Edge) -> None:
    users = [await edge.user(f"member{i}") for i in range(4)]
    owner = users[0][1]
    for i in range(3):
        await edge.gql(ROOM, {"n": f"r{i}", "m": [u[0] for u in users[1:]]}, owner)
    await edge.registry.set_presence(int(users[1][0]), "online", 60)
    await edge.registry.set_presence(int(users[2][0]), "invisible", 60)
    calls = edge.auth.get_users_calls
    rooms = await edge.gql("{ rooms { id members { id username status } } }", token=owner)
    rooms = rooms["data"]["rooms"]
    assert len(rooms) == 3 and all(len(r["members"]) == 4 for r in rooms)
    assert edge.auth.get_users_calls == calls + 1
    status = {m["username"]: m["status"] for m in rooms[0]["members"]}
    assert status == {
        "member0": "offline",
        "member1": "online",
        "member2": "offline",
        "member3": "offline",
    }


async def test_gateway_discovery(edge: Edge) -> None:
    r = await edge.gql('{ gateway(key: "abc") { url gatewayId } }')
    assert r["data"]["gateway"] == {"url": "ws://127.0.0.1:8081/ws", "gatewayId": "gw-1"}
    resp = await edge.http.get("/gateway", params={"key": "k2"})
    assert resp.json() == {"url": "ws://127.0.0.1:8081/ws", "gateway_id": "gw-1"}
    assert edge.placement.keys == ["abc", "k2"]


async def test_internal_errors_are_generic(edge: Edge) -> None:
    async def broken(key: str | None) -> GatewayRecord:
        raise RuntimeError("secret detail")

    edge.placement.choose = broken  # type: ignore[method-assign]
    r = await edge.gql("{ gateway { url } }")
    assert r["errors"][0] == {
        "message": "internal error",
        "extensions": {"code": "INTERNAL"},
        "locations": [{"line": 1, "column": 3}],
        "path": ["gateway"],
    }
    assert (await edge.http.get("/gateway")).status_code == 503


async def test_mutation_rate_limit(tmp_path: Path) -> None:
    async with make_edge(tmp_path, mutation_burst=3, mutation_per_s=0.001) as e:
        _, token, _ = await e.user("ratelimited")  # register spends the IP's bucket, not the user's
        codes = []
        for i in range(5):
            r = await e.gql(ROOM, {"n": f"r{i}"}, token)
            codes.append(code(r) if "errors" in r else "ok")
        assert codes == ["ok", "ok", "ok", "RATE_LIMITED", "RATE_LIMITED"]
        # queries are not rate limited
        assert "errors" not in await e.gql("{ rooms { id } }", token=token)


async def test_http_limits_and_status_codes(edge: Edge) -> None:
    big = {"query": "{ me { id } }", "variables": {"x": "a" * (70 * 1024)}}
    assert (await edge.http.post("/graphql", json=big)).status_code == 413
    bad_json = await edge.http.post(
        "/graphql", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert bad_json.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    for body in ("x", {"query": 1}, {"query": "{ me { id } }", "variables": [7]}):
        malformed = await edge.http.post("/graphql", json=body)
        assert malformed.status_code == 422, body
    items = await edge.http.post("/graphql", json=[1, 2])  # a batch of two malformed requests
    assert items.status_code == 200 and all("data" not in r for r in items.json())
    form = await edge.http.post("/graphql", content=b"query=x")
    assert form.status_code == 415
    latin = await edge.http.post(
        "/graphql", content=b"{}", headers={"content-type": "application/json; charset=latin1"}
    )
    assert latin.status_code == 415
    assert (await edge.http.put("/graphql", json={})).status_code == 405
    assert code(await edge.gql("{ __schema { types { name } } }")) == "BAD_USER_INPUT"
    assert "errors" not in await edge.gql("{ __typename }")
    sub = await edge.http.post(
        "/graphql", json={"query": 'subscription { roomEvents(roomId: "1") { __typename } }'}
    )
    assert sub.status_code == 422 and "graphql-transport-ws" in sub.text
    cost = await edge.gql(
        'query { messages(roomId: "1", limit: 100000) { items { id reactions { emoji } } } }'
    )
    assert code(cost) == "BAD_USER_INPUT" and "cost" in cost["errors"][0]["message"]
    deep = "{ rooms { members { id } } }"
    assert "errors" not in await edge.gql(deep, token=(await edge.user())[1])


async def test_status_codes_follow_the_step_that_failed(edge: Edge) -> None:
    async def status(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        resp = await edge.http.post("/graphql", json=body, headers={"accept": GRAPHQL_RESPONSE})
        assert resp.headers["content-type"] == f"{GRAPHQL_RESPONSE}; charset=utf-8"
        return resp.status_code, resp.json()

    assert (await status({"query": "{ me {"}))[0] == 400  # the document does not parse
    assert (await status({"query": "{ nope }"}))[0] == 422  # does not validate
    assert (await status({"query": "query A { me { id } } query B { me { id } }"}))[0] == 422
    assert (await status({"notquery": "{ me { id } }"}))[0] == 422
    coerce, body = await status({"query": "query($n: Int) { __typename }", "variables": {"n": "x"}})
    assert coerce == 422 and "data" not in body  # variables that do not coerce: never executed
    ok, body = await status({"query": "{ __typename }"})
    assert (ok, body) == (200, {"data": {"__typename": "Query"}})
    partial, body = await status({"query": "{ me { id } }"})  # executed, with a field error
    assert partial == 294 and body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_accept_negotiation(edge: Edge) -> None:
    async def answer(accept: str | None, query: str = "{ me { id } }") -> tuple[int, str]:
        headers = {} if accept is None else {"accept": accept}
        resp = await edge.http.post("/graphql", json={"query": query}, headers=headers)
        return resp.status_code, resp.headers["content-type"].split(";")[0]

    new, old = GRAPHQL_RESPONSE, "application/json"
    assert await answer(new) == (294, new)
    assert await answer(f"{new}, {old};q=0.9") == (294, new)
    assert await answer(f"{old}, {new}") == (294, new)  # a tie: the client named the new one
    assert await answer(f"{new};q=0.5, {old}") == (200, old)
    assert await answer(old) == (200, old)  # legacy: a partial success is a 200
    assert await answer("*/*") == (200, old)
    assert await answer("application/*") == (200, old)
    assert await answer("") == (200, old)
    assert await answer(old, "{ nope }") == (422, new)  # a refusal keeps its status and says so
    assert await answer("text/html") == (406, old)
    assert await answer(f"text/html, {new};q=0") == (406, old)


async def test_get_runs_queries_never_mutations(edge: Edge) -> None:
    _, token, _ = await edge.user("getter")
    auth = {"Authorization": f"Bearer {token}"}
    q = "query($id: ID!) { user(id: $id) { username } }"
    me = (await edge.gql("{ me { id } }", token=token))["data"]["me"]["id"]
    resp = await edge.http.get(
        "/graphql",
        params={"query": q, "variables": json.dumps({"id": me}), "operationName": ""},
        headers=auth,
    )
    assert resp.status_code == 200 and resp.json() == {"data": {"user": {"username": "getter"}}}
    mutation = 'mutation { createRoom(name: "x") { id } }'
    refused = await edge.http.get("/graphql", params={"query": mutation}, headers=auth)
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"
    assert (await edge.gql("{ rooms { id } }", token=token))["data"]["rooms"] == []  # not run
    bad = await edge.http.get("/graphql", params={"query": q, "variables": "{nope"})
    assert bad.status_code == 400
    assert (await edge.http.get("/graphql")).status_code == 422  # no query


async def test_batched_operations(edge: Edge) -> None:
    _, token, _ = await edge.user("batcher")
    auth = {"Authorization": f"Bearer {token}"}
    room = {"query": "mutation($n: String!) { createRoom(name: $n) { name } }"}
    batch = [
        room | {"variables": {"n": "first"}},
        {"query": "{ nope }"},
        room | {"variables": {"n": "second"}},
        {"query": "{ rooms { name } }"},
    ]
    resp = await edge.http.post("/graphql", json=batch, headers=auth)
    assert resp.status_code == 200
    first, invalid, second, rooms = resp.json()
    assert first == {"data": {"createRoom": {"name": "first"}}}
    assert "data" not in invalid and invalid["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert second == {"data": {"createRoom": {"name": "second"}}}
    assert rooms == {"data": {"rooms": [{"name": "first"}, {"name": "second"}]}}  # in order
    over = [{"query": "{ __typename }"}] * 11
    refused = await edge.http.post("/graphql", json=over)
    assert refused.status_code == 422 and "1 to 10" in refused.text
    assert (await edge.http.post("/graphql", json=[])).status_code == 422


async def test_cors_is_off_unless_configured(edge: Edge) -> None:
    preflight = {
        "origin": "http://localhost:5173",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    assert (await edge.http.options("/graphql", headers=preflight)).status_code == 405
    plain = await edge.http.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"origin": preflight["origin"]}
    )
    assert "access-control-allow-origin" not in plain.headers


async def test_cors_for_configured_origins(tmp_path: Path) -> None:
    origin = "http://localhost:5173"
    async with make_edge(tmp_path, cors_origins=(origin,)) as e:
        preflight = await e.http.options(
            "/graphql",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
        assert "access-control-allow-credentials" not in preflight.headers
        resp = await e.http.post(
            "/graphql", json={"query": "{ __typename }"}, headers={"origin": origin}
        )
        assert resp.headers["access-control-allow-origin"] == origin
        other = await e.http.post(
            "/graphql", json={"query": "{ __typename }"}, headers={"origin": "http://evil.test"}
        )
        assert "access-control-allow-origin" not in other.headers
        refused = await e.http.options(
            "/graphql",
            headers={"origin": "http://evil.test", "access-control-request-method": "POST"},
        )
        assert refused.status_code == 400
    async with make_edge(tmp_path, cors_origins=("*",)) as e:
        resp = await e.http.get(
            "/graphql", params={"query": "{ __typename }"}, headers={"origin": "http://a.test"}
        )
        assert resp.headers["access-control-allow-origin"] == "*"


async def test_depth_limit_over_http(tmp_path: Path) -> None:
    async with make_edge(tmp_path, max_depth=2) as e:
        r = await e.gql("{ rooms { members { id } } }")
        assert code(r) == "BAD_USER_INPUT" and "depth" in r["errors"][0]["message"]


async def test_persisted_queries_over_http(tmp_path: Path) -> None:
    allowed = "{ me { id } }"
    async with make_edge(tmp_path, persisted_queries=frozenset({query_hash(allowed)})) as e:
        assert code(await e.gql("{ rooms { id } }")) == "FORBIDDEN"
        assert code(await e.gql(allowed)) == "UNAUTHENTICATED"  # allowed: it ran
        ext = {"persistedQuery": {"version": 1, "sha256Hash": query_hash(allowed)}}
        resp = await e.http.post("/graphql", json={"extensions": ext})
        assert resp.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_introspection_when_enabled(tmp_path: Path) -> None:
    async with make_edge(tmp_path, enable_introspection=True) as e:
        r = await e.gql("{ __schema { queryType { name } } }")
        assert r["data"]["__schema"]["queryType"]["name"] == "Query"
        r = await e.gql("{ mee { id } }")
        assert "Did you mean" in r["errors"][0]["message"]


async def test_service_routes(edge: Edge) -> None:
    assert (await edge.http.get("/healthz")).text == "ok"
    assert (await edge.http.get("/readyz")).status_code == 200
    await edge.gql("{ __typename }")
    metrics = (await edge.http.get("/metrics")).text
    assert 'shardchat_edge_requests_total{operation_type="query",outcome="ok"}' in metrics
    assert "shardchat_edge_request_latency_seconds_bucket" in metrics
    index = await edge.http.get("/")
    assert index.status_code == 200 and "<title>shardchat</title>" in index.text
    assert (await edge.http.get("/app.js")).status_code == 200


async def test_read_state_mentions_and_mute(edge: Edge) -> None:
    alice, ta, _ = await edge.user("alice")
    bob, tb, _ = await edge.user("bob")
    room = (await edge.gql(ROOM, {"n": "r", "m": [bob]}, ta))["data"]["createRoom"]["id"]
    for i, text in enumerate(["hi", "hey @bob", "@BOB again", "bye"]):
        await edge.gql(SEND, {"r": room, "c": text, "n": f"m{i}"}, ta)
    rooms_q = "{ rooms { id lastSeq lastReadSeq unreadCount mentionCount muted } }"
    (listed,) = (await edge.gql(rooms_q, token=tb))["data"]["rooms"]
    assert listed == {
        "id": room,
        "lastSeq": 6,
        "lastReadSeq": 0,
        "unreadCount": 4,
        "mentionCount": 2,
        "muted": False,
    }
    page = "query($r: ID!) { messages(roomId: $r) { items { content mentions } } }"
    items = (await edge.gql(page, {"r": room}, tb))["data"]["messages"]["items"]
    assert [i["mentions"] for i in items] == [[], [bob], [bob], []]
    mark = (
        "mutation($r: ID!, $s: Int!) { markRead(roomId: $r, seq: $s) "
        "{ roomId lastReadSeq unreadCount mentionCount muted } }"
    )
    read = (await edge.gql(mark, {"r": room, "s": 4}, tb))["data"]["markRead"]
    assert read == {
        "roomId": room,
        "lastReadSeq": 4,
        "unreadCount": 2,
        "mentionCount": 1,
        "muted": False,
    }
    mute = "mutation($r: ID!, $m: Boolean!) { setRoomMuted(roomId: $r, muted: $m) { muted } }"
    assert (await edge.gql(mute, {"r": room, "m": True}, tb))["data"]["setRoomMuted"] == {
        "muted": True
    }
    (listed,) = (await edge.gql(rooms_q, token=tb))["data"]["rooms"]
    assert (listed["lastReadSeq"], listed["unreadCount"], listed["muted"]) == (4, 2, True)
    (mine,) = (await edge.gql(rooms_q, token=ta))["data"]["rooms"]
    assert (mine["unreadCount"], mine["mentionCount"], mine["muted"]) == (0, 0, False)
    _, tc, _ = await edge.user("carol")
    assert code(await edge.gql(mark, {"r": room, "s": 1}, tc)) == "NOT_FOUND"
    assert code(await edge.gql(mark, {"r": room, "s": -1}, tb)) == "BAD_USER_INPUT"
    assert alice


async def test_search_users_is_limited_and_rate_limited(tmp_path: Path) -> None:
    async with make_edge(tmp_path, search_burst=3, search_per_s=0.001) as e:
        _, token, _ = await e.user("seeker")
        for name in ("sea1", "sea2", "Sea3", "other"):
            await e.user(name)
        q = "query($p: String!, $n: Int) { searchUsers(prefix: $p, limit: $n) { username } }"
        found = (await e.gql(q, {"p": "SEA", "n": 2}, token))["data"]["searchUsers"]
        assert [u["username"] for u in found] == ["sea1", "sea2"]
        assert code(await e.gql(q, {"p": "se"})) == "UNAUTHENTICATED"
        assert code(await e.gql(q, {"p": "a b"}, token)) == "BAD_USER_INPUT"  # costs a token too
        assert "errors" not in await e.gql(q, {"p": "sea"}, token)  # the 3rd: the burst is 3
        assert code(await e.gql(q, {"p": "sea"}, token)) == "RATE_LIMITED"


async def test_files_need_a_file_service(edge: Edge) -> None:
    # This edge is built without one: the files API answers plainly instead of failing.
    _, token, _ = await edge.user()
    room = (await edge.gql(ROOM, {"n": "r"}, token))["data"]["createRoom"]["id"]
    upload = (
        'mutation($r: ID!) { createUpload(roomId: $r, filename: "a", contentType: '
        '"text/plain", size: 1, sha256: "' + "0" * 64 + '") { id } }'
    )
    r = await edge.gql(upload, {"r": room}, token)
    assert code(r) == "BAD_USER_INPUT" and "not enabled" in r["errors"][0]["message"]
    send = (
        'mutation($r: ID!) { sendMessage(roomId: $r, content: "x", nonce: "n", '
        'attachmentIds: ["5"]) { id } }'
    )
    r = await edge.gql(send, {"r": room}, token)
    assert code(r) == "BAD_USER_INPUT" and "not enabled" in r["errors"][0]["message"]
    resp = await edge.http.get("/files/5", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 404
