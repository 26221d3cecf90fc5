"""Files benchmark: upload and download throughput (MiB/s) and latency, per file size.

    python -m loadtest.files --sizes-mib 1,25 --files 12 --concurrency 4 --engines

For each size, ``--files`` files of random bytes go through the whole upload path, by
``--concurrency`` users at once: ``createUpload``, the PUT straight to the object store, then
``sendMessage`` with the attachment (the server reads the object back, checks size, SHA-256 and
type, and stores the checked copy). Then each file is downloaded by another member: ``GET
/files/{id}`` for a presigned URL, then the GET of the bytes (their length is checked).
Throughput is the bytes of a phase over its wall time; latency is per file (upload: the three
steps; download: both requests), with the PUT and the attach step also reported apart.

By default the edge is a ``shardchat dev`` started here (SQLite, the filesystem object store:
the edge itself receives the PUTs and serves the GETs); ``--engines`` starts ``shardchat edge``
on the local PostgreSQL, Kafka, Redis and s3proxy (a fresh database and topic; the objects in the
bucket ``shardchat-bench``), ``--url`` targets a running edge. The messages are deleted at the
end, so the sweeper removes the objects (``--engines``: within a few seconds). Bounded: at most
``len(sizes) x files`` uploads and as many downloads, on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from loadtest.edge import (
    CREATE_ROOM,
    EdgeError,
    add_server_options,
    engines_edge,
    gql,
    local_edge,
    register,
)
from loadtest.fanout import run as run_loop
from loadtest.report import Latency, build_result, now_iso, write_json
from shardchat.config import load_settings

MIB = 1024 * 1024
CREATE_UPLOAD = (
    "mutation($r: ID!, $f: String!, $t: String!, $s: Int!, $h: String!) {"
    " createUpload(roomId: $r, filename: $f, contentType: $t, size: $s, sha256: $h)"
    " { id url method headers { name value } } }"
)
SEND = (
    "mutation($r: ID!, $n: String!, $a: [ID!]) "
    '{ sendMessage(roomId: $r, content: "", nonce: $n, attachmentIds: $a) { id } }'
)
DELETE = "mutation($m: ID!) { deleteMessage(id: $m) }"
#: What the servers started here need on top of the edge benchmark's settings.
SERVER_SETTINGS = {
    "SHARDCHAT_USER_QUOTA_BYTES": str(1 << 40),
    "SHARDCHAT_MAX_UPLOAD_BYTES": str(64 * MIB),
    "SHARDCHAT_FILES_SWEEP_INTERVAL_S": "1",
}


class User:
    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=300)
        self.name = name
        self.token = ""
        self.user_id = ""

    async def register(self) -> None:
        self.token, self.user_id = await register(self.http, self.name)

    async def store_request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        """A presigned URL: a relative one is the edge's (filesystem store)."""
        return await self.http.request(method, urljoin(self.url + "/", url), **kw)


class Phase:
    """One direction at one size: per-file latencies and the bytes over the wall time."""

    def __init__(self) -> None:
        self.latency = Latency()
        self.parts: dict[str, Latency] = {}
        self.files = 0
        self.errors: list[str] = []
        self.wall_s = 0.0

    def part(self, name: str, ms: float) -> None:
        self.parts.setdefault(name, Latency()).record_ms(ms)

    def summary(self, size: int) -> dict[str, Any]:
        moved = self.files * size
        return {
            "files": self.files,
            "errors": len(self.errors),
            "first_errors": self.errors[:3],
            "wall_s": round(self.wall_s, 3),
            "mib_per_s": round(moved / MIB / self.wall_s, 2) if self.wall_s else 0.0,
            "files_per_s": round(self.files / self.wall_s, 2) if self.wall_s else 0.0,
            "latency_ms": self.latency.summary(),
            **{f"{k}_ms": v.summary() for k, v in self.parts.items()},
        }


async def upload_one(
    user: User, room: str, data: bytes, digest: str, phase: Phase
) -> tuple[str, str]:
    """(message id, upload id)."""
    t0 = time.perf_counter()
    up = (
        await gql(
            user.http,
            CREATE_UPLOAD,
            {
                "r": room,
                "f": "bench.bin",
                "t": "application/octet-stream",
                "s": len(data),
                "h": digest,
            },
            user.token,
        )
    )["createUpload"]
    headers = {h["name"]: h["value"] for h in up["headers"]}
    put = await user.store_request(up["method"], up["url"], content=data, headers=headers)
    if put.status_code >= 300:
        raise EdgeError(f"PUT {put.status_code}: {put.text[:200]}")
    t1 = time.perf_counter()
    sent = await gql(user.http, SEND, {"r": room, "n": up["id"], "a": [up["id"]]}, user.token)
    t2 = time.perf_counter()
    phase.part("put", (t1 - t0) * 1000)
    phase.part("attach", (t2 - t1) * 1000)
    phase.latency.record_ms((t2 - t0) * 1000)
    phase.files += 1
    return str(sent["sendMessage"]["id"]), str(up["id"])


