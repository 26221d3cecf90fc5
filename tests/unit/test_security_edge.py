"""The attacks of issue 11 against the GraphQL edge (real services on SQLite + memory adapters).

Each test replays one observed probe; docs/security.md maps every attack to its test.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pyotp
import pytest
from websockets.exceptions import InvalidStatus

from shardchat.registry import RegistryUnavailable
from tests.unit.test_graphql_api import ROOM, SEND, Edge, code, make_edge
from tests.unit.test_graphql_ws import SUB, Server, closed_with, init, open_ws, recv, send
from tests.unit.test_graphql_ws import server as server

ROOM_Q = "query($id: ID!) { room(id: $id) { id name } }"
JOIN = "mutation($r: ID!) { joinRoom(roomId: $r) { id } }"
LEAVE = "mutation($r: ID!) { leaveRoom(roomId: $r) }"
HISTORY = "query($r: ID!) { messages(roomId: $r) { items { content } } }"
INVITE = "mutation($r: ID!, $u: [ID!]!) { inviteToRoom(roomId: $r, userIds: $u) }"
LOGIN = (
    "mutation($u: String!, $p: String!, $c: String) "
    "{ login(username: $u, password: $p, totpCode: $c) { accessToken refreshToken } }"
)
PASSWORD = "correct horse battery"


@pytest.fixture
async def edge(tmp_path: Path) -> Any:
    async with make_edge(tmp_path) as e:
        yield e


# --- observation 1: any user could join any room, and room(id) was an existence oracle ---------
async def test_obs1_stranger_cannot_join_read_or_probe_a_private_room(edge: Edge) -> None:
    _, ta, _ = await edge.user("alice")
    bob, _, _ = await edge.user("bob")
    _, tc, _ = await edge.user("mallory")
    room = (await edge.gql(ROOM, {"n": "dm-ish", "m": [bob]}, ta))["data"]["createRoom"]["id"]
    await edge.gql(SEND, {"r": room, "c": "secret", "n": "s1"}, ta)
    # unknown and forbidden answer exactly the same
    unknown = str(int(room) + 1)
    assert await edge.gql(ROOM_Q, {"id": room}, tc) == await edge.gql(ROOM_Q, {"id": unknown}, tc)
    joined = await edge.gql(JOIN, {"r": room}, tc)
    assert code(joined) == "NOT_FOUND"
    assert (
        joined["errors"][0]["message"]
        == (await edge.gql(JOIN, {"r": unknown}, tc))["errors"][0]["message"]
    )
    history = await edge.gql(HISTORY, {"r": room}, tc)
    assert code(history) == "NOT_FOUND" and "secret" not in json.dumps(history)
    for mutation, args in [
        (SEND, {"r": room, "c": "x", "n": "m1"}),
        (LEAVE, {"r": room}),
        (INVITE, {"r": room, "u": [bob]}),
    ]:
        assert code(await edge.gql(mutation, args, tc)) == "NOT_FOUND"


async def test_obs1_alias_sweeps_are_refused_and_queries_rate_limited(tmp_path: Path) -> None:
    async with make_edge(tmp_path, query_burst=5, query_per_s=0.001) as e:
        _, token, _ = await e.user("sweeper")
        sweep = "{ " + " ".join(f'r{i}: room(id: "{1000 + i}") {{ id }}' for i in range(400)) + " }"
        r = await e.gql(sweep, token=token)
        assert code(r) == "BAD_USER_INPUT" and "root fields" in r["errors"][0]["message"]
        codes = []
        for _ in range(4):
            got = await e.gql('{ a: room(id: "1") { id } b: room(id: "2") { id } }', token=token)
            codes.append(code(got) if "errors" in got else "ok")
        assert codes == ["ok", "ok", "RATE_LIMITED", "RATE_LIMITED"]  # 2 root fields each


# --- observation 2: a roomEvents subscription kept delivering after leaveRoom -------------------
async def _subscribe(ws: Any, room: str) -> None:
    await send(
        ws, {"type": "subscribe", "id": "s", "payload": {"query": SUB, "variables": {"r": room}}}
    )
    await asyncio.sleep(0.2)  # the stream is registered once the resolver ran


async def test_obs2_subscription_ends_when_the_subscriber_leaves(server: Server) -> None:
    edge = server.edge
    _, ta, _ = await edge.user("alice")
    bob, tb, _ = await edge.user("bob")
    room = (await edge.gql(ROOM, {"n": "r", "m": [bob]}, ta))["data"]["createRoom"]["id"]
    async with await open_ws(server.url) as ws:
        await init(ws, tb)
        await _subscribe(ws, room)
        assert "errors" not in await edge.gql(LEAVE, {"r": room}, tb)
        left = await recv(ws)
        assert left["payload"]["data"]["roomEvents"]["__typename"] == "MemberLeft"
        assert await recv(ws) == {"type": "complete", "id": "s"}
        await edge.gql(SEND, {"r": room, "c": "after you left", "n": "a1"}, ta)
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}  # nothing of the room came first


async def test_obs2_subscription_ends_when_the_subscriber_is_removed(server: Server) -> None:
    edge = server.edge
    alice, ta, _ = await edge.user("alice")
    bob, tb, _ = await edge.user("bob")
    room = (await edge.gql(ROOM, {"n": "r", "m": [bob]}, ta))["data"]["createRoom"]["id"]
    async with await open_ws(server.url) as ws:
        await init(ws, tb)
        await _subscribe(ws, room)
        remove = "mutation($r: ID!, $u: ID!) { removeMember(roomId: $r, userId: $u) }"
        assert (await edge.gql(remove, {"r": room, "u": bob}, ta))["data"]["removeMember"] is True
        left = (await recv(ws))["payload"]["data"]["roomEvents"]
        assert left["__typename"] == "MemberLeft" and left["userId"] == bob
        assert left["removedBy"] == alice
        assert await recv(ws) == {"type": "complete", "id": "s"}
    history = await edge.gql(HISTORY, {"r": room}, tb)
    assert code(history) == "NOT_FOUND"


# --- observation 3: login throttling was per IP, and a token moved the caller to its own bucket --
async def test_obs3_login_attempts_are_throttled_per_account_whatever_the_token(
    tmp_path: Path,
) -> None:
    async with make_edge(tmp_path, login_backoff_base_s=60.0) as edge:
        await _guess_victims_password(edge)


async def _guess_victims_password(edge: Edge) -> None:
    await edge.user("victim")
    helpers = [(await edge.user(f"helper{i}"))[1] for i in range(3)]
    codes = []
    for i in range(50):
        r = await edge.gql(LOGIN, {"u": "victim", "p": f"guess number {i}"}, helpers[i % 3])
        codes.append(code(r))
    assert codes[:5] == ["UNAUTHENTICATED"] * 5
    assert set(codes[5:]) == {"RATE_LIMITED"}
    # even the right password waits out the backoff: the guesser can't tell it was right
    assert code(await edge.gql(LOGIN, {"u": "victim", "p": PASSWORD})) == "RATE_LIMITED"


# --- observation 4: access tokens outlived logout; graphql-ws kept serving after expiry ---------
async def test_obs4_logout_revokes_the_access_token(edge: Edge) -> None:
    _, token, refresh = await edge.user("leaver")
    assert "errors" not in await edge.gql("{ me { id } }", token=token)
    logout = "mutation($r: String!) { logout(refreshToken: $r) }"
    assert (await edge.gql(logout, {"r": refresh}))["data"]["logout"] is True
    assert code(await edge.gql("{ me { id } }", token=token)) == "UNAUTHENTICATED"


async def test_a_registry_outage_refuses_tokens_with_a_retryable_error(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Revocation can't be checked while the Registry is down, so no token is accepted; but
    the answer must be INTERNAL (retry), not UNAUTHENTICATED, which tells a client its
    credentials are bad (the chaos suite's members saw sends refused for good during a Redis
    restart)."""
    _, token, _ = await edge.user("patient")
    room = (await edge.gql(ROOM, {"n": "r"}, token))["data"]["createRoom"]["id"]

    async def down(*_: object) -> list[int]:
        raise RegistryUnavailable("redis: connection refused")

    monkeypatch.setattr(edge.registry, "tokens_not_before", down)
    refused = await edge.gql(SEND, {"r": room, "c": "hi", "n": "r1"}, token)
    assert code(refused) == "INTERNAL"
    assert "retry" in refused["errors"][0]["message"]
    monkeypatch.undo()
    sent = await edge.gql(SEND, {"r": room, "c": "hi", "n": "r1"}, token)
    assert "errors" not in sent
    assert code(await edge.gql("{ me { id } }", token="not-a-token")) == "UNAUTHENTICATED"


