"""Files and images end to end through the GraphQL edge, on both stacks:

- ``embedded``: SQLite and the filesystem object store, its presigned URLs served by the edge
  (what ``shardchat dev`` runs);
- ``engines``: PostgreSQL and the S3 adapter on the real s3proxy of deploy/local (a fresh
  database and bucket per test), uploads and downloads going to s3proxy over HTTP.

The Python client (``EdgeClient.upload`` / ``download``) drives the edge app in-process (ASGI)
and the object store with the presigned URLs. Every bad input of the files issue has its test
here; each checks that nothing was stored or left behind.
"""

from __future__ import annotations

import asyncio
import io
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from chat_core.files.service import FileService, file_key, staging_key, thumb_key
from chat_core.files.worker import FileWorker
from chat_core.service import ChatService
from graphql_edge import EdgeSettings, create_app
from shardchat.adapters.fs_objects import FsObjectStore
from shardchat.adapters.memory_registry import MemoryRegistry
from shardchat.adapters.pg_store import PgStore
from shardchat.adapters.s3_objects import S3ObjectStore
from shardchat.adapters.sqlite_store import SqliteStore
from shardchat.client import EdgeClient, ShardchatError
from shardchat.config import Settings
from shardchat.migrate import migrate
from shardchat.objectstore import ObjectStore
from shardchat.registry import GatewayRecord
from shardchat.store import Store
from tests import engine_control
from tests.conftest import S3Target
from tests.files_fixtures import PE_EXE, has_gps, jpeg_with_gps, sha256
from user_core.service import AuthService

ROOM = "mutation($n: String!, $m: [ID!]) { createRoom(name: $n, memberIds: $m) { id } }"
SEND = (
    "mutation($r: ID!, $c: String!, $n: String!, $a: [ID!]) {"
    " sendMessage(roomId: $r, content: $c, nonce: $n, attachmentIds: $a) { id content"
    " attachments { id filename contentType size width height url downloadUrl thumbnailUrl } } }"
)
HISTORY = (
    "query($r: ID!) { messages(roomId: $r) { items { id content deleted"
    " attachments { id contentType width height url thumbnailUrl } } } }"
)
UPLOAD = (
    "mutation($r: ID!, $f: String!, $t: String!, $s: Int!, $h: String!) {"
    " createUpload(roomId: $r, filename: $f, contentType: $t, size: $s, sha256: $h)"
    " { id url method headers { name value } expiresAt } }"
)


class NoGateway:
    async def choose(self, key: str | None) -> GatewayRecord:
        raise RuntimeError("no gateway in these tests")


class Clock:
    """Real time, plus whatever a test skips ahead."""

    def __init__(self) -> None:
        self.skipped_ms = 0

    def __call__(self) -> int:
        import time

        return time.time_ns() // 1_000_000 + self.skipped_ms


@dataclass
class Stack:
    kind: str
    store: Store
    objects: ObjectStore
    chat: ChatService
    files: FileService
    worker: FileWorker
    clock: Clock
    app: Any
    http: httpx.AsyncClient  # the edge (ASGI)
    files_http: httpx.AsyncClient  # the object store's absolute URLs (s3proxy)

    def client(self) -> EdgeClient:
        return EdgeClient("http://edge", http=self.http, files_http=self.files_http)

    async def user(self, name: str | None = None) -> EdgeClient:
        c = self.client()
        await c.register(name or f"u{secrets.token_hex(4)}", "correct horse battery")
        return c

    async def room(self, owner: EdgeClient, *members: EdgeClient) -> str:
        ids = [m.session.user["id"] for m in members if m.session is not None]
        return str((await owner.graphql(ROOM, {"n": "files", "m": ids}))["createRoom"]["id"])

    async def history(self, c: EdgeClient, room: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await c.graphql(HISTORY, {"r": room}))["messages"]["items"]
        return items


Where = tuple[str, str | None, S3Target | None, str | None]


@pytest.fixture(params=["embedded", "engines"])
def where(request: pytest.FixtureRequest) -> Where:
    """(kind, pg dsn, s3, bucket). Sync: the engine fixtures probe with asyncio.run."""
    if request.param == "embedded":
        return "embedded", None, None, None
    return (
        "engines",
        request.getfixturevalue("fresh_pg_dsn"),
        request.getfixturevalue("s3"),
        request.getfixturevalue("fresh_bucket"),
    )


