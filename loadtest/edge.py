"""Edge benchmark: GraphQL ``sendMessage`` and ``messages`` requests per second and latency.

    python -m loadtest.edge --concurrency 32 --seconds 15 --out loadtest/results/edge.json

N workers, each with its own httpx client (keep-alive) and its own user, loop over the edge's
``POST /graphql``: a ``sendMessage`` into one of a few shared rooms, then a ``messages`` page (50
newest) of a room, and again. Latency is call to parsed response; each operation gets its own
HDR histogram and rate. By default the edge under test is a ``shardchat dev`` process started
here on free ports (uvicorn on uvloop, SQLite store, in-memory log) with the per-user mutation
limit lifted (the benchmark measures the edge, not its rate limiter); ``--engines`` starts
``shardchat edge`` on the local PostgreSQL, Kafka and Redis instead (a fresh database and topic,
dropped after the run); ``--url`` targets a running edge instead (raise
``SHARDCHAT_GRAPHQL_MUTATION_*`` there, or RATE_LIMITED answers count as errors). The load
generator shares the machine: on a 2-core box it takes about one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from loadtest.cluster import Cluster
from loadtest.fanout import run as run_loop
from loadtest.report import Latency, Progress, Timeline, build_result, now_iso, write_json

SEND = (
    "mutation($r: ID!, $c: String!, $n: String!) "
    "{ sendMessage(roomId: $r, content: $c, nonce: $n) { id seq } }"
)
HISTORY = "query($r: ID!) { messages(roomId: $r, limit: 50) { hasMore items { id seq content } } }"
REGISTER = (
    "mutation($u: String!, $p: String!) { register(username: $u, password: $p) "
    "{ accessToken user { id } } }"
)
CREATE_ROOM = "mutation($n: String!, $m: [ID!]) { createRoom(name: $n, memberIds: $m) { id } }"
OPERATIONS = ("sendMessage", "messages")


class EdgeError(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def local_edge(log_path: Path, settings: dict[str, str] | None = None) -> AsyncIterator[str]:
    """A ``shardchat dev`` in a temp folder (``settings``: more SHARDCHAT_* for it); yields its
    edge base URL."""
    edge, gateway, router = _free_port(), _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDCHAT_")}
    env.update(
        SHARDCHAT_EDGE_PORT=str(edge),
        SHARDCHAT_GATEWAY_PORT=str(gateway),
        SHARDCHAT_ROUTER_PORT=str(router),
        SHARDCHAT_LOG_LEVEL="WARNING",
        SHARDCHAT_GRAPHQL_MUTATION_BURST="1000000000",
        SHARDCHAT_GRAPHQL_MUTATION_PER_S="1000000000",
    )
    env.update(settings or {})
    with tempfile.TemporaryDirectory(prefix="shardchat-edge-bench-") as tmp:
        async with _serving(["dev", "--data-dir", f"{tmp}/data"], env, edge, log_path, tmp) as url:
            yield url


@contextlib.asynccontextmanager
async def engines_edge(
    log_path: Path, settings: dict[str, str] | None = None
) -> AsyncIterator[str]:
    """``shardchat edge`` on the local engines (PostgreSQL, Kafka, Redis of deploy/local, as
    ``SHARDCHAT_*`` names them), on a fresh database and topic dropped afterwards."""
    run_id = uuid.uuid4().hex[:8]
    cluster = Cluster.on_engines(run_id, 0, log_path.parent, settings)
    await asyncio.to_thread(cluster.migrate)
    edge = _free_port()
    env = cluster.process_env() | {
        "SHARDCHAT_EDGE_PORT": str(edge),
        "SHARDCHAT_GRAPHQL_MUTATION_BURST": "1000000000",
        "SHARDCHAT_GRAPHQL_MUTATION_PER_S": "1000000000",
    }
    try:
        async with _serving(["edge"], env, edge, log_path, None) as url:
            yield url
    finally:
        await asyncio.to_thread(cluster.stop)  # it runs its own event loop


@contextlib.asynccontextmanager
async def _serving(
    command: list[str], env: dict[str, str], port: int, log_path: Path, cwd: str | None
) -> AsyncIterator[str]:
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shardchat.cli",
            *command,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_healthy(url, proc)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _wait_healthy(url: str, proc: asyncio.subprocess.Process, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise EdgeError(f"shardchat dev exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise EdgeError(f"edge at {url} not healthy within {within_s}s")


async def gql(
    http: httpx.AsyncClient, query: str, variables: dict[str, Any], token: str | None = None
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await http.post(
        "/graphql", json={"query": query, "variables": variables}, headers=headers
    )
    body = resp.json()
    if body.get("errors"):
        err = body["errors"][0]
        raise EdgeError(f"{(err.get('extensions') or {}).get('code')}: {err.get('message')}")
    data: dict[str, Any] = body["data"]
    return data


async def register(http: httpx.AsyncClient, name: str) -> tuple[str, str]:
    """Register a bench user: (access token, user id)."""
    data = await gql(http, REGISTER, {"u": name, "p": "bench password 1"})
    return data["register"]["accessToken"], data["register"]["user"]["id"]


class Worker:
    def __init__(self, url: str, index: int, run_id: str) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.http = httpx.AsyncClient(base_url=url, timeout=30, limits=limits)
        self.name = f"bench-{run_id}-{index}"
        self.token = ""
        self.user_id = ""

    async def register(self) -> None:
        self.token, self.user_id = await register(self.http, self.name)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.url:
        return await measure(args, args.url.rstrip("/"))
    serve = engines_edge if args.engines else local_edge
    async with serve(Path(args.server_log)) as url:
        return await measure(args, url)


async def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    workers = [Worker(url, i, run_id) for i in range(args.concurrency)]
    # Registration hashes a password (argon2): a few at a time, not a thundering herd.
    gate = asyncio.Semaphore(8)

    async def register(w: Worker) -> None:
        async with gate:
            await w.register()

    await asyncio.gather(*(register(w) for w in workers))
    owner, members = workers[0], [w.user_id for w in workers[1:]]
    rooms = [
        (await gql(owner.http, CREATE_ROOM, {"n": f"bench {i}", "m": members}, owner.token))[
            "createRoom"
        ]["id"]
        for i in range(args.rooms)
    ]

    latency = {op: Latency() for op in OPERATIONS}
    total = Latency()
    done = dict.fromkeys(OPERATIONS, 0)
    errors = dict.fromkeys(OPERATIONS, 0)
    first_errors: list[str] = []
    timeline = Timeline()
    progress = Progress("edge")
    measure_from = time.monotonic() + args.warmup
    stop_at = measure_from + args.seconds
    content = "x" * args.content_bytes

    async def loop(w: int, worker: Worker) -> None:
        i = 0
        while (now := time.monotonic()) < stop_at:
            room = rooms[(w + i) % len(rooms)]
            op = OPERATIONS[i % 2]
            query, variables = (
                (SEND, {"r": room, "c": content, "n": f"{run_id}-{w}-{i}"})
                if op == "sendMessage"
                else (HISTORY, {"r": room})
            )
            i += 1
            start = time.perf_counter()
            try:
                await gql(worker.http, query, variables, worker.token)
            except Exception as exc:
                if now >= measure_from:
                    errors[op] += 1
                    if len(first_errors) < 5:
                        first_errors.append(f"{op}: {exc!r}")
                continue
            if now >= measure_from:
                ms = (time.perf_counter() - start) * 1000
                latency[op].record_ms(ms)
                total.record_ms(ms)
                timeline.delivered(ms)
                done[op] += 1

    async def report_progress() -> None:
        while True:
            await asyncio.sleep(1.0)
            progress.update(**done, p99_ms=total.percentile_ms(99))

    reporter = asyncio.create_task(report_progress())
    tasks = [asyncio.create_task(loop(i, w)) for i, w in enumerate(workers)]
    await asyncio.sleep(args.warmup)
    started_at, t0 = now_iso(), time.monotonic()
    await asyncio.gather(*tasks)
    duration = time.monotonic() - t0
    reporter.cancel()
    progress.done()
    for w in workers:
        await w.http.aclose()

    per_op = {
        op: {
            "requests": done[op],
            "errors": errors[op],
            "per_s": round(done[op] / duration, 1),
            "latency_ms": latency[op].summary(),
        }
        for op in OPERATIONS
    }
    result = build_result(
        "edge",
        started_at=started_at,
        duration_s=duration,
        params={
            "concurrency": args.concurrency,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "rooms": args.rooms,
            "content_bytes": args.content_bytes,
            "edge": args.url
            or (
                "shardchat edge on the local engines (postgres, kafka, redis)"
                if args.engines
                else "local shardchat dev (sqlite, memory log)"
            ),
        },
        counters={
            "sent": sum(done.values()) + sum(errors.values()),
            "delivered": sum(done.values()),
            "errors": sum(errors.values()),
        },
        latency=total,
        timeline=timeline,
        extra={"operations": per_op, "first_errors": first_errors},
    )
    write_json(result, args.out)
    for op in OPERATIONS:
        summary = latency[op].summary()
        print(
            f"{op:12s} {done[op] / duration:>9,.1f} req/s  p50={summary.get('p50')} "
            f"p99={summary.get('p99')} ms  errors={errors[op]}"
        )
    print(f"-> {args.out}")
    return per_op


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent HTTP clients")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rooms", type=int, default=8)
    parser.add_argument("--content-bytes", type=int, default=120)
    add_server_options(parser, "edge", "PostgreSQL + Kafka + Redis")
    run_loop(run(parser.parse_args(argv)))


def add_server_options(parser: argparse.ArgumentParser, name: str, engines: str) -> None:
    """The edge under test (``serve``'s options) and where results go."""
    parser.add_argument("--url", default="", help="a running edge; default: start shardchat dev")
    parser.add_argument(
        "--engines",
        action="store_true",
        help=f"start `shardchat edge` on {engines} instead of `shardchat dev`",
    )
    parser.add_argument("--server-log", default=f"/tmp/shardchat-{name}-bench.log")
    parser.add_argument("--out", default=f"loadtest/results/{name}.json")


if __name__ == "__main__":
    main()