async def test_obs4_graphql_ws_closes_when_the_token_is_revoked(server: Server) -> None:
    edge = server.edge
    _, token, refresh = await edge.user("wsuser")
    room = (await edge.gql(ROOM, {"n": "r"}, token))["data"]["createRoom"]["id"]
    async with await open_ws(server.url) as ws:
        await init(ws, token)
        await _subscribe(ws, room)
        logout = "mutation($r: String!) { logout(refreshToken: $r) }"
        await edge.gql(logout, {"r": refresh})
        assert await closed_with(ws) == 4403


async def test_obs4_graphql_ws_closes_when_the_token_expires(tmp_path: Path) -> None:
    from tests.unit.test_graphql_ws import serve_edge

    async with make_edge(tmp_path, access_token_ttl_s=2) as e, serve_edge(e) as url:
        _, token, _ = await e.user("shortlived")
        async with await open_ws(url) as ws:
            await init(ws, token)
            started = time.monotonic()
            assert await closed_with(ws) == 4403
            assert time.monotonic() - started < 4


# --- observation 6: user(id) { status } showed presence to strangers ----------------------------
async def test_obs6_presence_is_shown_only_to_users_sharing_a_room(edge: Edge) -> None:
    alice, ta, _ = await edge.user("alice")
    bob, tb, _ = await edge.user("bob")
    _, tc, _ = await edge.user("stranger")
    await edge.gql(ROOM, {"n": "r", "m": [bob]}, ta)
    await edge.registry.set_presence(int(alice), "dnd", 60)
    q = "query($id: ID!) { user(id: $id) { username status } }"
    assert (await edge.gql(q, {"id": alice}, tb))["data"]["user"]["status"] == "dnd"
    assert (await edge.gql(q, {"id": alice}, ta))["data"]["user"]["status"] == "dnd"
    assert (await edge.gql(q, {"id": alice}, tc))["data"]["user"] == {
        "username": "alice",
        "status": "offline",
    }


