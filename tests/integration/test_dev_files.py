"""Files in ``shardchat dev``: one real process on the filesystem object store, driven over real
HTTP and WebSocket. An image goes up through the presigned URL the edge serves, is attached
with SEND over the gateway, reaches the other member in MESSAGE_CREATE, and is downloaded (and
its thumbnail) by that member; the files sit under the data folder."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from shardchat.client import EdgeClient, GatewayClient, ShardchatError
from tests.browser.dev_process import run_dev
from tests.files_fixtures import has_gps, jpeg_with_gps

pytestmark = pytest.mark.timeout(120)

ROOM = "mutation($n: String!, $m: [ID!]) { createRoom(name: $n, memberIds: $m) { id } }"


async def test_dev_uploads_attaches_and_serves_files(tmp_path: Path) -> None:
    photo = jpeg_with_gps(300, 200, orientation=None)
    with run_dev(tmp_path) as dev:
        async with EdgeClient(dev.edge_url) as alice, EdgeClient(dev.edge_url) as bob:
            await alice.register("alice", "correct horse battery")
            b = await bob.register("bob", "battery staple horse")
            room = int(
                (await alice.graphql(ROOM, {"n": "pics", "m": [b.user["id"]]}))["createRoom"]["id"]
            )
            upload_id = await alice.upload(room, photo, "beach.jpg", "image/jpeg")

            url, _ = await alice.gateway(key=str(room))
            ga = await GatewayClient.connect(url, alice.access_token)
            gb = await GatewayClient.connect(url, bob.access_token)
            try:
                await gb.subscribe([room])
                reply = await ga.send(room, "", attachment_ids=[upload_id])
                (att,) = reply["attachments"]
                assert (att["id"], att["width"], att["height"]) == (upload_id, 300, 200)
                got = await gb.next_event("MESSAGE_CREATE")
                assert got.d["attachments"] == reply["attachments"]
                assert got.d["attachments"][0]["url"] == f"/files/{upload_id}"
            finally:
                await ga.close()
                await gb.close()

            served = await bob.download(upload_id)
            assert not has_gps(served)
            with Image.open(io.BytesIO(served)) as im:
                assert im.size == (300, 200)
            for _ in range(100):  # made off the request path, in the dev process's worker
                try:
                    thumb = await bob.download(upload_id, thumbnail=True)
                    break
                except ShardchatError as exc:
                    assert exc.code == "NOT_FOUND"
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("no thumbnail within 10 s")
            with Image.open(io.BytesIO(thumb)) as im:
                assert im.format == "WEBP" and im.size == (300, 200)  # never enlarged

            # the presigned URL is the edge's own, and tampering with it is refused
            async with httpx.AsyncClient(base_url=dev.edge_url, timeout=10) as http:
                token = await bob.access_token()
                link = await http.get(
                    f"/files/{upload_id}",
                    headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                )
                signed = link.json()["url"]
                assert signed.startswith("/objects/files/")
                ok = await http.get(signed)
                assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
                assert ok.headers["x-content-type-options"] == "nosniff"
                forged = await http.get(signed.replace("image%2Fjpeg", "text%2Fhtml"))
                assert forged.status_code == 403
        code, _ = dev.interrupt()
        assert code == 0, dev.output()
    stored = list((tmp_path / "data" / "files" / "objects" / "files").iterdir())
    assert [p.name for p in stored] == [upload_id]
    assert "Traceback" not in dev.output(), dev.output()
