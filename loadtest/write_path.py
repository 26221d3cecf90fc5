"""Write-path benchmark: acknowledged sends per second into PostgreSQL + Kafka.

    python -m loadtest.write_path --writers 64 --seconds 20 --out loadtest/results/write_path.json

N asyncio tasks each loop over ``ChatService.send_message`` (group commit as the service does
it) with the outbox publisher on a real Kafka topic. It reports acks per second, the ack latency
(call to return: validation, the storing transaction, group-commit wait) and the publish lag
(commit to Kafka acknowledgement of the record, through the outbox publisher), as HDR
percentiles in the common result schema of ``loadtest.report``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from chat_core.models import RoomEvent
from chat_core.outbox import EventKey, OutboxPublisher
from chat_core.service import ChatService
from loadtest.report import Latency, Progress, Timeline, build_result, now_iso, write_json
from shardchat.adapters.kafka_log import DEFAULT_LINGER_MS, KafkaEventLog
from shardchat.adapters.pg_store import PgStore
from shardchat.config import load_settings
from shardchat.migrate import migrate
from user_core.models import User


class PublishLag:
    """Commit-to-log-ack latency of every event, from the publisher's hooks."""

    def __init__(self) -> None:
        self.latency = Latency()
        self._committed: dict[EventKey, float] = {}
        self.submit: Callable[[Sequence[RoomEvent]], None] = lambda events: None

    def on_commit(self, events: Sequence[RoomEvent]) -> None:
        now = time.perf_counter()
        for event in events:
            self._committed[(event.room_id, event.seq)] = now
        self.submit(events)

    def on_published(self, keys: Sequence[EventKey]) -> None:
        now = time.perf_counter()
        for key in keys:
            start = self._committed.pop(key, None)
            if start is not None:
                self.latency.record_ms((now - start) * 1000)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    store = PgStore(args.dsn or settings.postgres_dsn, pool_size=args.pool)
    await store.start()
    await migrate(store)
    topic = args.topic or f"bench-write-{uuid.uuid4().hex[:8]}"
    log = KafkaEventLog(
        args.bootstrap or settings.kafka_bootstrap,
        topic,
        args.partitions,
        linger_ms=args.linger_ms,
    )
    await log.start()
    lag = PublishLag()
    publisher = OutboxPublisher(log, store, on_published=lag.on_published)
    lag.submit = publisher.submit
    await publisher.start()
    # --no-publish isolates the PostgreSQL part (the relay would publish later).
    chat = ChatService(store, on_commit=None if args.no_publish else lag.on_commit)

    run_id = uuid.uuid4().hex[:8]
    user = User(chat.ids.next_id(), f"bench-{run_id}", int(time.time() * 1000))
    await store.create_user(user, "-")
    rooms = [(await chat.create_room(user.id, f"bench {i}")).id for i in range(args.rooms)]
    await publisher.flush(30)

    latency = Latency()
    timeline = Timeline()
    progress = Progress("write_path")
    acked = errors = 0
    measuring = False
    stop_at = time.monotonic() + args.warmup + args.seconds
    measure_from = time.monotonic() + args.warmup
    content = "x" * args.content_bytes

    async def writer(w: int) -> None:
        nonlocal acked, errors
        i = 0
        while (now := time.monotonic()) < stop_at:
            room = rooms[(w + i) % len(rooms)]
            start = time.perf_counter()
            try:
                await chat.send_message(user.id, room, content, f"{run_id}-{w}-{i}")
            except Exception:
                errors += 1
                continue
            finally:
                i += 1
            if measuring or now >= measure_from:
                ms = (time.perf_counter() - start) * 1000
                latency.record_ms(ms)
                timeline.delivered(ms)
                acked += 1

    async def report_progress() -> None:
        # Once a second: an HDR percentile costs milliseconds in pure Python.
        while True:
            await asyncio.sleep(1.0)
            progress.update(acks=acked, p99_ms=latency.percentile_ms(99))

    tasks = [asyncio.create_task(writer(w)) for w in range(args.writers)]
    reporter = asyncio.create_task(report_progress())
    await asyncio.sleep(args.warmup)
    measuring = True
    lag.latency = Latency()  # drop the warm-up's lag samples
    started_at, t0 = now_iso(), time.monotonic()
    await asyncio.gather(*tasks)
    duration = time.monotonic() - t0
    reporter.cancel()
    progress.done()
    drain_start = time.monotonic()
    drained = await publisher.flush(120)
    drain_s = time.monotonic() - drain_start

    await chat.close()
    await publisher.close()
    await log.close()
    await store.close()
    result = build_result(
        "write_path",
        started_at=started_at,
        duration_s=duration,
        params={
            "writers": args.writers,
            "seconds": args.seconds,
            "rooms": args.rooms,
            "content_bytes": args.content_bytes,
            "kafka_partitions": args.partitions,
            "linger_ms": args.linger_ms,
            "pg_pool": args.pool,
            "publish": not args.no_publish,
        },
        counters={"sent": acked + errors, "delivered": acked, "errors": errors},
        latency=latency,
        timeline=timeline,
        extra={
            "acks_per_s": round(acked / duration, 1),
            "publish_lag_ms": lag.latency.summary(),
            "published": publisher.published,
            "publish_failures": publisher.failures,
            "drained": drained,
            "drain_s": round(drain_s, 3),
            "topic": topic,
        },
    )
    write_json(result, args.out)
    summary = result.latency_ms
    print(
        f"writers={args.writers} acks/s={acked / duration:,.0f} "
        f"ack p50={summary.get('p50')} p99={summary.get('p99')} ms "
        f"publish lag p50={lag.latency.percentile_ms(50)} p99={lag.latency.percentile_ms(99)} ms "
        f"-> {args.out}"
    )
    return {"acks_per_s": acked / duration}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rooms", type=int, default=256)
    parser.add_argument("--content-bytes", type=int, default=120)
    parser.add_argument("--partitions", type=int, default=32)
    parser.add_argument("--linger-ms", type=int, default=DEFAULT_LINGER_MS)
    parser.add_argument("--no-publish", action="store_true", help="outbox publisher off")
    parser.add_argument("--pool", type=int, default=10, help="PostgreSQL pool size")
    parser.add_argument("--dsn", default="", help="default: settings.postgres_dsn")
    parser.add_argument("--bootstrap", default="", help="default: settings.kafka_bootstrap")
    parser.add_argument("--topic", default="", help="default: a new bench-write-* topic")
    parser.add_argument("--out", default="loadtest/results/write_path.json")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(run(args))
    except ImportError:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