@asynccontextmanager
async def make_stack(where: Where, tmp: Path, **overrides: Any) -> AsyncIterator[Stack]:
    kind, dsn, s3, bucket = where
    settings = Settings(
        jwt_keys={"k": secrets.token_hex(32)},
        graphql_mutation_burst=1000,
        **overrides,
    )
    store: Store
    objects: ObjectStore
    routes: list[Any] = []
    if kind == "embedded":
        store = SqliteStore(str(tmp / "files.sqlite3"))
        fs = FsObjectStore(tmp / "objects", secrets.token_bytes(32))
        objects, routes = fs, fs.routes()
    else:
        assert dsn is not None and s3 is not None and bucket is not None
        store = PgStore(dsn, pool_size=4)
        objects = S3ObjectStore(
            s3.endpoint, bucket, access_key=s3.access_key, secret_key=s3.secret_key
        )
    await store.start()
    await migrate(store)
    await objects.start()
    clock = Clock()
    chat = ChatService(store, settings, clock_ms=clock)
    worker = FileWorker(store, objects, settings, "test", clock_ms=clock)
    files = FileService(store, objects, chat, settings, clock_ms=clock)
    chat.files = files
    auth = AuthService(store, MemoryRegistry(), settings)
    app = create_app(
        settings,
        auth,
        chat,
        NoGateway(),
        files=files,
        routes=routes,
        edge=EdgeSettings.from_settings(settings),
    )
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://edge") as http,
            httpx.AsyncClient() as files_http,
        ):
            yield Stack(kind, store, objects, chat, files, worker, clock, app, http, files_http)
    finally:
        await chat.close()
        await objects.close()
        await store.close()


@pytest.fixture
async def stack(where: Where, tmp_path: Path) -> AsyncIterator[Stack]:
    async with make_stack(where, tmp_path) as s:
        yield s


async def send(
    c: EdgeClient, room: str, files: list[str], content: str = "", nonce: str | None = None
) -> dict[str, Any]:
    variables = {"r": room, "c": content, "n": nonce or secrets.token_hex(6), "a": files}
    sent: dict[str, Any] = (await c.graphql(SEND, variables))["sendMessage"]
    return sent


@dataclass
class Declared:
    """An upload URL granted for ``body`` (declared as ``declare`` was told), and its PUT."""

    client: EdgeClient
    id: str
    url: str
    headers: dict[str, str]

    async def put(self, body: bytes) -> httpx.Response:
        return await self.client._object_request(
            "PUT", self.url, content=body, headers=self.headers
        )


async def declare(
    c: EdgeClient, room: str, body: bytes, kind: str = "text/plain", **declared: Any
) -> Declared:
    """createUpload for ``body``; ``declared`` overrides what is claimed (``s``, ``h``)."""
    variables = {"r": room, "f": "f.bin", "t": kind, "s": len(body), "h": sha256(body)}
    up = (await c.graphql(UPLOAD, variables | declared))["createUpload"]
    headers = {h["name"]: h["value"] for h in up["headers"]}
    return Declared(c, up["id"], up["url"], headers)


async def refused(coro: Any, code: str, match: str) -> ShardchatError:
    with pytest.raises(ShardchatError) as info:
        await coro
    assert info.value.code == code, info.value
    assert match in info.value.message, info.value.message
    return info.value


async def files_get(
    s: Stack, c: EdgeClient, upload_id: str, suffix: str = "", **headers: str
) -> httpx.Response:
    auth = {"Authorization": f"Bearer {await c.access_token()}", **headers}
    return await s.http.get(f"/files/{upload_id}{suffix}", headers=auth)


