"""EventLog on Apache Kafka via aiokafka (the scale-out adapter).

Producer: one idempotent ``AIOKafkaProducer`` (acks=all), key = room key, ``linger_ms`` 0 by
default. The partition is passed explicitly, computed by ``shardchat.partitioner`` (Kafka's
default murmur2 partitioner, checked against aiokafka's by the contract tests): the same answer
aiokafka would give, without hashing every record twice.

Reader: one ``AIOKafkaConsumer`` per reader with no group and no commits; partitions are assigned
by hand. aiokafka's ``assign()`` replaces the whole assignment: it creates fresh state for every
partition (kept ones included, so their positions are lost) and drops their prefetched records.
The reader therefore keeps its own position per partition (last returned offset + 1), and each
change does ``assign(full set)`` followed by a ``seek()`` of every partition in the same
synchronous step, so a concurrent ``fetch`` never sees a partition without its position. Offsets
of ``None`` (= end) starts are resolved with ``end_offsets`` *before* that step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from shardchat.config import Settings
from shardchat.eventlog import AppendError, EventLogError, LogReader, LogRecord, Record
from shardchat.partitioner import partition_for

log = logging.getLogger(__name__)

_PARTITION_CACHE_SIZE = 100_000

#: Measured on the local broker (docs/benchmarks.md): 0 ms gives the lowest idle latency (p50
#: 0.2-0.5 ms vs 1.6 ms at 1 ms) with no throughput loss, because the outbox publisher batches
#: itself: everything enqueued while one batch is in flight goes out in the next.
DEFAULT_LINGER_MS = 0


class KafkaEventLog:
    """The EventLog port on a Kafka topic. Create the topic on ``start`` if it is missing."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        num_partitions: int = 32,
        *,
        replication_factor: int = 1,
        linger_ms: int = DEFAULT_LINGER_MS,
        max_batch_size: int = 256 * 1024,
        request_timeout_ms: int = 30_000,
        fetch_max_wait_ms: int = 5,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.num_partitions = num_partitions
        self._replication_factor = replication_factor
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._request_timeout_ms = request_timeout_ms
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            enable_idempotence=True,  # implies acks=all; broker dedupes producer retries
            acks="all",
            linger_ms=linger_ms,
            max_batch_size=max_batch_size,
            request_timeout_ms=request_timeout_ms,
        )
        self._readers: list[KafkaLogReader] = []
        self._partition_cache: dict[bytes, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> KafkaEventLog:
        return cls(
            settings.kafka_bootstrap, settings.kafka_topic, settings.kafka_partitions, **kwargs
        )

    async def start(self) -> None:
        self._partition_cache.clear()
        try:
            await self._ensure_topic()
            await self._producer.start()
            # The topic may predate us with another partition count: the real one decides.
            partitions = await self._producer.partitions_for(self.topic)
            self.num_partitions = len(partitions)
            await self._wait_for_leaders()
        except KafkaError as exc:
            raise EventLogError(f"kafka start failed: {exc!r}") from exc

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush and stop. Bounded: with the broker gone, aiokafka may wait for it forever;
        records still unsent then stay pending in the outbox for the relay."""
        for reader in list(self._readers):
            await reader.close()
        try:
            await asyncio.wait_for(self._producer.stop(), timeout_s)
        except TimeoutError:
            log.warning("kafka producer did not stop within %.1fs", timeout_s)

    def partition_for(self, key: bytes) -> int:
        # murmur2 in pure Python costs microseconds; a few rooms are hot, so cache per key.
        partition = self._partition_cache.get(key)
        if partition is None:
            if len(self._partition_cache) >= _PARTITION_CACHE_SIZE:
                self._partition_cache.clear()
            partition = self._partition_cache[key] = partition_for(key, self.num_partitions)
        return partition

    async def append(
        self, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[int, int]:
        try:
            meta = await self._producer.send_and_wait(
                self.topic,
                value,
                key=key,
                partition=self.partition_for(key),
                headers=list(headers) or None,
            )
        except KafkaError as exc:
            raise EventLogError(f"kafka append failed: {exc!r}") from exc
        return meta.partition, meta.offset

    async def append_many(self, records: Sequence[Record]) -> list[tuple[int, int]]:
        futures: list[asyncio.Future[Any]] = []
        send_error: BaseException | None = None
        for key, value, headers in records:
            try:
                # send() only enqueues (it may wait for metadata or buffer space); the futures
                # resolve when the broker acknowledged, so the whole batch is in flight at once.
                futures.append(
                    await self._producer.send(
                        self.topic,
                        value,
                        key=key,
                        partition=self.partition_for(key),
                        headers=list(headers) or None,
                    )
                )
            except KafkaError as exc:
                # Stop here: sending later records of a key after a failed one would reorder it.
                send_error = exc
                break
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        results: list[tuple[int, int] | None] = [None] * len(records)
        first_error: BaseException | None = send_error
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, BaseException):
                first_error = first_error or outcome
            else:
                results[i] = (outcome.partition, outcome.offset)
        if first_error is not None or any(r is None for r in results):
            raise AppendError(f"kafka append failed: {first_error!r}", results)
        return [r for r in results if r is not None]

    def reader(self) -> LogReader:
        reader = KafkaLogReader(
            self.bootstrap, self.topic, self.num_partitions, self._fetch_max_wait_ms, self._readers
        )
        self._readers.append(reader)
        return reader

    async def _wait_for_leaders(self, within_s: float = 15.0) -> None:
        """A just-created topic has partitions without a leader for a moment; producing then
        only earns retries (NotLeaderForPartition) and a slow first batch."""
        client = self._producer.client
        deadline = asyncio.get_running_loop().time() + within_s
        while True:
            cluster = client.cluster
            leaders = [
                cluster.leader_for_partition(TopicPartition(self.topic, p))
                for p in range(self.num_partitions)
            ]
            if all(leader not in (None, -1) for leader in leaders):
                return
            if asyncio.get_running_loop().time() > deadline:
                return  # the producer copes (it retries); don't fail start for this
            await asyncio.sleep(0.05)
            await client.force_metadata_update()

    async def _ensure_topic(self) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=self._request_timeout_ms
        )
        await admin.start()
        try:
            topic = NewTopic(self.topic, self.num_partitions, self._replication_factor)
            response = await admin.create_topics([topic])
            for _name, code, *_rest in response.topic_errors:
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise EventLogError(f"creating topic {self.topic} failed: error code {code}")
        finally:
            await admin.close()


async def delete_topic(bootstrap: str, topic: str, timeout_s: float = 10.0) -> None:
    """Delete ``topic`` (benchmark and test clean-up; the service never deletes topics)."""
    ms = int(timeout_s * 1000)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=ms)
    await admin.start()
    try:
        await admin.delete_topics([topic], timeout_ms=ms)
    finally:
        await admin.close()


class KafkaLogReader:
    """A manual-assignment reader of one topic; see the module docstring for the assign dance."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        num_partitions: int,
        fetch_max_wait_ms: int,
        registry: list[KafkaLogReader] | None = None,
    ) -> None:
        self._topic = topic
        self._registry = registry
        # fetch_min_bytes=1 answers as soon as one record exists; fetch_max_wait_ms only bounds
        # idle polls, and small values make a newly seeked partition start quickly.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=fetch_max_wait_ms,
            fetch_min_bytes=1,
        )
        self._started = False
        self._closed = False
        self._next: dict[int, int] = {}  # partition -> next offset to return
        self._num_partitions = num_partitions
        self._lock = asyncio.Lock()
        self._pending: list[tuple[_Change, asyncio.Future[None]]] = []
        self._changed = asyncio.Event()  # wakes a fetch idling with no assignment

    async def assign(self, starts: Mapping[int, int | None]) -> None:
        await self._start()
        for p in starts:
            # Checked here, not in the coalesced change, so one bad call fails alone.
            if not 0 <= p < self._num_partitions:
                raise ValueError(f"no partition {p} in {self._topic}")
        await self._request(_Change(dict(starts), ()))

    async def unassign(self, partitions: Sequence[int]) -> None:
        await self._request(_Change({}, tuple(partitions)))

    def assignment(self) -> frozenset[int]:
        return frozenset(self._next)

    async def fetch(self, timeout_ms: int, max_records: int = 10_000) -> list[LogRecord]:
        await self._start()
        if not self._next:
            # aiokafka has nothing to poll; wait for an assignment (or the timeout).
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout_ms / 1000)
            if not self._next:
                return []
        try:
            batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise EventLogError(f"kafka fetch failed: {exc!r}") from exc
        out: list[LogRecord] = []
        for tp, records in batches.items():
            for rec in records:
                expected = self._next.get(tp.partition)
                # Drop records of partitions unassigned meanwhile and any record already returned
                # (the guard that makes an assignment change unable to duplicate).
                if expected is None or rec.offset < expected:
                    continue
                self._next[tp.partition] = rec.offset + 1
                out.append(
                    LogRecord(
                        tp.partition,
                        rec.offset,
                        rec.key or b"",
                        rec.value or b"",
                        rec.timestamp,
                        tuple(rec.headers or ()),
                    )
                )
        return out

    async def end_offsets(self, partitions: Sequence[int]) -> dict[int, int]:
        await self._start()
        if not partitions:
            return {}
        try:
            ends = await self._consumer.end_offsets(
                [TopicPartition(self._topic, p) for p in partitions]
            )
        except KafkaError as exc:
            raise EventLogError(f"kafka end_offsets failed: {exc!r}") from exc
        return {tp.partition: offset for tp, offset in ends.items()}

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._next.clear()
        self._changed.set()
        if self._registry is not None and self in self._registry:
            self._registry.remove(self)
        if self._started:
            try:
                await asyncio.wait_for(self._consumer.stop(), 10.0)
            except TimeoutError:
                log.warning("kafka consumer did not stop within 10s")

    async def _start(self) -> None:
        if self._closed:
            raise EventLogError("reader is closed")
        if not self._started:
            self._started = True
            try:
                await self._consumer.start()
            except KafkaError as exc:
                self._started = False
                raise EventLogError(f"kafka reader start failed: {exc!r}") from exc

    async def _request(self, change: _Change) -> None:
        """Queue a change; whoever holds the lock next applies every queued change at once."""
        await self._start()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((change, done))
        async with self._lock:
            if not done.done():
                batch, self._pending = self._pending, []
                try:
                    await self._apply([c for c, _ in batch])
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                except BaseException:
                    # Cancelled: the others' changes were not applied; requeue them.
                    self._pending[:0] = [item for item in batch if item[1] is not done]
                    raise
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        await done

    async def _apply(self, changes: Sequence[_Change]) -> None:
        target = dict(self._next)
        moves: dict[int, int] = {}  # explicit starts of partitions already assigned
        resolve: set[int] = set()  # new partitions starting at the end
        for change in changes:
            for p, start in change.starts.items():
                if start is not None:
                    target[p] = start
                    moves[p] = start
                    resolve.discard(p)
                elif p not in target:
                    resolve.add(p)
                    target[p] = -1  # placeholder until resolved below
            for p in change.remove:
                target.pop(p, None)
                moves.pop(p, None)
                resolve.discard(p)
        ends = await self.end_offsets(sorted(resolve)) if resolve else {}
        # From here on everything is synchronous, so no fetch interleaves with a half-done change.
        # Kept partitions take their position now, not from the snapshot above: a fetch may have
        # advanced them while end_offsets was awaited.
        final = {
            p: moves[p] if p in moves else ends[p] if p in resolve else self._next.get(p, start)
            for p, start in target.items()
        }
        if set(final) != set(self._next):
            # aiokafka drops every position on assign(), so every partition is seeked, kept
            # ones included.
            self._consumer.assign([TopicPartition(self._topic, p) for p in sorted(final)])
            seeks = final
        else:
            seeks = moves
        self._next = final
        for p, offset in seeks.items():
            self._consumer.seek(TopicPartition(self._topic, p), offset)
        self._changed.set()


class _Change:
    """One requested assignment change: partitions to add (with starts) and to remove."""

    __slots__ = ("remove", "starts")

    def __init__(self, starts: dict[int, int | None], remove: tuple[int, ...]) -> None:
        self.starts = starts
        self.remove = remove