# --- 2FA: login needs a code once enrolled --------------------------------------------------------
async def test_two_factor_login_needs_a_fresh_code(edge: Edge) -> None:
    _, token, _ = await edge.user("careful")
    setup = (
        'mutation { beginTwoFactorSetup(password: "correct horse battery") { secret otpauthUri } }'
    )
    s = (await edge.gql(setup, token=token))["data"]["beginTwoFactorSetup"]
    assert s["otpauthUri"].startswith("otpauth://totp/") and "careful" in s["otpauthUri"]
    totp = pyotp.TOTP(s["secret"])
    confirm = "mutation($c: String!) { confirmTwoFactor(code: $c) }"
    codes = (await edge.gql(confirm, {"c": totp.now()}, token))["data"]["confirmTwoFactor"]
    assert len(codes) == 10 and len(set(codes)) == 10
    no_code = await edge.gql(LOGIN, {"u": "careful", "p": PASSWORD})
    assert code(no_code) == "UNAUTHENTICATED"
    assert no_code["errors"][0]["extensions"]["reason"] == "TWO_FACTOR_REQUIRED"
    # the code used to confirm can't be replayed; a recovery code works once
    replay = await edge.gql(LOGIN, {"u": "careful", "p": PASSWORD, "c": totp.now()})
    assert code(replay) == "UNAUTHENTICATED"
    ok = await edge.gql(LOGIN, {"u": "careful", "p": PASSWORD, "c": codes[0]})
    assert ok["data"]["login"]["accessToken"]
    again = await edge.gql(LOGIN, {"u": "careful", "p": PASSWORD, "c": codes[0]})
    assert code(again) == "UNAUTHENTICATED"


