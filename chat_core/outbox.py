"""The outbox: getting committed room events onto the EventLog, in room order, at least once.

Every durable room event is stored with an outbox row in the transaction that creates it. Two
things move it to the log:

- :class:`OutboxPublisher`, the fast path. The writer calls ``submit(events)`` right after the
  commit; one task appends them in batches and then marks them published.
- :class:`OutboxRelay`, the crash backstop. It sweeps rows still unpublished a moment after their
  commit (the writer died between commit and publish, or its log was down) and publishes them,
  one relay per partition at a time (a lease in the Store).

Guarantees:
- No committed event is lost: it stays pending in the Store until the log acknowledged it.
- Per-room order: within a partition the publisher never appends an event before an earlier one
  it was given; a failed batch is retried (with backoff) before anything after it.
- Duplicates on the topic are possible but rare (a relay and a publisher of another process
  racing, a lost mark); consumers drop them by room seq.

Metrics (``chat_core.metrics``): ``shardchat_outbox_published_total{path="fast"|"relay"}`` counts
events the log acknowledged on each path; the relay sets ``shardchat_outbox_pending`` at each
sweep. A record carries its event's W3C trace context as headers (:func:`event_record`), on both
paths, since the Store keeps ``RoomEvent.trace`` with the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from chat_core import metrics
from chat_core.models import RoomEvent, encode_event
from shardchat.eventlog import AppendError, EventLog, EventLogError, Record, room_key
from shardchat.tracing import TRACE_HEADERS, to_kafka_headers

log = logging.getLogger(__name__)

EventKey = tuple[int, int]  # (room_id, seq)


class OutboxStore(Protocol):
    """The part of the Store port the outbox needs (see ``shardchat.store.Store``)."""

    async def pending_events(self, created_before_ms: int, limit: int) -> list[RoomEvent]:
        """Unpublished events created before the time, ordered by (room_id, seq)."""
        ...

    async def mark_published(self, keys: Sequence[EventKey]) -> None:
        """Mark events published; idempotent."""
        ...

    async def acquire_lease(self, name: str, owner: str, ttl_ms: int) -> bool:
        """True if ``owner`` now holds the lease ``name`` until now + ttl."""
        ...


def event_record(event: RoomEvent) -> Record:
    """The log record of an event: key = room key, value = msgspec JSON, W3C trace headers."""
    if not event.trace:
        return room_key(event.room_id), encode_event(event), ()
    headers = to_kafka_headers({k: v for k, v in event.trace.items() if k in TRACE_HEADERS})
    return room_key(event.room_id), encode_event(event), headers


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Backoff:
    """Exponential backoff between retries of an unavailable dependency."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self._initial = initial_s
        self._max = max_s
        self._next = initial_s

    async def wait(self) -> None:
        await asyncio.sleep(self._next)
        self._next = min(self._next * 2, self._max)

    def reset(self) -> None:
        self._next = self._initial


