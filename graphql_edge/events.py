"""``LogRoomEvents``: the RoomEventSource of subscriptions, from the Store then the EventLog.

One shared ``LogReader`` per edge process, not one per subscription: a Kafka consumer per
subscriber would cost a connection each. Partitions are assigned on demand (from the current end)
when the first subscriber of a room in that partition arrives, and dropped when the last leaves.
A pump task fetches records and offers each to the local subscribers of its room.

Per subscriber, no gap and no duplicate (docs/protocol.md section 4, rules 2-3):
1. register the subscriber's queue, then assign the partition (from its end): every event
   published from now on reaches the queue;
2. read the events after ``after_seq`` from the Store (``ChatService.events_after``, paged);
   they cover everything committed before step 1, because publication follows the commit;
3. then serve the queue, skipping seqs already yielded; a seq jump (the outbox relay publishing
   late, or the queue overflowing under a slow consumer) is filled from the Store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from chat_core.models import RoomEvent, decode_event
from shardchat.eventlog import EventLog, LogReader

log = logging.getLogger(__name__)


class EventHistory(Protocol):
    async def events_after(self, room_id: int, after_seq: int, limit: int) -> list[RoomEvent]: ...


class _Subscriber:
    __slots__ = ("lagged", "queue")

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[RoomEvent] = asyncio.Queue(size)
        self.lagged = False

    def offer(self, event: RoomEvent) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # drop rather than grow memory; the subscriber refills the gap from the Store
            self.lagged = True


class LogRoomEvents:
    def __init__(
        self,
        chat: EventHistory,
        log: EventLog,
        *,
        page_size: int = 500,
        queue_size: int = 1000,
        poll_ms: int = 500,
    ) -> None:
        self._chat = chat
        self._log = log
        self._page_size = page_size
        self._queue_size = queue_size
        self._poll_ms = poll_ms
        self._reader: LogReader | None = None
        self._subs: dict[int, set[_Subscriber]] = {}
        self._rooms_in_partition: dict[int, set[int]] = {}
        self._lock = asyncio.Lock()
        self._pump: asyncio.Task[None] | None = None

    async def subscribe(self, room_id: int, after_seq: int | None) -> AsyncIterator[RoomEvent]:
        sub = _Subscriber(self._queue_size)
        await self._add(room_id, sub)
        try:
            last = after_seq
            if last is not None:
                async for event in self._history(room_id, last, None):
                    yield event
                    last = event.seq
            while True:
                if sub.lagged:
                    sub.lagged = False
                    while not sub.queue.empty():
                        sub.queue.get_nowait()
                    if last is not None:
                        async for event in self._history(room_id, last, None):
                            yield event
                            last = event.seq
                    continue
                event = await sub.queue.get()
                if last is not None:
                    if event.seq <= last:
                        continue  # already served from the Store, or a duplicate publish
                    if event.seq > last + 1:
                        async for missed in self._history(room_id, last, event.seq - 1):
                            yield missed
                            last = missed.seq
                        if event.seq <= last:
                            continue
                yield event
                last = event.seq
        finally:
            await self._remove(room_id, sub)

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    async def _history(
        self, room_id: int, after: int, upto: int | None
    ) -> AsyncIterator[RoomEvent]:
        while True:
            page = await self._chat.events_after(room_id, after, self._page_size)
            for event in page:
                if upto is not None and event.seq > upto:
                    return
                if event.seq > after:
                    yield event
                    after = event.seq
            if len(page) < self._page_size:
                return

    async def _add(self, room_id: int, sub: _Subscriber) -> None:
        async with self._lock:
            self._subs.setdefault(room_id, set()).add(sub)
            partition = self._log.partition_for(str(room_id).encode())
            rooms = self._rooms_in_partition.setdefault(partition, set())
            rooms.add(room_id)
            if self._reader is None:
                self._reader = self._log.reader()
            if partition not in self._reader.assignment():
                await self._reader.assign({partition: None})
            if self._pump is None or self._pump.done():
                self._pump = asyncio.create_task(self._run_pump(self._reader))

    async def _remove(self, room_id: int, sub: _Subscriber) -> None:
        async with self._lock:
            subs = self._subs.get(room_id)
            if subs is None:
                return
            subs.discard(sub)
            if subs:
                return
            del self._subs[room_id]
            partition = self._log.partition_for(str(room_id).encode())
            rooms = self._rooms_in_partition.get(partition, set())
            rooms.discard(room_id)
            if not rooms:
                self._rooms_in_partition.pop(partition, None)
                if self._reader is not None:
                    await self._reader.unassign([partition])

    async def _run_pump(self, reader: LogReader) -> None:
        while True:
            try:
                records = await reader.fetch(self._poll_ms)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event log fetch failed; retrying")
                await asyncio.sleep(1.0)
                continue
            for record in records:
                try:
                    room_id = int(record.key)
                except ValueError:
                    continue
                subs = self._subs.get(room_id)
                if not subs:
                    continue
                event = decode_event(record.value)
                for sub in subs:
                    sub.offer(event)