async def download_one(user: User, upload_id: str, size: int, phase: Phase) -> None:
    t0 = time.perf_counter()
    link = await user.http.get(
        f"/files/{upload_id}",
        headers={"Authorization": f"Bearer {user.token}", "Accept": "application/json"},
    )
    if link.status_code != 200:
        raise EdgeError(f"/files {link.status_code}: {link.text[:200]}")
    got = await user.store_request("GET", link.json()["url"])
    if got.status_code != 200 or len(got.content) != size:
        raise EdgeError(f"GET {got.status_code}, {len(got.content)} bytes of {size}")
    phase.latency.record_ms((time.perf_counter() - t0) * 1000)
    phase.files += 1


async def run_phase(jobs: list[Any], concurrency: int, phase: Phase) -> list[Any]:
    """Run the coroutines ``concurrency`` at a time; time the whole phase."""
    gate = asyncio.Semaphore(concurrency)
    results: list[Any] = []

    async def one(job: Any) -> None:
        async with gate:
            try:
                results.append(await job)
            except Exception as exc:
                phase.errors.append(repr(exc))

    started = time.perf_counter()
    await asyncio.gather(*(one(j) for j in jobs))
    phase.wall_s = time.perf_counter() - started
    return results


async def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    uploaders = [User(url, f"files-{run_id}-{i}") for i in range(args.concurrency)]
    reader = User(url, f"files-{run_id}-reader")
    users = [*uploaders, reader]
    for u in users:  # argon2 per registration: one at a time is kind to a 2-core box
        await u.register()
    owner = uploaders[0]
    room = (
        await gql(
            owner.http,
            CREATE_ROOM,
            {"n": "files bench", "m": [u.user_id for u in users[1:]]},
            owner.token,
        )
    )["createRoom"]["id"]

    per_size: dict[str, Any] = {}
    sent: list[tuple[str, str]] = []
    total = Latency()
    started_at, t0 = now_iso(), time.monotonic()
    for mib in args.sizes_mib:
        size = int(mib * MIB)
        data = os.urandom(size)
        digest = hashlib.sha256(data).hexdigest()
        up, down = Phase(), Phase()
        jobs = [
            upload_one(uploaders[i % len(uploaders)], room, data, digest, up)
            for i in range(args.files)
        ]
        done = await run_phase(jobs, args.concurrency, up)
        sent += done
        await run_phase(
            [download_one(reader, upload, size, down) for _, upload in done],
            args.concurrency,
            down,
        )
        total.merge(up.latency)
        per_size[f"{mib:g}MiB"] = {"upload": up.summary(size), "download": down.summary(size)}
        print(
            f"{mib:g} MiB x {args.files}: upload {per_size[f'{mib:g}MiB']['upload']['mib_per_s']}"
            f" MiB/s, download {per_size[f'{mib:g}MiB']['download']['mib_per_s']} MiB/s"
        )
    duration = time.monotonic() - t0

    for message_id, _ in sent:  # the sweeper removes their objects
        with contextlib.suppress(Exception):
            await gql(owner.http, DELETE, {"m": message_id}, owner.token)
    for u in users:
        await u.http.aclose()

    errors = sum(s[k]["errors"] for s in per_size.values() for k in ("upload", "download"))
    result = build_result(
        "files",
        started_at=started_at,
        duration_s=duration,
        params={
            "sizes_mib": args.sizes_mib,
            "files": args.files,
            "concurrency": args.concurrency,
            "server_settings": {} if args.url else SERVER_SETTINGS,
            "edge": args.url
            or (
                "shardchat edge on the local engines (postgres, kafka, redis, s3proxy)"
                if args.engines
                else "local shardchat dev (sqlite, filesystem object store)"
            ),
        },
        counters={
            "sent": len(args.sizes_mib) * args.files,
            "delivered": len(sent),
            "errors": errors,
        },
        latency=total,
        extra={"sizes": per_size},
    )
    write_json(result, args.out)
    print(f"-> {args.out}")
    return per_size


@contextlib.asynccontextmanager
async def serve(args: argparse.Namespace) -> AsyncIterator[str]:
    if args.url:
        yield args.url.rstrip("/")
        return
    log = Path(args.server_log)
    if not args.engines:
        async with local_edge(log, SERVER_SETTINGS) as url:
            yield url
        return
    s3 = load_settings()  # the s3proxy of deploy/local, as SHARDCHAT_S3_* name it
    settings = SERVER_SETTINGS | {
        "SHARDCHAT_OBJECT_STORE": "s3",
        "SHARDCHAT_S3_ENDPOINT": s3.s3_endpoint,
        "SHARDCHAT_S3_ACCESS_KEY": s3.s3_access_key,
        "SHARDCHAT_S3_SECRET_KEY": s3.s3_secret_key,
        "SHARDCHAT_S3_BUCKET": "shardchat-bench",
    }
    async with engines_edge(log, settings) as url:
        yield url
        await asyncio.sleep(3)  # two sweeps: the deleted messages' objects go


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with serve(args) as url:
        return await measure(args, url)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes-mib",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[1.0, 25.0],
        help="file sizes in MiB, comma separated",
    )
    parser.add_argument("--files", type=int, default=12, help="files per size")
    parser.add_argument("--concurrency", type=int, default=4, help="uploads (downloads) at once")
    add_server_options(parser, "files", "PostgreSQL + Kafka + Redis + s3proxy")
    run_loop(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
