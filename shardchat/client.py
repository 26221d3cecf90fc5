"""Async Python client of shardchat: the GraphQL edge over HTTP and the gateway protocol v1.

Used by the load-test harness and the tests. Two pieces:

``EdgeClient`` (HTTP, httpx): ``register``/``login`` (with a TOTP or recovery code when 2FA is
on: ``TwoFactorRequired`` says when one is needed)/``refresh``/``logout``, ``graphql()``,
``gateway()`` discovery, 2FA (``begin_two_factor``, ``confirm_two_factor``,
``disable_two_factor``), sessions (``sessions``, ``revoke_session``, ``change_password``),
rooms (``create_room``, ``invite``, ``invitations``, ``accept_invitation``,
``decline_invitation``, ``remove_member``, ``open_direct_room``, ``public_rooms``), read
state (``rooms()`` with unread and mention counts, ``mark_read``, ``set_room_muted``,
``search_users``) and files (``upload()``: createUpload, then the PUT straight to the object
store, returning the id to pass as ``attachmentIds``; ``download()``: an attachment's bytes
through its short-lived URL). It keeps the current tokens and refreshes the access token
shortly before it expires.

``GatewayClient`` (websockets): ``await GatewayClient.connect(url, token)`` does HELLO ->
IDENTIFY -> READY and heartbeats; ``subscribe({room: after_seq})``, ``send(room, content, nonce)``
(awaits the REPLY by request id), ``typing``, ``presence``; ``async for event in client`` yields
DISPATCH events. Resume is built in: on a dropped connection, a missed HEARTBEAT_ACK, RECONNECT,
or a close code outside 1000/1001 and 4500-4999, it reconnects (to a fresh ``/gateway`` url when a
``discover`` callable is given) and RESUMEs, listing in RESUME ``rooms`` the last room seq it
holds per subscribed room so the replay is exact even after a gateway crash (docs/protocol.md
section 8; ``resume_rooms=False`` sends the plain v1 RESUME); on INVALID_SESSION it IDENTIFYs
again and re-SUBSCRIBEs each room after the last seq it delivered. Durable events are
deduplicated by room seq, so the iterator never yields one twice. ``send`` retries across
reconnects with the same nonce (sends are idempotent by nonce), so a send either returns the
stored message or raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urljoin

import httpx
import msgspec
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

log = logging.getLogger(__name__)

Encoding = Literal["json", "msgpack"]

# opcodes (docs/protocol.md section 2); duplicated here so the client needs nothing server-side
DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE_UPDATE, SUBSCRIBE, UNSUBSCRIBE, RESUME = range(7)
RECONNECT, SEND, INVALID_SESSION, HELLO, HEARTBEAT_ACK, TYPING, REPLY = range(7, 14)

#: Rooms listed in RESUME ``rooms`` at most: about 30 bytes each keeps the frame well inside the
#: gateway's 16 KiB limit; rooms beyond it fall back to the server's saved position (and the
#: room-seq dedupe below).
MAX_RESUME_ROOMS = 400


class ShardchatError(Exception):
    """An error answer: a GraphQL ``extensions.code`` or a gateway REPLY ``error.code``."""

    def __init__(
        self, code: str, message: str, details: Any = None, reason: str | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details
        #: ``extensions.reason`` / REPLY ``error.reason``: a finer stable cause (ROTATION_DUE...)
        self.reason = reason


class TwoFactorRequired(ShardchatError):
    """The password was right and the account has 2FA on: log in again with ``totp_code``."""


class GatewayClosed(Exception):
    """The gateway session ended for good (terminal close code, or ``close()``)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"gateway closed: {code} {reason}")
        self.code = code
        self.reason = reason


# --- HTTP: the GraphQL edge ---------------------------------------------------------------------

_AUTH_FIELDS = "accessToken refreshToken expiresIn user { id username status }"
_READ_STATE_FIELDS = "roomId lastReadSeq unreadCount mentionCount muted"
#: GraphQL over HTTP: the spec's media type first (its status codes are meaningful), JSON after.
_ACCEPT = "application/graphql-response+json, application/json;q=0.9"


