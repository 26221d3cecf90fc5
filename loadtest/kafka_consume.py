"""What consuming the Kafka log costs per record: the gateways' reader, alone, at a given rate.

    python -m loadtest.kafka_consume --rate 200 --seconds 10 \
        --runs 32:100 8:100 1:100 32:5 --out loadtest/results/kafka_consume.json

Each run (``PARTITIONS:FETCH_MAX_WAIT_MS``) makes a fresh topic on the local Kafka through the
EventLog adapter (``KafkaEventLog``), assigns ONE reader (the gateways' ``KafkaLogReader``: no
group, no auto commit, ``fetch.min.bytes`` 1) to every partition from the end, and has a
producer in another process append ``--rate`` records a second round robin over the partitions
(both on uvloop, as the services). Over the measured window it reports the reader process's CPU
per record, the fetch requests its client sent per second and the append-to-fetch latency. This
is the gateway's "Kafka consume" stage without the rest of the gateway: what the log client
costs, not what the gateway does with the records.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from typing import Any

import uvloop

from loadtest.report import Latency, now_iso, write_json
from shardchat.adapters.kafka_log import KafkaEventLog, KafkaLogReader


def _keys(log: KafkaEventLog) -> list[bytes]:
    """One key per partition (the adapter partitions by key, as it does rooms)."""
    keys: dict[int, bytes] = {}
    i = 0
    while len(keys) < log.num_partitions:
        key = b"room-%d" % i
        keys.setdefault(log.partition_for(key), key)
        i += 1
    return [keys[p] for p in range(log.num_partitions)]


async def _produce(bootstrap: str, topic: str, partitions: int, rate: float, secs: float) -> None:
    log = KafkaEventLog(bootstrap, topic, partitions)
    await log.start()
    try:
        keys = _keys(log)
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < secs:
            delay = t0 + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await log.append(keys[n % partitions], b"x" * 300)
            n += 1
    finally:
        await log.close()


def _count_fetches(reader: KafkaLogReader) -> list[int]:
    """Count the fetch requests the reader's client sends (a benchmark-only hook on the client
    the reader owns; the adapter is not changed)."""
    count = [0]
    client: Any = reader._consumer._client  # private on purpose: counting what it sends
    send = client.send

    def counting(node_id: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if type(request).__name__.startswith("FetchRequest"):
            count[0] += 1
        return send(node_id, request, *args, **kwargs)

    client.send = counting
    return count


async def one_run(
    bootstrap: str, partitions: int, max_wait_ms: int, rate: float, secs: float
) -> dict[str, Any]:
    topic = f"bench-consume-{uuid.uuid4().hex[:8]}"
    log = KafkaEventLog(bootstrap, topic, partitions, fetch_max_wait_ms=max_wait_ms)
    await log.start()  # creates the topic
    reader = log.reader()
    assert isinstance(reader, KafkaLogReader)
    fetches = _count_fetches(reader)
    latency = Latency()
    got = 0
    try:
        await reader.assign({p: None for p in range(partitions)})

        async def consume() -> None:
            nonlocal got
            while True:
                records = await reader.fetch(1000)
                now_ms = time.time() * 1000
                got += len(records)
                for r in records:
                    latency.record_ms(max(0.0, now_ms - r.timestamp_ms))

        task = asyncio.create_task(consume())
        warm = 2.0
        producer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtest.kafka_consume", "--produce", topic,
            "--partitions", str(partitions), "--rate", str(rate),
            "--seconds", str(secs + 2 * warm), "--bootstrap", bootstrap,
        )  # fmt: skip
        await asyncio.sleep(warm)
        latency = Latency()  # the window only
        fetches[0], got0 = 0, got
        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.sleep(secs)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        sent, records = fetches[0], got - got0
        await asyncio.wait_for(producer.wait(), secs + 60)
        task.cancel()
    finally:
        await reader.close()
        await log.close()
    return {
        "partitions": partitions,
        "fetch_max_wait_ms": max_wait_ms,
        "records_per_s": round(records / elapsed, 1),
        "fetch_requests_per_s": round(sent / elapsed, 1),
        "records_per_fetch": round(records / max(1, sent), 2),
        "consumer_cpu_pct": round(100 * cpu / elapsed, 1),
        "consumer_cpu_ms_per_record": round(1000 * cpu / max(1, records), 3),
        "latency_ms": latency.summary(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--runs", nargs="+", default=["32:100", "8:100", "1:100", "32:5"])
    p.add_argument("--bootstrap", default=os.environ.get("SHARDCHAT_KAFKA_BOOTSTRAP", ""))
    p.add_argument("--out", default="loadtest/results/kafka_consume.json")
    p.add_argument("--produce", default="", help=argparse.SUPPRESS)  # the producer process
    p.add_argument("--partitions", type=int, default=32, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bootstrap = args.bootstrap or "127.0.0.1:59092"
    if args.produce:
        uvloop.run(_produce(bootstrap, args.produce, args.partitions, args.rate, args.seconds))
        return
    started = now_iso()
    runs = []
    for spec in args.runs:
        partitions, wait = (int(x) for x in spec.split(":"))
        run = uvloop.run(one_run(bootstrap, partitions, wait, args.rate, args.seconds))
        print(
            f"partitions={partitions} max_wait={wait}: {run['records_per_s']} records/s,"
            f" {run['fetch_requests_per_s']} fetches/s,"
            f" {run['consumer_cpu_ms_per_record']} ms CPU/record,"
            f" latency p50 {run['latency_ms'].get('p50')} ms"
        )
        runs.append(run)
    result = {
        "schema_version": 1,
        "scenario": "kafka_consume",
        "started_at": started,
        "params": {"rate": args.rate, "seconds": args.seconds, "runs": args.runs},
        "runs": runs,
    }
    print(f"kafka_consume: wrote {write_json(result, args.out)}")


if __name__ == "__main__":
    main()