# --- the happy path -------------------------------------------------------------------------------
async def test_upload_send_download_and_thumbnail(stack: Stack) -> None:
    alice, bob, carol = await stack.user(), await stack.user(), await stack.user()
    room = await stack.room(alice, bob)
    photo = jpeg_with_gps(640, 480, orientation=6)
    upload_id = await alice.upload(room, photo, "holiday.jpg", "image/jpeg")

    sent = await send(alice, room, [upload_id], content="")  # a picture alone: no text needed
    (att,) = sent["attachments"]
    assert att["id"] == upload_id and att["url"] == f"/files/{upload_id}"
    assert (att["filename"], att["contentType"], att["width"], att["height"]) == (
        "holiday.jpg",
        "image/jpeg",
        480,  # as displayed: orientation 6 turns the 640 x 480 pixels upright
        640,
    )
    assert att["thumbnailUrl"] is None  # made off the request path, not yet

    # MESSAGE_CREATE (the durable event the gateways deliver) carries the attachment too
    events = await stack.store.events_after(int(room), 0, 10)
    created = next(e for e in events if e.type == "MESSAGE_CREATE")
    (data,) = created.data["attachments"]
    assert data == {
        "id": upload_id,
        "filename": "holiday.jpg",
        "content_type": "image/jpeg",
        "size": att["size"],
        "width": 480,
        "height": 640,
        "url": f"/files/{upload_id}",
    }

    # bob (a member) downloads what is served: the same pixels, no location
    served = await bob.download(upload_id)
    assert len(served) == att["size"] and not has_gps(served)
    with Image.open(io.BytesIO(served)) as im, Image.open(io.BytesIO(photo)) as orig:
        assert im.tobytes() == orig.tobytes()
    redirect = await files_get(stack, bob, upload_id)
    assert redirect.status_code == 302 and redirect.headers["cache-control"] == "no-store"
    assert redirect.headers["location"]

    # the thumbnail: not yet (Retry-After), then made by the worker
    pending = await files_get(stack, bob, upload_id, "/thumbnail", Accept="application/json")
    assert pending.status_code == 404 and pending.headers["retry-after"] == "1"
    assert await stack.worker.make_thumbnails() == 1
    thumb = await bob.download(upload_id, thumbnail=True)
    with Image.open(io.BytesIO(thumb)) as im:
        assert im.format == "WEBP" and max(im.size) == 320 and im.size[1] > im.size[0]
        assert not im.getexif()
    (item,) = await stack.history(bob, room)
    assert item["attachments"][0]["thumbnailUrl"]
    assert await stack.objects.head(thumb_key(int(upload_id))) is not None
    assert await stack.objects.head(staging_key(int(upload_id))) is None  # the PUT's copy: gone

    # a non-member gets nothing (to them the room does not exist); nor does a member who left
    denied = await files_get(stack, carol, upload_id, Accept="application/json")
    assert denied.status_code == 404 and denied.json()["error"]["code"] == "NOT_FOUND"
    await bob.graphql("mutation($r: ID!) { leaveRoom(roomId: $r) }", {"r": room})
    await refused(bob.download(upload_id), "NOT_FOUND", "room not found")
    anonymous = await stack.http.get(f"/files/{upload_id}")
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    missing = await files_get(stack, alice, "123456789", Accept="application/json")
    assert missing.status_code == 404


async def test_a_retried_send_attaches_once(stack: Stack) -> None:
    alice = await stack.user()
    room = await stack.room(alice)
    up = await alice.upload(room, b"notes\n", "notes.txt", "text/plain")
    first = await send(alice, room, [up], "see attached", nonce="same")
    again = await send(alice, room, [up], "see attached", nonce="same")
    for m in (first, again):  # the same message; only the fresh download URLs differ
        for att in m["attachments"]:
            assert att.pop("downloadUrl")
    assert again == first and [a["id"] for a in first["attachments"]] == [up]
    assert len(await stack.history(alice, room)) == 1


# --- bad input: each refused with a clear error, nothing stored, nothing left behind --------------
async def test_create_upload_checks(stack: Stack) -> None:
    alice, bob = await stack.user(), await stack.user()
    room = await stack.room(alice)
    ok = {"r": room, "f": "a.txt", "t": "text/plain", "s": 5, "h": sha256(b"hello")}
    cases: list[tuple[EdgeClient, dict[str, Any], str, str]] = [
        (bob, {}, "NOT_FOUND", "room not found"),  # not a member: no such room to them
        (alice, {"r": "4242424242"}, "NOT_FOUND", "room not found"),
        (alice, {"s": 0}, "BAD_USER_INPUT", "positive"),
        (alice, {"s": 25 * 1024 * 1024 + 1}, "BAD_USER_INPUT", "larger than 25 MiB"),
        (alice, {"t": "text/html"}, "BAD_USER_INPUT", "text/html are not accepted"),
        (alice, {"t": "image/svg+xml"}, "BAD_USER_INPUT", "not accepted"),
        (alice, {"h": "abc"}, "BAD_USER_INPUT", "64 hex digits"),
        (alice, {"f": "../etc/passwd"}, "BAD_USER_INPUT", "slashes"),
        (alice, {"f": " "}, "BAD_USER_INPUT", "filename must not be empty"),
    ]
    for who, change, code, match in cases:
        await refused(who.graphql(UPLOAD, {**ok, **change}), code, match)
    assert await stack.store.uploads_to_sweep(stack.clock() + 10**12, 10) == []  # none stored