_CREATE_UPLOAD = (
    "mutation($r: ID!, $f: String!, $t: String!, $s: Int!, $h: String!) {"
    " createUpload(roomId: $r, filename: $f, contentType: $t, size: $s, sha256: $h)"
    " { id url method headers { name value } expiresAt } }"
)


def _credentials_mutation(name: str) -> str:
    args = "username: $u, password: $p"
    return f"mutation($u: String!, $p: String!) {{ {name}({args}) {{ {_AUTH_FIELDS} }} }}"


@dataclass(slots=True)
class Session:
    access_token: str
    refresh_token: str
    expires_at: float  # time.monotonic() deadline of the access token
    user: dict[str, Any]


class EdgeClient:
    """The edge over HTTP. ``base_url`` like ``http://127.0.0.1:8080``; pass ``http`` to reuse a
    client (tests pass one with an ASGI transport). Presigned URLs of another host (the object
    store's) go through ``files_http`` (a plain client of its own by default)."""

    def __init__(
        self,
        base_url: str,
        *,
        http: httpx.AsyncClient | None = None,
        files_http: httpx.AsyncClient | None = None,
        refresh_margin_s: float = 60.0,
    ) -> None:
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=10.0)
        self._own_http = http is None
        self._files_http = files_http or httpx.AsyncClient(timeout=120.0)
        self._own_files_http = files_http is None
        self.base_url = base_url.rstrip("/")
        self.session: Session | None = None
        self.refresh_margin_s = refresh_margin_s
        self._refreshing: asyncio.Lock = asyncio.Lock()

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()
        if self._own_files_http:
            await self._files_http.aclose()

    async def __aenter__(self) -> EdgeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def graphql(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        operation_name: str | None = None,
        *,
        auth: bool = True,
    ) -> dict[str, Any]:
        """Run one operation; return ``data`` or raise ShardchatError for the first error."""
        headers = {"Accept": _ACCEPT}
        if auth and self.session is not None:
            headers["Authorization"] = f"Bearer {await self.access_token()}"
        body: dict[str, Any] = {"query": query}
        if variables is not None:
            body["variables"] = dict(variables)
        if operation_name is not None:
            body["operationName"] = operation_name
        resp = await self._http.post(f"{self.base_url}/graphql", json=body, headers=headers)
        try:
            payload = resp.json()
        except ValueError:
            raise ShardchatError("INTERNAL", f"HTTP {resp.status_code}") from None
        errors = payload.get("errors") if isinstance(payload, dict) else None
        if errors:
            first = errors[0]
            ext = first.get("extensions") or {}
            code = ext.get("code", "INTERNAL")
            kind = TwoFactorRequired if ext.get("reason") == "TWO_FACTOR_REQUIRED" else None
            message = first.get("message", "")
            raise (kind or ShardchatError)(code, message, errors, ext.get("reason"))
        if not 200 <= resp.status_code < 300 or not isinstance(payload.get("data"), dict):
            raise ShardchatError("INTERNAL", f"HTTP {resp.status_code}")
        data: dict[str, Any] = payload["data"]
        return data

    async def register(self, username: str, password: str) -> Session:
        q = _credentials_mutation("register")
        data = await self.graphql(q, {"u": username, "p": password}, auth=False)
        return self._keep(data["register"])

    async def login(self, username: str, password: str, totp_code: str | None = None) -> Session:
        """Log in; with 2FA on, ``totp_code`` is a current code or an unused recovery code
        (without one: ``TwoFactorRequired``)."""
        q = (
            "mutation($u: String!, $p: String!, $c: String) "
            f"{{ login(username: $u, password: $p, totpCode: $c) {{ {_AUTH_FIELDS} }} }}"
        )
        variables = {"u": username, "p": password, "c": totp_code}
        data = await self.graphql(q, variables, auth=False)
        return self._keep(data["login"])

    # -- 2FA, sessions -------------------------------------------------------------------------
    async def begin_two_factor(self, password: str) -> tuple[str, str]:
        """``(secret, otpauth URI)``: show the URI as a QR code, then ``confirm_two_factor``."""
        q = "mutation($p: String!) { beginTwoFactorSetup(password: $p) { secret otpauthUri } }"
        setup = (await self.graphql(q, {"p": password}))["beginTwoFactorSetup"]
        return str(setup["secret"]), str(setup["otpauthUri"])

    async def confirm_two_factor(self, code: str) -> list[str]:
        """Turn 2FA on with a first code; returns the ten one-time recovery codes."""
        q = "mutation($c: String!) { confirmTwoFactor(code: $c) }"
        return list((await self.graphql(q, {"c": code}))["confirmTwoFactor"])

    async def disable_two_factor(self, code: str) -> bool:
        q = "mutation($c: String!) { disableTwoFactor(code: $c) }"
        return bool((await self.graphql(q, {"c": code}))["disableTwoFactor"])

    async def sessions(self) -> list[dict[str, Any]]:
        q = "{ sessions { id createdAt lastUsedAt client current } }"
        return list((await self.graphql(q))["sessions"])

    async def revoke_session(self, session_id: str) -> bool:
        q = "mutation($i: ID!) { revokeSession(id: $i) }"
        return bool((await self.graphql(q, {"i": session_id}))["revokeSession"])

    async def change_password(self, current: str, new: str) -> Session:
        """Every other login ends; this client continues with the new session returned."""
        q = (
            "mutation($c: String!, $n: String!) "
            f"{{ changePassword(currentPassword: $c, newPassword: $n) {{ {_AUTH_FIELDS} }} }}"
        )
        return self._keep((await self.graphql(q, {"c": current, "n": new}))["changePassword"])

    # -- rooms ---------------------------------------------------------------------------------
    async def create_room(
        self, name: str, member_ids: Iterable[int] = (), *, public: bool = False
    ) -> dict[str, Any]:
        q = (
            "mutation($n: String!, $m: [ID!], $p: Boolean) "
            "{ createRoom(name: $n, memberIds: $m, public: $p) { id name lastSeq public } }"
        )
        variables = {"n": name, "m": [str(m) for m in member_ids], "p": public}
        return dict((await self.graphql(q, variables))["createRoom"])

    async def invite(self, room_id: int, user_ids: Iterable[int]) -> list[int]:
        q = "mutation($r: ID!, $u: [ID!]!) { inviteToRoom(roomId: $r, userIds: $u) }"
        variables = {"r": str(room_id), "u": [str(u) for u in user_ids]}
        return [int(u) for u in (await self.graphql(q, variables))["inviteToRoom"]]

    async def invitations(self) -> list[dict[str, Any]]:
        q = "{ invitations { roomId roomName inviter { id username } createdAt } }"
        return list((await self.graphql(q))["invitations"])

    async def accept_invitation(self, room_id: int) -> dict[str, Any]:
        q = "mutation($r: ID!) { acceptInvitation(roomId: $r) { id name lastSeq } }"
        return dict((await self.graphql(q, {"r": str(room_id)}))["acceptInvitation"])

    async def decline_invitation(self, room_id: int) -> bool:
        q = "mutation($r: ID!) { declineInvitation(roomId: $r) }"
        return bool((await self.graphql(q, {"r": str(room_id)}))["declineInvitation"])

    async def remove_member(self, room_id: int, user_id: int) -> bool:
        q = "mutation($r: ID!, $u: ID!) { removeMember(roomId: $r, userId: $u) }"
        variables = {"r": str(room_id), "u": str(user_id)}
        return bool((await self.graphql(q, variables))["removeMember"])

    async def open_direct_room(self, user_id: int) -> dict[str, Any]:
        q = "mutation($u: ID!) { openDirectRoom(userId: $u) { id name lastSeq direct } }"
        return dict((await self.graphql(q, {"u": str(user_id)}))["openDirectRoom"])

    async def public_rooms(self) -> list[dict[str, Any]]:
        return list((await self.graphql("{ publicRooms { id name lastSeq } }"))["publicRooms"])

    async def refresh(self) -> Session:
        """Rotate the refresh token (the old one is spent) and get a new access token."""
        if self.session is None:
            raise ShardchatError("UNAUTHENTICATED", "not logged in")
        q = f"mutation($r: String!) {{ refreshToken(refreshToken: $r) {{ {_AUTH_FIELDS} }} }}"
        data = await self.graphql(q, {"r": self.session.refresh_token}, auth=False)
        return self._keep(data["refreshToken"])

    async def logout(self) -> bool:
        if self.session is None:
            return False
        q = "mutation($r: String!) { logout(refreshToken: $r) }"
        data = await self.graphql(q, {"r": self.session.refresh_token}, auth=False)
        self.session = None
        return bool(data["logout"])

    async def access_token(self) -> str:
        """The current access token, refreshed first when it is about to expire."""
        if self.session is None:
            raise ShardchatError("UNAUTHENTICATED", "not logged in")
        if time.monotonic() >= self.session.expires_at - self.refresh_margin_s:
            async with self._refreshing:  # one rotation for concurrent callers
                if time.monotonic() >= self.session.expires_at - self.refresh_margin_s:
                    await self.refresh()
        return self.session.access_token

    async def rooms(self) -> list[dict[str, Any]]:
        """The caller's rooms: ``id name lastSeq`` and the read state (``lastReadSeq
        unreadCount mentionCount muted``)."""
        q = "{ rooms { id name lastSeq lastReadSeq unreadCount mentionCount muted } }"
        rooms: list[dict[str, Any]] = (await self.graphql(q))["rooms"]
        return rooms

    async def mark_read(self, room_id: int | str, seq: int) -> dict[str, Any]:
        """Read up to room ``seq``; the new read state (also sent to the caller's other gateway
        sessions as READ_STATE)."""
        q = (
            "mutation($r: ID!, $s: Int!) { markRead(roomId: $r, seq: $s)"
            f" {{ {_READ_STATE_FIELDS} }} }}"
        )
        state: dict[str, Any] = (await self.graphql(q, {"r": str(room_id), "s": seq}))["markRead"]
        return state

    async def set_room_muted(self, room_id: int | str, muted: bool) -> dict[str, Any]:
        q = (
            "mutation($r: ID!, $m: Boolean!) { setRoomMuted(roomId: $r, muted: $m)"
            f" {{ {_READ_STATE_FIELDS} }} }}"
        )
        data = await self.graphql(q, {"r": str(room_id), "m": muted})
        state: dict[str, Any] = data["setRoomMuted"]
        return state

    async def search_users(self, prefix: str, limit: int = 10) -> list[dict[str, Any]]:
        """Users whose username starts with ``prefix``: ``id username status``."""
        q = (
            "query($p: String!, $n: Int) { searchUsers(prefix: $p, limit: $n)"
            " { id username status } }"
        )
        data = await self.graphql(q, {"p": prefix, "n": limit})
        users: list[dict[str, Any]] = data["searchUsers"]
        return users

    async def gateway(self, key: str | None = None) -> tuple[str, str]:
        """``(url, gateway_id)`` of the gateway to use (GET /gateway)."""
        params = {"key": key} if key else None
        resp = await self._http.get(f"{self.base_url}/gateway", params=params)
        resp.raise_for_status()
        body = resp.json()
        return str(body["url"]), str(body["gateway_id"])

    async def upload(
        self,
        room_id: int | str,
        data: bytes,
        filename: str,
        content_type: str = "application/octet-stream",
    ) -> str:
        """Upload a file for a room; returns its id, for ``sendMessage(attachmentIds)`` or SEND
        ``attachment_ids``. The server checks it at that send (size, SHA-256, real type)."""
        variables = {
            "r": str(room_id),
            "f": filename,
            "t": content_type,
            "s": len(data),
            "h": hashlib.sha256(data).hexdigest(),
        }
        up = (await self.graphql(_CREATE_UPLOAD, variables))["createUpload"]
        headers = {h["name"]: h["value"] for h in up["headers"]}
        resp = await self._object_request(up["method"], up["url"], content=data, headers=headers)
        if resp.status_code >= 300:
            raise ShardchatError(
                "BAD_USER_INPUT", f"the object store refused the upload: HTTP {resp.status_code}"
            )
        return str(up["id"])

    async def download(self, attachment_id: int | str, *, thumbnail: bool = False) -> bytes:
        """The bytes of an attachment of a message (or its thumbnail) the caller may see."""
        path = f"/files/{attachment_id}" + ("/thumbnail" if thumbnail else "")
        headers = {"Authorization": f"Bearer {await self.access_token()}"}
        resp = await self._http.get(
            f"{self.base_url}{path}", headers={**headers, "Accept": "application/json"}
        )
        body = resp.json()
        if resp.status_code != 200:
            error = body.get("error") or {}
            raise ShardchatError(error.get("code", "INTERNAL"), error.get("message", ""), body)
        got = await self._object_request("GET", body["url"])
        if got.status_code != 200:
            raise ShardchatError("INTERNAL", f"the object store answered HTTP {got.status_code}")
        return got.content

    async def _object_request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """A presigned URL: relative ones (the filesystem store) are the edge's paths."""
        full = urljoin(self.base_url + "/", url)
        http = self._http if full.startswith(self.base_url + "/") else self._files_http
        return await http.request(method, full, timeout=120.0, **kwargs)

    def _keep(self, payload: dict[str, Any]) -> Session:
        self.session = Session(
            access_token=payload["accessToken"],
            refresh_token=payload["refreshToken"],
            expires_at=time.monotonic() + int(payload["expiresIn"]),
            user=payload["user"],
        )
        return self.session


