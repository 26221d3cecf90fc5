"""Consume only the event-log partitions that hold rooms local sessions subscribe to.

room -> partition is the log's own ``partition_for(str(room_id).encode())`` (Kafka's murmur2,
the key the outbox appends with). Partitions are reference-counted by local rooms; a new one is
assigned at the current end (subscribers catch up from the ring/Store by seq), one whose last
room went away is unassigned after ``linger_s`` (a room re-subscribed within it costs nothing).
Assignment changes are applied by the fetch loop itself, batched, between fetches, because a
reader is not safe to reassign while a fetch is in flight. The same loop samples the
partitions' end offsets every ``lag_every_s`` for ``shardchat_gateway_partition_lag``.

Skipped records: a reader whose position was reset (its offset fell out of the log: retention,
records lost on an unclean leader election) or that jumped over offsets never returns those
records, and a quiet room would wait for its next event to notice the gap. So ``on_skip`` is
called with the partitions where records may have been skipped: a fetch returned an offset past
the next expected one, the end offset fell below our position, or a lag sample showed the same
position with records waiting twice in a row (the reader will not return them). The hub then
reads each local room of those partitions from the Store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from chat_core.models import RoomEvent, decode_event
from gateway import metrics
from shardchat.eventlog import EventLog, LogReader, LogRecord

log = logging.getLogger(__name__)

#: Routes a fetch's decoded events (a batch lets a room's events fan out together); returns
#: how many no local room wanted (waste).
OnEvents = Callable[[list[RoomEvent]], int]
#: Called with partitions whose records the reader may have skipped (see the module doc).
OnSkip = Callable[[list[int]], None]


class PartitionConsumer:
    def __init__(
        self,
        event_log: EventLog,
        on_events: OnEvents,
        on_skip: OnSkip = lambda partitions: None,
        *,
        linger_s: float = 5.0,
        fetch_timeout_ms: int = 50,
        lag_every_s: float = 5.0,
    ) -> None:
        self._log = event_log
        self._on_events = on_events
        self._on_skip = on_skip
        self._stuck: dict[int, int] = {}  # partition -> position at a sample that saw lag
        self._linger_s = linger_s
        self._fetch_timeout_ms = fetch_timeout_ms
        self._reader: LogReader | None = None
        self._refs: dict[int, int] = {}
        self._to_assign: dict[int, asyncio.Future[None]] = {}
        self._release_at: dict[int, float] = {}  # partition -> monotonic time to unassign
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lag_every_s = lag_every_s
        self._lag_at = 0.0  # monotonic time of the next lag sample
        self._position: dict[int, int] = {}  # partition -> next offset this gateway will read
        self.lag: dict[int, int] = {}  # partition -> last sampled lag
        self.consumed = 0
        self.unrouted = 0

    def partition_of(self, room_id: int) -> int:
        return self._log.partition_for(str(room_id).encode())

    def assigned(self) -> frozenset[int]:
        return self._reader.assignment() if self._reader is not None else frozenset()

    def start(self) -> None:
        self._reader = self._log.reader()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gateway-consumer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for fut in self._to_assign.values():
            if not fut.done():
                fut.cancel()
        if self._reader is not None:
            await self._reader.close()

    async def acquire(self, room_id: int) -> None:
        """Hold the room's partition; returns once it is assigned (records from now on flow)."""
        p = self.partition_of(room_id)
        self._refs[p] = self._refs.get(p, 0) + 1
        self._release_at.pop(p, None)
        if p in self.assigned() and p not in self._to_assign:
            return
        fut = self._to_assign.get(p)
        if fut is None:
            fut = self._to_assign[p] = asyncio.get_running_loop().create_future()
            self._wake.set()
        await asyncio.shield(fut)

    def release(self, room_id: int) -> None:
        p = self.partition_of(room_id)
        n = self._refs.get(p, 0) - 1
        if n > 0:
            self._refs[p] = n
            return
        self._refs.pop(p, None)
        self._release_at[p] = time.monotonic() + self._linger_s

    async def _apply_changes(self) -> None:
        reader = self._reader
        assert reader is not None
        now = time.monotonic()
        drop = [p for p, t in self._release_at.items() if t <= now and p not in self._refs]
        if drop:
            for p in drop:
                del self._release_at[p]
                self._position.pop(p, None)
                self._stuck.pop(p, None)
                self.lag.pop(p, None)
                with contextlib.suppress(KeyError):  # never sampled yet
                    metrics.PARTITION_LAG.remove(str(p))
            await reader.unassign(drop)
        if self._to_assign:
            batch, self._to_assign = self._to_assign, {}
            try:
                await reader.assign(dict.fromkeys(batch))
            except Exception as exc:
                for fut in batch.values():
                    if not fut.done():
                        fut.set_exception(exc)
                raise
            # Where each new partition starts (about: records appended since assign() resolved
            # its end only make this ahead, never behind): without it, records skipped before
            # the first lag sample (the reader's offset reset) could never be noticed.
            with contextlib.suppress(Exception):
                for p, end in (await reader.end_offsets(list(batch))).items():
                    self._position.setdefault(p, end)
            for fut in batch.values():
                if not fut.done():
                    fut.set_result(None)
            self._lag_at = 0.0  # sample the new partitions' positions right away
        metrics.ASSIGNED_PARTITIONS.set(len(reader.assignment()))

    async def _sample_lag(self) -> None:
        """Lag = end offset - our position. A partition assigned at its end has no position
        until its first record: the first sample takes the end offset as the position (records
        appended in between may briefly under-report lag, never over-report it)."""
        reader = self._reader
        assert reader is not None
        self._lag_at = time.monotonic() + self._lag_every_s
        assigned = sorted(reader.assignment())
        if not assigned:
            return
        ends = await reader.end_offsets(assigned)
        skipped = []
        for p, end in ends.items():
            pos = self._position.setdefault(p, end)
            if end < pos or (end > pos and self._stuck.get(p) == pos):
                skipped.append(p)  # truncated below us, or records the reader won't return
                self._position[p] = pos = end
            if end > pos:
                self._stuck[p] = pos
            else:
                self._stuck.pop(p, None)
            lag = max(0, end - pos)
            self.lag[p] = lag
            metrics.PARTITION_LAG.labels(str(p)).set(lag)
        if skipped:
            self._skipped(skipped)

    async def _run(self) -> None:
        reader = self._reader
        assert reader is not None
        while True:
            try:
                await self._apply_changes()
                if not reader.assignment():
                    self._wake.clear()
                    timeout = self._linger_s if self._release_at else None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    continue
                records = await reader.fetch(self._fetch_timeout_ms)
                if records:
                    self._route(records)
                if time.monotonic() >= self._lag_at:
                    await self._sample_lag()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event-log consumer error; retrying")
                await asyncio.sleep(0.5)

    def _skipped(self, partitions: list[int]) -> None:
        log.warning("partitions %s: records skipped by the reader; reading the Store", partitions)
        metrics.LOG_SKIPS.inc(len(partitions))
        self._on_skip(partitions)

    def _route(self, records: list[LogRecord]) -> None:
        wasted = 0
        position = self._position
        events: list[RoomEvent] = []
        jumped: set[int] = set()
        for rec in records:
            expected = position.get(rec.partition)
            if expected is None or rec.offset >= expected:
                if expected is not None and rec.offset > expected:
                    jumped.add(rec.partition)
                position[rec.partition] = rec.offset + 1
            try:
                events.append(decode_event(rec.value))
            except Exception:
                log.warning("undecodable record p%s@%s", rec.partition, rec.offset)
                wasted += 1
        wasted += self._on_events(events)
        if jumped:
            self._skipped(sorted(jumped))
        self.consumed += len(records)
        self.unrouted += wasted
        metrics.RECORDS_CONSUMED.inc(len(records))
        if wasted:
            metrics.RECORDS_UNROUTED.inc(wasted)