async def test_wrong_checksum_is_refused_and_leaves_nothing(stack: Stack) -> None:
    alice = await stack.user()
    room = await stack.room(alice)
    body = b"the real bytes\n"
    up = await declare(alice, room, body, h=sha256(b"other bytes!!!\n"))
    assert (await up.put(body)).status_code == 200
    await refused(send(alice, room, [up.id], "x"), "BAD_USER_INPUT", "SHA-256 does not match")
    assert await stack.history(alice, room) == []
    uid = int(up.id)
    assert await stack.objects.head(staging_key(uid)) is None
    assert await stack.objects.head(file_key(uid)) is None
    assert (await stack.store.get_uploads([uid]))[uid].state == "rejected"
    await refused(send(alice, room, [up.id], "x"), "BAD_USER_INPUT", "was refused: the file's")


async def test_wrong_size_is_refused(stack: Stack) -> None:
    alice = await stack.user()
    room = await stack.room(alice)
    body = b"0123456789"
    up = await declare(alice, room, body, "application/octet-stream")
    longer = await up.put(body + b"!")
    assert longer.status_code == 403  # the store holds the uploader to the signed length
    await refused(send(alice, room, [up.id], "x"), "BAD_USER_INPUT", "has not been uploaded yet")
    # a store that let a shorter object through: the server's own check refuses it
    uid = int(up.id)
    await stack.objects.put(staging_key(uid), body[:7], "application/octet-stream")
    await refused(send(alice, room, [up.id], "x"), "BAD_USER_INPUT", "7 bytes, not the 10")
    assert await stack.objects.head(staging_key(uid)) is None
    assert await stack.history(alice, room) == []


async def test_an_executable_disguised_as_an_image_is_refused(stack: Stack) -> None:
    alice = await stack.user()
    room = await stack.room(alice)
    up = await alice.upload(room, PE_EXE, "cat.png", "image/png")  # the store takes any bytes
    await refused(send(alice, room, [up], "cute"), "BAD_USER_INPUT", "executable program")
    assert await stack.history(alice, room) == []
    assert await stack.objects.head(staging_key(int(up))) is None
    assert await stack.objects.head(file_key(int(up))) is None


async def test_an_expired_upload_url_is_refused(where: Where, tmp_path: Path) -> None:
    async with make_stack(where, tmp_path, upload_url_ttl_s=1) as s:
        alice = await s.user()
        room = await s.room(alice)
        body = b"too late"
        up = await declare(alice, room, body)
        await asyncio.sleep(2.2)
        assert (await up.put(body)).status_code == 403
        await refused(send(alice, room, [up.id], "x"), "BAD_USER_INPUT", "upload URL expired")
        assert await s.history(alice, room) == []


async def test_attachment_ids_of_another_user_room_or_message(stack: Stack) -> None:
    alice, bob = await stack.user(), await stack.user()
    room, other_room = await stack.room(alice, bob), await stack.room(alice, bob)
    bobs = await bob.upload(room, b"bob's file", "b.txt", "text/plain")
    elsewhere = await alice.upload(other_room, b"for the other room", "o.txt", "text/plain")
    mine = await alice.upload(room, b"alice's file", "a.txt", "text/plain")
    await refused(send(alice, room, [mine, bobs], "x"), "NOT_FOUND", f"upload {bobs} not found")
    await refused(send(alice, room, [mine, elsewhere], "x"), "BAD_USER_INPUT", "another room")
    await refused(send(alice, room, [mine, mine], "x"), "BAD_USER_INPUT", "listed twice")
    await refused(send(alice, room, ["12x"], "x"), "BAD_USER_INPUT", "attachmentIds")
    assert await stack.history(alice, room) == []  # nothing half-attached by any of them
    await send(alice, room, [mine], "first")
    await refused(send(alice, room, [mine], "again"), "BAD_USER_INPUT", "already attached")
    assert len(await stack.history(alice, room)) == 1


async def test_storage_quota(where: Where, tmp_path: Path) -> None:
    async with make_stack(where, tmp_path, user_quota_bytes=100) as s:
        alice = await s.user()
        room = await s.room(alice)
        await alice.upload(room, b"x" * 60, "a.bin")
        await refused(alice.upload(room, b"y" * 60, "b.bin"), "BAD_USER_INPUT", "quota exceeded")
        await alice.upload(room, b"z" * 40, "c.bin")  # what is left still fits