# --- WebSocket: the gateway ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One DISPATCH: ``t`` the event name, ``d`` its payload, ``s`` the session seq."""

    t: str
    d: Any
    s: int | None


class _Lost(Exception):
    """The connection dropped while a request waited; the request may be retried."""


@dataclass(slots=True)
class _State:
    session_id: str | None = None
    last_s: int | None = None
    resume_url: str | None = None
    room_seqs: dict[int, int] = field(default_factory=dict)  # last seq delivered per room
    wanted: set[int] = field(default_factory=set)  # rooms subscribed (or to re-subscribe)

    def resume_rooms(self) -> dict[str, int]:
        """RESUME ``rooms``: the last seq held for each subscribed room that has one."""
        held = (r for r in self.wanted if r in self.room_seqs)
        return {str(r): self.room_seqs[r] for r in itertools.islice(held, MAX_RESUME_ROOMS)}


def with_query(url: str, encoding: Encoding) -> str:
    if "v=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}v=1&encoding={encoding}"


class GatewayClient:
    def __init__(
        self,
        url: str,
        token: str | Callable[[], Awaitable[str]],
        encoding: Encoding = "json",
        *,
        discover: Callable[[], Awaitable[str]] | None = None,
        client_name: str = "shardchat-py",
        max_queue: int = 100_000,
        reconnect: bool = True,
        open_timeout: float = 10.0,
        resume_rooms: bool = True,
    ) -> None:
        self.url = url
        self._token = token
        self.encoding: Encoding = encoding
        self._discover = discover
        self._client_name = client_name
        self._reconnect = reconnect
        self._open_timeout = open_timeout
        self._resume_rooms = resume_rooms
        self.state = _State()
        self.ready: dict[str, Any] = {}
        self.user: dict[str, Any] = {}
        self.gateway_id: str | None = None
        self._events: asyncio.Queue[Dispatch | GatewayClosed] = asyncio.Queue(max_queue)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._first_ready: asyncio.Future[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closed: GatewayClosed | None = None
        self.reconnects = 0
        self.resumes = 0
        self._acked = True
        self._background: asyncio.Task[None] | None = None

    # -- public API --------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        token: str | Callable[[], Awaitable[str]],
        encoding: Encoding = "json",
        **kwargs: Any,
    ) -> GatewayClient:
        """Connect, IDENTIFY, and return once READY arrived."""
        client = cls(url, token, encoding, **kwargs)
        await client.start()
        return client

    async def start(self) -> None:
        self._first_ready = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run())
        try:
            await self._first_ready
        except BaseException:
            self._runner.cancel()
            raise

    async def close(self) -> None:
        """End the session (close 1000: not resumable)."""
        self._closed = self._closed or GatewayClosed(1000, "client closed")
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(BaseException):
                await self._runner
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close(1000)
        self._fail_pending(GatewayClosed(1000, "client closed"))

    async def drop(self, code: int = 4000) -> None:
        """Close the socket with a resumable code (tests: simulate a network drop)."""
        if self._ws is not None:
            await self._ws.close(code)

    async def subscribe(self, rooms: Mapping[int, int | None] | Iterable[int]) -> Any:
        """SUBSCRIBE; ``{room: after_seq}`` (None = from now), or room ids to resume from the
        last seq this client delivered (from now if none)."""
        items = (
            dict(rooms)
            if isinstance(rooms, Mapping)
            else {r: self.state.room_seqs.get(r) for r in rooms}
        )
        self.state.wanted.update(items)
        specs = []
        for room, after in items.items():
            spec: dict[str, Any] = {"room_id": str(room)}
            if after is not None:
                spec["after_seq"] = after
                # seqs up to after_seq count as delivered, so replays dedupe correctly
                self.state.room_seqs[room] = max(after, self.state.room_seqs.get(room, 0))
            specs.append(spec)
        return await self.request(SUBSCRIBE, {"rooms": specs})

    async def unsubscribe(self, room_ids: Iterable[int]) -> None:
        ids = list(room_ids)
        self.state.wanted.difference_update(ids)
        await self._send_frame({"op": UNSUBSCRIBE, "d": {"rooms": [str(r) for r in ids]}})

    async def send(
        self,
        room_id: int,
        content: str | None,
        nonce: str | None = None,
        attachment_ids: Iterable[int | str] = (),
        *,
        encrypted: Mapping[str, Any] | None = None,
    ) -> Any:
        """SEND and return the stored message (REPLY result). Retried with the same nonce
        across reconnects, so at most one message is ever created. ``attachment_ids``: from
        ``EdgeClient.upload``. An encrypted room takes ``encrypted``
        (``shardchat.e2e.E2EClient.encrypt``) and no ``content``."""
        nonce = nonce or secrets.token_hex(8)
        d: dict[str, Any] = {"room_id": str(room_id), "nonce": nonce}
        if content is not None:
            d["content"] = content
        if encrypted is not None:
            d["encrypted"] = dict(encrypted)
        files = [str(a) for a in attachment_ids]
        if files:
            d["attachment_ids"] = files
        return await self.request(SEND, d)

    async def typing(self, room_id: int) -> None:
        await self._send_frame({"op": TYPING, "d": {"room_id": str(room_id)}})

    async def presence(self, status: str) -> None:
        await self._send_frame({"op": PRESENCE_UPDATE, "d": {"status": status}})

    async def request(self, op: int, d: Any, wait_s: float = 30.0) -> Any:
        """Send an op that expects a REPLY and return its result; retry on connection loss."""
        deadline = time.monotonic() + wait_s
        while True:
            if self._closed is not None:
                raise self._closed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no REPLY in time")
            await asyncio.wait_for(self._connected.wait(), remaining)
            rid = next(self._ids)
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending[rid] = fut
            try:
                await self._send_frame({"op": op, "d": d, "id": rid})
                return await asyncio.wait_for(fut, max(deadline - time.monotonic(), 0.001))
            except (_Lost, websockets.ConnectionClosed):
                continue
            finally:
                self._pending.pop(rid, None)

    def __aiter__(self) -> AsyncIterator[Dispatch]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Dispatch]:
        while True:
            item = await self._events.get()
            if isinstance(item, GatewayClosed):
                self._events.put_nowait(item)  # every later reader sees the end too
                return
            yield item

    async def next_event(self, t: str | None = None, wait_s: float = 10.0) -> Dispatch:
        """The next dispatch (of type ``t`` when given), skipping others."""
        deadline = time.monotonic() + wait_s
        while True:
            item = await asyncio.wait_for(self._events.get(), max(deadline - time.monotonic(), 0))
            if isinstance(item, GatewayClosed):
                self._events.put_nowait(item)
                raise item
            if t is None or item.t == t:
                return item

    # -- connection loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.1
        url = self.url
        try:
            while True:
                try:
                    await self._session(url)
                    backoff = 0.1
                except GatewayClosed as closed:
                    self._finish(closed)
                    return
                except (OSError, websockets.WebSocketException, TimeoutError, _Lost) as exc:
                    log.debug("gateway connection lost: %r", exc)
                    if self._first_ready is not None and not self._first_ready.done():
                        self._first_ready.set_exception(exc)
                        return
                if not self._reconnect:
                    self._finish(GatewayClosed(None, "connection lost"))
                    return
                self.reconnects += 1
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 5.0)
                url = await self._next_url()
        except asyncio.CancelledError:
            raise

    async def _next_url(self) -> str:
        if self._discover is not None:
            with contextlib.suppress(Exception):
                return await self._discover()
        return self.state.resume_url or self.url

    def _finish(self, closed: GatewayClosed) -> None:
        self._closed = closed
        self._fail_pending(closed)
        if self._first_ready is not None and not self._first_ready.done():
            self._first_ready.set_exception(closed)
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(closed)

    async def _session(self, url: str) -> None:
        async with ws_connect(
            with_query(url, self.encoding),
            max_size=None,
            compression=None,
            open_timeout=self._open_timeout,
        ) as ws:
            self._ws = ws
            heartbeat: asyncio.Task[None] | None = None
            try:
                hello = self._decode(await asyncio.wait_for(ws.recv(), self._open_timeout))
                if hello.get("op") != HELLO:
                    raise _Lost("expected HELLO")
                interval = hello["d"]["heartbeat_interval_ms"] / 1000
                self.gateway_id = hello["d"].get("gateway_id")
                await self._identify_or_resume()
                heartbeat = asyncio.create_task(self._heartbeat(ws, interval))
                async for raw in ws:
                    await self._on_frame(self._decode(raw))
                self._raise_close(ws)
            except websockets.ConnectionClosed:
                self._raise_close(ws)
            finally:
                self._connected.clear()
                self._ws = None
                if heartbeat is not None:
                    heartbeat.cancel()
                self._fail_pending(_Lost("connection lost"))

    def _raise_close(self, ws: ClientConnection) -> None:
        code = ws.close_code
        reason = ws.close_reason or ""
        if self._closed is not None:
            raise self._closed
        if code is not None and (4500 <= code <= 4999 or code in (1000, 1001)):
            raise GatewayClosed(code, reason)
        raise _Lost(f"closed {code} {reason}")

    async def _token_value(self) -> str:
        return self._token if isinstance(self._token, str) else await self._token()

    async def _identify_or_resume(self) -> None:
        st = self.state
        token = await self._token_value()
        if st.session_id is not None:
            d: dict[str, Any] = {"token": token, "session_id": st.session_id, "seq": st.last_s or 0}
            rooms = st.resume_rooms() if self._resume_rooms else None
            if rooms:
                d["rooms"] = rooms
            await self._send_frame({"op": RESUME, "d": d}, force=True)
        else:
            await self._identify(token)

    async def _identify(self, token: str | None = None) -> None:
        token = token or await self._token_value()
        d = {"token": token, "client": {"name": self._client_name, "version": "1"}}
        await self._send_frame({"op": IDENTIFY, "d": d}, force=True)

    async def _heartbeat(self, ws: ClientConnection, interval: float) -> None:
        self._acked = True
        await asyncio.sleep(interval * random.random())
        while True:
            if not self._acked:
                # zombie connection: drop it with a resumable code and RESUME elsewhere
                await ws.close(4000, "heartbeat ACK missed")
                return
            self._acked = False
            await self._send_frame({"op": HEARTBEAT, "d": self.state.last_s}, force=True)
            await asyncio.sleep(interval)

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == DISPATCH:
            await self._on_dispatch(frame)
        elif op == HEARTBEAT_ACK:
            self._acked = True
        elif op == HEARTBEAT:
            await self._send_frame({"op": HEARTBEAT, "d": self.state.last_s}, force=True)
        elif op == REPLY:
            fut = self._pending.get(frame.get("id") or -1)
            d = frame.get("d") or {}
            if fut is not None and not fut.done():
                if d.get("ok"):
                    fut.set_result(d.get("result"))
                else:
                    err = d.get("error") or {}
                    code, message = err.get("code", "INTERNAL"), err.get("message", "")
                    fut.set_exception(ShardchatError(code, message, reason=err.get("reason")))
        elif op == INVALID_SESSION:
            self.state.session_id = None
            self.state.last_s = None
            self._connected.clear()
            await self._identify()
        elif op == RECONNECT:
            url = (frame.get("d") or {}).get("url")
            if url:
                self.state.resume_url = url
            if self._ws is not None:
                await self._ws.close(4000, "reconnect requested")

    async def _on_dispatch(self, frame: dict[str, Any]) -> None:
        st = self.state
        t: str = frame.get("t") or ""
        d: Any = frame.get("d")
        s: Any = frame.get("s")
        if isinstance(s, int):
            st.last_s = s
        if t == "READY":
            resubscribe = st.session_id is None and bool(st.wanted)
            st.session_id = d["session_id"]
            st.resume_url = d.get("resume_url") or st.resume_url
            self.ready, self.user = d, d.get("user") or {}
            self._set_connected()
            if resubscribe:
                # a new session after INVALID_SESSION: continue each room where we stopped
                self._background = asyncio.create_task(self._resubscribe())
        elif t == "RESUMED":
            self.resumes += 1
            self._set_connected()
        elif t == "ROOM_SUBSCRIBED" and isinstance(d, dict):
            room, seq = int(d["room_id"]), int(d["seq"])
            st.wanted.add(room)  # subscribed here (IDENTIFY ``subscribe`` too): RESUME lists it
            if not d.get("recovered", True):
                # history was not recoverable; the app refetches it; continue from the head
                st.room_seqs[room] = seq
            else:  # caught up to ``seq``: the position RESUME reports even before any event
                st.room_seqs[room] = max(seq, st.room_seqs.get(room, 0))
        elif isinstance(d, dict) and "seq" in d and "room_id" in d:
            room, seq = int(d["room_id"]), int(d["seq"])
            if seq <= st.room_seqs.get(room, 0):
                return  # already delivered (replay overlap)
            st.room_seqs[room] = seq
            if t == "MEMBER_LEAVE" and d.get("user_id") == self.user.get("id"):
                st.wanted.discard(room)  # we left: the gateway ended the subscription
        await self._events.put(Dispatch(t, d, s))

    async def _resubscribe(self) -> None:
        try:
            await self.subscribe(sorted(self.state.wanted))
        except Exception:
            log.warning("resubscribe after INVALID_SESSION failed", exc_info=True)

    def _set_connected(self) -> None:
        self._connected.set()
        if self._first_ready is not None and not self._first_ready.done():
            self._first_ready.set_result(None)

    # -- frames ------------------------------------------------------------------------------

    async def _send_frame(self, frame: dict[str, Any], force: bool = False) -> None:
        if not force:
            await self._connected.wait()
        ws = self._ws
        if ws is None:
            raise _Lost("not connected")
        if self.encoding == "json":
            await ws.send(msgspec.json.encode(frame).decode())
        else:
            await ws.send(msgspec.msgpack.encode(frame))

    def _decode(self, raw: str | bytes) -> dict[str, Any]:
        if isinstance(raw, str):
            frame = msgspec.json.decode(raw)
        elif self.encoding == "msgpack":
            frame = msgspec.msgpack.decode(raw)
        else:
            frame = msgspec.json.decode(raw)
        if not isinstance(frame, dict):
            raise _Lost("not an envelope")
        return frame

    def _fail_pending(self, exc: BaseException) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