class OutboxPublisher:
    """The fast path from commit to log.

    ``submit`` never blocks and never fails: it queues the events per partition. One task appends
    them with ``append_many`` (the batch is whatever accumulated while the previous one was in
    flight, up to ``max_batch``), then hands their keys to a second task that marks them published
    (so the next append does not wait for the Store), in one statement for all the keys of up to
    ``mark_delay_s``. An event stays in ``in_flight_keys()`` from ``submit`` until its mark is
    committed, which lets a relay of the same process skip it.

    When more than ``max_queued`` events wait (the log is down for long), further submissions are
    left to the relay rather than held in memory.
    """

    def __init__(
        self,
        event_log: EventLog,
        store: OutboxStore,
        *,
        max_batch: int = 4096,
        max_queued: int = 1_000_000,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        on_published: Callable[[Sequence[EventKey]], None] | None = None,
        mark_delay_s: float = 0.1,
    ) -> None:
        self._log = event_log
        self._mark_delay_s = mark_delay_s
        self._store = store
        self._on_published = on_published  # metrics hook: called with keys the log acknowledged
        self._max_batch = max_batch
        self._max_queued = max_queued
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._queues: dict[int, deque[RoomEvent]] = {}
        self._queued = 0
        self._in_flight: set[EventKey] = set()
        self._marks: list[EventKey] = []
        self._work = asyncio.Event()
        self._mark_work = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0  # events acknowledged by the log
        self.dropped = 0  # events left to the relay because the queue was full
        self.failures = 0  # failed append attempts

    async def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._publish_loop(), name="outbox-publish"),
                asyncio.create_task(self._mark_loop(), name="outbox-mark"),
            ]

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        """Publish what is queued (up to ``drain_timeout_s``), then stop. What is left stays
        pending in the Store for a relay."""
        if self._tasks:
            await self.flush(drain_timeout_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def submit(self, events: Sequence[RoomEvent]) -> None:
        """Queue committed events for publishing, in the order given (per room: seq order)."""
        for event in events:
            key = (event.room_id, event.seq)
            if key in self._in_flight:
                continue  # a retried call for the same commit
            if self._queued >= self._max_queued:
                self.dropped += 1
                continue
            partition = self._log.partition_for(room_key(event.room_id))
            queue = self._queues.get(partition)
            if queue is None:
                queue = self._queues[partition] = deque()
            queue.append(event)
            self._in_flight.add(key)
            self._queued += 1
        if self._queued:
            self._idle.clear()
            self._work.set()

    @property
    def queued(self) -> int:
        """Events submitted and not yet acknowledged by the log."""
        return self._queued

    def in_flight_keys(self) -> set[EventKey]:
        """A snapshot of the events submitted and not yet marked published."""
        return set(self._in_flight)

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything submitted is published and marked; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _publish_loop(self) -> None:
        backoff = _Backoff(self._backoff_initial_s, self._backoff_max_s)
        while True:
            await self._work.wait()
            self._work.clear()
            while self._queued:
                if await self._publish_batch():
                    backoff.reset()
                else:
                    await backoff.wait()
            self._maybe_idle()

    async def _publish_batch(self) -> bool:
        """Append one batch taken from the heads of the partition queues; True if all made it."""
        taken: list[tuple[int, int]] = []  # (partition, count) prefixes of the queues
        events: list[RoomEvent] = []
        share = max(1, self._max_batch // max(1, len(self._queues)))
        for partition, queue in self._queues.items():
            count = min(len(queue), share, self._max_batch - len(events))
            if count <= 0:
                continue
            events.extend(queue[i] for i in range(count))
            taken.append((partition, count))
        results: list[tuple[int, int] | None]
        try:
            results = list(await self._log.append_many([event_record(e) for e in events]))
        except AppendError as exc:
            results = exc.results
            log.warning("outbox publish failed for part of a batch: %s", exc)
        except Exception as exc:  # the log's own error or a bug: keep the events, retry later
            results = [None] * len(events)
            log.warning("outbox publish failed: %r", exc)
        # Submissions made during the append went to the tails: the taken prefixes are intact.
        done: list[EventKey] = []
        index = 0
        for partition, count in taken:
            queue = self._queues[partition]
            failed: list[RoomEvent] = []
            for _ in range(count):
                event = queue.popleft()
                if results[index] is None:
                    failed.append(event)
                else:
                    done.append((event.room_id, event.seq))
                index += 1
            # Failed events go back to the head, in order: nothing after them overtakes them.
            queue.extendleft(reversed(failed))
            if not queue:
                del self._queues[partition]
        self._queued -= len(done)
        self.published += len(done)
        if done:
            metrics.PUBLISHED_FAST.inc(len(done))  # once per batch, not per event
            self._marks.extend(done)
            self._mark_work.set()
            if self._on_published is not None:
                self._on_published(done)
        if len(done) < len(events):
            self.failures += 1
            return False
        return True

    async def _mark_loop(self) -> None:
        backoff = _Backoff(self._backoff_initial_s, self._backoff_max_s)
        while True:
            await self._mark_work.wait()
            # Marks gather for a moment: one Store commit for many published batches (at a
            # light load every batch is one event, and each mark would be a commit of its own).
            await asyncio.sleep(self._mark_delay_s)
            self._mark_work.clear()
            while self._marks:
                keys, self._marks = self._marks, []
                try:
                    await self._store.mark_published(keys)
                except Exception as exc:
                    # Unmarked events would be republished by a relay: retry, keep them in flight.
                    log.warning("outbox mark_published failed: %r", exc)
                    self._marks[:0] = keys
                    await backoff.wait()
                    continue
                backoff.reset()
                self._in_flight.difference_update(keys)
            self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not self._queued and not self._marks and not self._in_flight:
            self._idle.set()


class OutboxRelay:
    """The crash backstop: publishes events left unpublished ``after_ms`` after their commit.

    Every ``interval_ms`` (default ``after_ms / 2``) it reads pending events (ordered by room and
    seq), keeps those of partitions whose lease ``outbox:{partition}`` it holds or gets, appends
    them in that order and marks them published. A local ``publisher``'s in-flight events are
    skipped, and so is everything after them in their room (so the relay never overtakes it).
    The in-flight snapshot is taken before the Store query: an event the publisher still held
    then cannot have been marked before the query ran, so the local race cannot duplicate.
    """

    def __init__(
        self,
        event_log: EventLog,
        store: OutboxStore,
        owner: str,
        *,
        after_ms: int = 2000,
        interval_ms: int | None = None,
        limit: int = 5000,
        lease_ttl_ms: int | None = None,
        publisher: OutboxPublisher | None = None,
    ) -> None:
        self._log = event_log
        self._store = store
        self._owner = owner
        self._after_ms = after_ms
        self._interval_s = (
            interval_ms if interval_ms is not None else max(1, after_ms // 2)
        ) / 1000
        self._limit = limit
        # Outlives a few sweeps so an owner keeps its partitions while it is alive.
        self._lease_ttl_ms = lease_ttl_ms or max(3 * int(self._interval_s * 1000), 1000)
        self._publisher = publisher
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="outbox-relay")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> int:
        """One sweep; returns how many events it read (``limit`` means more may wait)."""
        skip = self._publisher.in_flight_keys() if self._publisher is not None else set()
        events = await self._store.pending_events(_now_ms() - self._after_ms, self._limit)
        by_partition: dict[int, list[RoomEvent]] = {}
        blocked_rooms: set[int] = set()
        for event in events:
            if event.room_id in blocked_rooms or (event.room_id, event.seq) in skip:
                blocked_rooms.add(event.room_id)
                continue
            partition = self._log.partition_for(room_key(event.room_id))
            by_partition.setdefault(partition, []).append(event)
        batch: list[RoomEvent] = []
        for partition, part_events in sorted(by_partition.items()):
            if await self._store.acquire_lease(
                f"outbox:{partition}", self._owner, self._lease_ttl_ms
            ):
                batch.extend(part_events)
        # Backlog this process answers for (see chat_core.metrics): its publisher's queue, and
        # the stale rows of the partitions it leads. The skipped rows are in that queue already,
        # and other partitions' rows are counted by their own lease holder, so sum() over
        # instances does not count a row twice.
        queued = self._publisher.queued if self._publisher is not None else 0
        metrics.OUTBOX_PENDING.set(queued + len(batch))
        if batch:
            await self._publish(batch)
        return len(events)

    async def _publish(self, batch: list[RoomEvent]) -> None:
        try:
            results: list[tuple[int, int] | None] = list(
                await self._log.append_many([event_record(e) for e in batch])
            )
        except AppendError as exc:
            results = exc.results
            log.warning("outbox relay publish failed for part of a batch: %s", exc)
        done = [(e.room_id, e.seq) for e, r in zip(batch, results, strict=True) if r is not None]
        if done:
            # Counted once the log acknowledged them, whether or not the mark below succeeds.
            metrics.PUBLISHED_RELAY.inc(len(done))
            await self._store.mark_published(done)
            self.published += len(done)

    async def _loop(self) -> None:
        while True:
            full = False
            try:
                full = await self.run_once() >= self._limit
            except (EventLogError, OSError) as exc:
                log.warning("outbox relay sweep failed: %r", exc)
            except Exception:
                log.exception("outbox relay sweep failed")
            if not full:
                await asyncio.sleep(self._interval_s)