# --- lifecycle ------------------------------------------------------------------------------------
async def test_sweeper_removes_expired_uploads_and_deleted_files(stack: Stack) -> None:
    alice = await stack.user()
    room = await stack.room(alice)
    never = int(await alice.upload(room, b"never sent", "n.txt", "text/plain"))
    kept = await alice.upload(room, b"sent", "k.txt", "text/plain")
    sent = await send(alice, room, [kept], "here")
    assert await stack.worker.sweep() == 0  # nothing due yet
    assert await stack.objects.head(staging_key(never)) is not None

    await alice.graphql("mutation($m: ID!) { deleteMessage(id: $m) }", {"m": sent["id"]})
    gone = await files_get(stack, alice, kept, Accept="application/json")
    assert gone.status_code == 404  # at once, before any sweep
    assert await stack.worker.sweep() == 3  # the deleted message's objects
    assert await stack.objects.head(file_key(int(kept))) is None

    stack.clock.skipped_ms = (stack.files.settings.upload_ttl_s + 1) * 1000
    assert await stack.worker.sweep() == 3  # the never-attached upload, past its TTL
    assert await stack.objects.head(staging_key(never)) is None
    assert await stack.store.get_uploads([never, int(kept)]) == {}
    assert await stack.worker.sweep() == 0


async def test_a_put_repeated_after_the_send_is_swept(stack: Stack) -> None:
    alice = await stack.user()
    room = await stack.room(alice)
    body = b"checked bytes"
    up = await declare(alice, room, body)
    assert (await up.put(body)).is_success
    await send(alice, room, [up.id], "x")
    # the URL is still valid: a second PUT lands in the staging object, never in what is served
    assert (await up.put(b"other bytes!!")).is_success
    assert await alice.download(up.id) == body
    stack.clock.skipped_ms = (stack.files.settings.upload_url_ttl_s + 1) * 1000
    assert await stack.worker.sweep() == 1
    assert await stack.objects.head(staging_key(int(up.id))) is None
    assert await alice.download(up.id) == body
    assert await stack.worker.sweep() == 0


async def test_thumbnail_of_an_image_that_cant_be_decoded_fails_cleanly(stack: Stack) -> None:
    alice = await stack.user()
    room = await stack.room(alice)
    photo = jpeg_with_gps(64, 48)
    up = await alice.upload(room, photo, "p.jpg", "image/jpeg")
    await send(alice, room, [up], "x")
    await stack.objects.put(file_key(int(up)), photo[:300], "image/jpeg")  # damaged in storage
    assert await stack.worker.make_thumbnails() == 1
    assert (await stack.store.get_uploads([int(up)]))[int(up)].thumb == "failed"
    none = await files_get(stack, alice, up, "/thumbnail", Accept="application/json")
    assert none.status_code == 404 and "retry-after" not in none.headers


# --- the object store down (the real s3proxy, stopped) --------------------------------------------
@pytest.fixture
def engines(request: pytest.FixtureRequest) -> Where:
    return (
        "engines",
        request.getfixturevalue("fresh_pg_dsn"),
        request.getfixturevalue("s3"),
        request.getfixturevalue("fresh_bucket"),
    )


async def test_object_store_down_fails_the_send_cleanly(engines: Where, tmp_path: Path) -> None:
    async with make_stack(engines, tmp_path) as s:
        alice = await s.user()
        room = await s.room(alice)
        up = await alice.upload(room, b"precious", "p.txt", "text/plain")
        await engine_control.stop("s3")
        try:
            err = await refused(
                send(alice, room, [up], "x", nonce="n-down"), "INTERNAL", "unavailable"
            )
            assert "try again" in err.message
            assert await s.history(alice, room) == []  # no message, nothing half-attached
            pending = (await s.store.get_uploads([int(up)]))[int(up)]
            assert (pending.state, pending.message_id) == ("pending", None)
            # presigning is local: new uploads still get their URL (the PUT will fail)
            assert (await declare(alice, room, b"q")).url.startswith("http://")
        finally:
            await engine_control.start("s3")
        sent = await send(alice, room, [up], "x", nonce="n-down")  # the retry goes through
        assert [a["id"] for a in sent["attachments"]] == [up]
        assert await alice.download(up) == b"precious"