# --- LOW items -----------------------------------------------------------------------------------
async def test_content_type_must_be_json_and_origins_apply_to_post(tmp_path: Path) -> None:
    async with make_edge(tmp_path, allowed_origins=("https://chat.example",)) as e:
        body = b'{"query": "{ __typename }"}'
        for ctype in ("text/plain; x=json", "application/jsonp", "multipart/json"):
            resp = await e.http.post("/graphql", content=body, headers={"content-type": ctype})
            assert resp.status_code == 415, ctype
        ok = {"content-type": "application/json; charset=utf-8"}
        assert (await e.http.post("/graphql", content=body, headers=ok)).status_code == 200
        evil = {**ok, "origin": "https://evil.example"}
        assert (await e.http.post("/graphql", content=body, headers=evil)).status_code == 403
        good = {**ok, "origin": "https://chat.example"}
        assert (await e.http.post("/graphql", content=body, headers=good)).status_code == 200


async def test_graphql_ws_origin_and_operation_cap(tmp_path: Path) -> None:
    from tests.unit.test_graphql_ws import serve_edge

    async with (
        make_edge(tmp_path, allowed_origins=("https://chat.example",), ws_max_operations=2) as e,
        serve_edge(e) as url,
    ):
        _, token, _ = await e.user("capped")
        room = (await e.gql(ROOM, {"n": "r"}, token))["data"]["createRoom"]["id"]
        with pytest.raises(InvalidStatus) as refused:  # no Origin at all: refused too
            await open_ws(url)
        assert refused.value.response.status_code == 403
        async with await open_ws(url, origin="https://chat.example") as ws:  # type: ignore[arg-type]
            await init(ws, token)
            sub = {"query": SUB, "variables": {"r": room}}
            for op in ("1", "2", "3"):
                await send(ws, {"type": "subscribe", "id": op, "payload": sub})
            err = await recv(ws)
            assert err["type"] == "error" and err["id"] == "3"
            assert err["payload"][0]["extensions"]["code"] == "RATE_LIMITED"


async def test_slow_or_abandoned_bodies_are_dropped_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.unit.test_graphql_ws import serve_edge

    async with make_edge(tmp_path, http_body_timeout_s=0.5) as e, serve_edge(e) as url:
        port = int(url.split(":")[2].split("/")[0])
        head = (
            b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"query":'
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 3)  # the body never completes
        assert b" 408 " in status
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        await writer.drain()
        writer.close()  # gone mid-body
        await asyncio.sleep(0.8)
    assert "Exception in ASGI application" not in caplog.text


async def test_python_client_two_factor_sessions_and_invitations(edge: Edge) -> None:
    from shardchat.client import EdgeClient, ShardchatError, TwoFactorRequired

    alice = EdgeClient("http://edge", http=edge.http)
    bob = EdgeClient("http://edge", http=edge.http)
    await alice.register("alice", PASSWORD)
    b = await bob.register("bob", "battery staple horse")
    secret, uri = await alice.begin_two_factor(PASSWORD)
    assert uri.startswith("otpauth://totp/shardchat:alice")
    codes = await alice.confirm_two_factor(pyotp.TOTP(secret).now())
    with pytest.raises(TwoFactorRequired):
        await alice.login("alice", PASSWORD)
    await alice.login("alice", PASSWORD, codes[1])
    assert len(await alice.sessions()) == 2  # the registration's login and this one
    room = await alice.create_room("club")
    assert await alice.invite(int(room["id"]), [int(b.user["id"])]) == [int(b.user["id"])]
    (inv,) = await bob.invitations()
    assert inv["roomName"] == "club" and inv["inviter"]["username"] == "alice"
    assert (await bob.accept_invitation(int(room["id"])))["id"] == room["id"]
    assert await alice.remove_member(int(room["id"]), int(b.user["id"]))
    dm = await bob.open_direct_room(int((alice.session.user if alice.session else {})["id"]))
    assert dm["direct"] is True
    old = [s["id"] for s in await alice.sessions() if not s["current"]]
    assert await alice.revoke_session(old[0])
    await alice.change_password(PASSWORD, "a much better passphrase")
    with pytest.raises(ShardchatError):
        await alice.disable_two_factor("000000")
    assert await alice.disable_two_factor(codes[2])
