"""One contract suite for the ObjectStore port, run on the filesystem adapter (its presigned URLs
served by its own routes, as the edge mounts them) and on the S3 adapter against the real
s3proxy of deploy/local (a fresh bucket per test). Uploads and downloads go over HTTP with the
presigned URLs, exactly as a browser would send them."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from shardchat.adapters.fs_objects import FsObjectStore
from shardchat.adapters.s3_objects import S3ObjectStore
from shardchat.objectstore import ObjectStore, ObjectStoreUnavailable, ObjectTooLarge
from tests.conftest import S3Target


@dataclass
class Target:
    store: ObjectStore
    http: httpx.AsyncClient  # resolves the store's (possibly relative) URLs


@pytest.fixture(params=["filesystem", "s3"])
def store_spec(request: pytest.FixtureRequest) -> tuple[str, S3Target | None, str]:
    """(adapter, s3 target, bucket). Sync on purpose: the ``s3`` probe runs asyncio.run, which
    cannot run inside an async fixture's loop, so the engine is requested from here."""
    if request.param == "filesystem":
        return "filesystem", None, ""
    return "s3", request.getfixturevalue("s3"), request.getfixturevalue("fresh_bucket")


@pytest.fixture
async def target(
    store_spec: tuple[str, S3Target | None, str], tmp_path: Path
) -> AsyncIterator[Target]:
    _, s3, bucket = store_spec
    store: ObjectStore
    if s3 is None:
        fs = FsObjectStore(tmp_path / "files", secrets.token_bytes(32))
        transport = httpx.ASGITransport(app=Starlette(routes=fs.routes()))
        http = httpx.AsyncClient(transport=transport, base_url="http://edge")
        store = fs
    else:
        store = S3ObjectStore(
            s3.endpoint, bucket, access_key=s3.access_key, secret_key=s3.secret_key
        )
        http = httpx.AsyncClient()
    await store.start()
    try:
        yield Target(store, http)
    finally:
        await http.aclose()
        await store.close()


async def test_put_head_get_delete(target: Target) -> None:
    store = target.store
    assert await store.head("a/1") is None
    assert await store.get("a/1", 100) is None
    await store.put("a/1", b"hello", "text/plain")
    info = await store.head("a/1")
    assert info is not None and (info.size, info.content_type) == (5, "text/plain")
    assert await store.get("a/1", 100) == b"hello"
    await store.put("a/1", b"bye", "application/octet-stream")  # replaces
    assert await store.get("a/1", 100) == b"bye"
    await store.delete(["a/1", "never/there"])  # a missing key is fine
    await store.delete(["a/1"])
    assert await store.head("a/1") is None


async def test_get_refuses_more_than_max_bytes(target: Target) -> None:
    await target.store.put("big/1", b"x" * 2048, "application/octet-stream")
    with pytest.raises(ObjectTooLarge):
        await target.store.get("big/1", 2047)
    assert await target.store.get("big/1", 2048) == b"x" * 2048


async def test_bad_keys_are_refused(target: Target) -> None:
    for key in ("", "/abs", "a/../b", "a//b", "sp ace", "é"):
        with pytest.raises(ValueError):
            await target.store.put(key, b"x", "text/plain")
        with pytest.raises(ValueError):
            await target.store.presign_get(key, 60, "text/plain", "inline")


async def test_presigned_put_stores_exactly_the_signed_upload(target: Target) -> None:
    body = secrets.token_bytes(3000)
    up = await target.store.presign_put("u/1", "image/png", len(body), 60)
    assert up.method == "PUT" and up.headers == {"Content-Type": "image/png"}
    resp = await target.http.put(up.url, content=body, headers=up.headers)
    assert resp.status_code == 200, resp.text
    info = await target.store.head("u/1")
    assert info is not None and (info.size, info.content_type) == (len(body), "image/png")
    assert await target.store.get("u/1", len(body)) == body


async def test_presigned_put_refuses_other_type_or_length(target: Target) -> None:
    up = await target.store.presign_put("u/2", "image/png", 10, 60)
    wrong_type = await target.http.put(
        up.url, content=b"0123456789", headers={"Content-Type": "text/html"}
    )
    assert wrong_type.status_code == 403
    longer = await target.http.put(up.url, content=b"0123456789AB", headers=up.headers)
    assert longer.status_code == 403
    shorter = await target.http.put(up.url, content=b"0123", headers=up.headers)
    assert shorter.status_code == 403
    assert await target.store.head("u/2") is None  # nothing stored by any of them


async def test_presigned_urls_expire(target: Target) -> None:
    await target.store.put("e/1", b"kept", "text/plain")
    up = await target.store.presign_put("e/2", "text/plain", 4, 1)
    get_url = await target.store.presign_get("e/1", 1, "text/plain", "inline")
    await asyncio.sleep(2.2)  # SigV4 deadlines have one-second resolution
    late_put = await target.http.put(up.url, content=b"late", headers=up.headers)
    assert late_put.status_code == 403
    assert await target.store.head("e/2") is None
    assert (await target.http.get(get_url)).status_code == 403


async def test_presigned_get_answers_with_the_signed_headers(target: Target) -> None:
    await target.store.put("g/1", b"%PDF-1.7 body", "application/pdf")
    disposition = "attachment; filename=\"report.pdf\"; filename*=UTF-8''r%C3%A9port.pdf"
    url = await target.store.presign_get("g/1", 60, "application/pdf", disposition)
    resp = await target.http.get(url)
    assert resp.status_code == 200
    assert resp.content == b"%PDF-1.7 body"
    assert resp.headers["content-type"].startswith("application/pdf")
    assert resp.headers["content-disposition"] == disposition
    tampered = url.replace("application%2Fpdf", "text%2Fhtml")
    assert tampered != url
    assert (await target.http.get(tampered)).status_code == 403


async def test_presigning_needs_no_round_trip(target: Target) -> None:
    # Works while the store is unreachable (signing is local): checked here while it is up
    # that no object needs to exist, and below for a store that is down.
    url = await target.store.presign_get("absent/1", 60, "text/plain", "inline")
    assert (await target.http.get(url)).status_code == 404


async def test_an_unreachable_store_raises_unavailable(tmp_path: Path) -> None:
    # Nothing listens on port 9 (discard) of this host: every call must fail cleanly.
    down = S3ObjectStore(
        "http://127.0.0.1:9", "b", access_key="k", secret_key="s", create_bucket=False
    )
    await down.start()
    try:
        assert (await down.presign_put("k/1", "text/plain", 1, 60)).url.startswith("http://")
        outcomes = await asyncio.gather(
            down.ping(),
            down.head("k/1"),
            down.get("k/1", 10),
            down.put("k/1", b"x", "text/plain"),
            down.delete(["k/1"]),
            return_exceptions=True,
        )
        assert [type(o) for o in outcomes] == [ObjectStoreUnavailable] * 5, outcomes
    finally:
        await down.close()
    # A filesystem store whose folder is unusable (a file where its objects folder belongs).
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "objects").write_text("not a folder")
    fs = FsObjectStore(broken, b"k" * 32)
    with pytest.raises(ObjectStoreUnavailable):
        await fs.put("k/1", b"x", "text/plain")
