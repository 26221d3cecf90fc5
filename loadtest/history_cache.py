"""History-cache benchmark: the Store load the cache removes from ``messages`` reads.

    python -m loadtest.history_cache --rooms 200 --readers 32 --seconds 15 \
        --out loadtest/results/history_cache.json

Rooms with ``--messages`` messages each are written to PostgreSQL (the local engines, a fresh
database) through ChatService. Then, twice (cache off, then on, in the registry's Redis),
``--readers`` tasks read the newest page (``history``, limit ``--limit``) of a room drawn
uniformly, while ``--writers`` tasks send into the same rooms at ``--write-rate`` messages per
second in total (sends move a room's seq: the cache is updated by their events). The Store is
wrapped to count its calls: the result gives Store calls per read with and without the cache,
the hit ratio, reads per second and read latency.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

from chat_core import metrics
from chat_core.history_cache import CachedHistory
from chat_core.service import ChatService
from loadtest.cluster import _psql as psql
from loadtest.report import Latency, now_iso, write_json
from shardchat.adapters.pg_store import PgStore
from shardchat.adapters.redis_history_cache import RedisHistoryCache
from shardchat.config import load_settings
from shardchat.migrate import migrate
from shardchat.store import Store
from user_core.models import User


class CountingStore:
    """The Store with a call counter per method (everything else passes through)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr
        calls = self.calls

        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return await attr(*args, **kwargs)

        return counted


def _hits() -> tuple[float, float]:
    return metrics.HISTORY_HIT._value.get(), metrics.HISTORY_MISS._value.get()


async def _phase(
    args: argparse.Namespace,
    chat: ChatService,
    rooms: list[int],
    users: list[int],
    counting: CountingStore,
) -> dict[str, Any]:
    latency = Latency()
    reads = 0
    stop = asyncio.Event()
    rng = random.Random(1)
    counting.calls.clear()
    hits0, misses0 = _hits()

    async def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            i = rng.randrange(len(rooms))
            t0 = time.perf_counter()
            await chat.history(users[i], rooms[i], None, None, args.limit)
            latency.record_ms((time.perf_counter() - t0) * 1000)
            reads += 1

    async def writer(n: int) -> None:
        period = args.writers / args.write_rate if args.write_rate > 0 else None
        k = 0
        while period is not None and not stop.is_set():
            i = rng.randrange(len(rooms))
            await chat.send_message(
                users[i], rooms[i], "x" * 120, f"w{n}-{k}-{uuid.uuid4().hex[:8]}"
            )
            k += 1
            await asyncio.sleep(period)

    tasks = [asyncio.create_task(reader()) for _ in range(args.readers)]
    tasks += [asyncio.create_task(writer(n)) for n in range(args.writers)]
    t0 = time.monotonic()
    await asyncio.sleep(args.seconds)
    stop.set()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    hits1, misses1 = _hits()
    lookups = (hits1 - hits0) + (misses1 - misses0)
    read_calls = {
        k: v
        for k, v in counting.calls.items()
        if k in ("list_messages", "reaction_counts", "get_room", "is_member")
    }
    return {
        "reads": reads,
        "reads_per_s": round(reads / elapsed, 1),
        "store_calls": dict(counting.calls),
        "store_read_calls_per_read": round(sum(read_calls.values()) / max(1, reads), 3),
        "list_messages_per_read": round(counting.calls["list_messages"] / max(1, reads), 3),
        "hit_ratio": round((hits1 - hits0) / lookups, 3) if lookups else None,
        "read_latency_ms": latency.summary(),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    base = args.dsn or settings.postgres_dsn
    database = f"bench_hist_{uuid.uuid4().hex[:8]}"
    psql(base, f'CREATE DATABASE "{database}"')
    store = PgStore(base.rsplit("/", 1)[0] + "/" + database, pool_size=args.pool)
    await store.start()
    counting = CountingStore(store)
    try:
        await migrate(store)
        plain = ChatService(counting)  # type: ignore[arg-type]  # a Store by delegation
        users = [1000 + i for i in range(args.rooms)]
        rooms: list[int] = []
        for u in users:
            await store.create_user(User(u, f"u{u}", 1), "x")
            rooms.append((await plain.create_room(u, f"r{u}")).id)
        await asyncio.gather(
            *(
                plain.send_message(users[i], rooms[i], "x" * 120, f"seed-{i}-{m}")
                for i in range(len(rooms))
                for m in range(args.messages)
            )
        )
        off = await _phase(args, plain, rooms, users, counting)
        await plain.close()
        cache = RedisHistoryCache(
            args.redis_url or settings.redis_url, prefix=f"bench:{database}:", ttl_s=300
        )
        cached = ChatService(counting, history_cache=CachedHistory(cache, 200))  # type: ignore[arg-type]
        on = await _phase(args, cached, rooms, users, counting)
        await cached.close()
    finally:
        await store.close()
        psql(base, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    saved = 1 - on["list_messages_per_read"] / max(off["list_messages_per_read"], 1e-9)
    result = {
        "scenario": "history_cache",
        "started_at": now_iso(),
        "params": {k: v for k, v in vars(args).items() if k not in ("func", "out")},
        "method": "reads of the newest page (ChatService.history) with the history cache off, "
        "then on (Redis); Store calls counted by a wrapper; writers keep the rooms moving",
        "cache_off": off,
        "cache_on": on,
        "list_messages_saved": round(saved, 3),
    }
    write_json(result, args.out)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--messages", type=int, default=60, help="messages per room at start")
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--write-rate", type=float, default=50.0, help="sends per second, total")
    parser.add_argument("--limit", type=int, default=50, help="messages per page")
    parser.add_argument("--seconds", type=float, default=15.0, help="per phase")
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--dsn", default="", help="default: settings.postgres_dsn")
    parser.add_argument("--redis-url", default="", help="default: settings.redis_url")
    parser.add_argument("--out", default="loadtest/results/history_cache.json")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    for phase in ("cache_off", "cache_on"):
        r = result[phase]
        print(
            f"{phase}: {r['reads_per_s']} reads/s, {r['store_read_calls_per_read']} Store "
            f"reads per read, hit ratio {r['hit_ratio']}"
        )
    print(f"list_messages calls saved: {result['list_messages_saved']:.0%}")


if __name__ == "__main__":
    main()
