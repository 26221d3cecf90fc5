"""In-process EventLog: the embedded default and the test double of the Kafka adapter.

It keeps Kafka's semantics (per-partition offsets from 0, murmur2 partitioning, a reader with a
manual assignment) so code tested against it behaves the same on Kafka. Records live in memory
for the life of the process; "durable" here means "appended to the list".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from shardchat.eventlog import AppendError, EventLogError, LogReader, LogRecord, Record
from shardchat.partitioner import partition_for


class MemoryEventLog:
    """The EventLog port in memory. ``set_available(False)`` simulates a broker outage."""

    def __init__(self, num_partitions: int = 32, topic: str = "room-events") -> None:
        self.num_partitions = num_partitions
        self.topic = topic
        self._partitions: list[list[LogRecord]] = [[] for _ in range(num_partitions)]
        # Replaced by a fresh Event on every append so each waiting reader wakes exactly once.
        self._appended = asyncio.Event()
        self._available = True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def set_available(self, available: bool) -> None:
        """Fault injection: while unavailable, appends raise :class:`EventLogError`."""
        self._available = available

    def partition_for(self, key: bytes) -> int:
        return partition_for(key, self.num_partitions)

    async def append(
        self, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[int, int]:
        if not self._available:
            raise EventLogError("memory log unavailable")
        result = self._append(key, value, headers)
        self._notify()
        return result

    async def append_many(self, records: Sequence[Record]) -> list[tuple[int, int]]:
        if not self._available:
            raise AppendError("memory log unavailable", [None] * len(records))
        results = [self._append(key, value, headers) for key, value, headers in records]
        self._notify()
        return results

    def reader(self) -> LogReader:
        return MemoryLogReader(self)

    def records(self, partition: int) -> Sequence[LogRecord]:
        """Everything in ``partition`` (tests and the embedded single-process mode)."""
        return self._partitions[partition]

    def end_offset(self, partition: int) -> int:
        return len(self._partitions[partition])

    async def wait_appended(self, timeout_s: float) -> None:
        """Wait until the next append, at most ``timeout_s``."""
        event = self._appended
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return

    def _append(
        self, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> tuple[int, int]:
        partition = self.partition_for(key)
        log = self._partitions[partition]
        offset = len(log)
        log.append(
            LogRecord(partition, offset, key, value, int(time.time() * 1000), tuple(headers))
        )
        return partition, offset

    def _notify(self) -> None:
        event, self._appended = self._appended, asyncio.Event()
        event.set()


class MemoryLogReader:
    """A reader of :class:`MemoryEventLog` with Kafka's manual-assignment semantics."""

    def __init__(self, log: MemoryEventLog) -> None:
        self._log = log
        self._positions: dict[int, int] = {}  # partition -> next offset to return
        self._closed = False

    async def assign(self, starts: Mapping[int, int | None]) -> None:
        for partition, start in starts.items():
            self._check(partition)
            if start is None:
                # Already assigned + None keeps the position (nothing skipped), as on Kafka.
                self._positions.setdefault(partition, self._log.end_offset(partition))
            else:
                self._positions[partition] = max(0, start)

    async def unassign(self, partitions: Sequence[int]) -> None:
        for partition in partitions:
            self._positions.pop(partition, None)

    def assignment(self) -> frozenset[int]:
        return frozenset(self._positions)

    async def fetch(self, timeout_ms: int, max_records: int = 10_000) -> list[LogRecord]:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            out = self._take(max_records)
            remaining = deadline - time.monotonic()
            if out or remaining <= 0 or self._closed:
                return out
            await self._log.wait_appended(remaining)

    async def end_offsets(self, partitions: Sequence[int]) -> dict[int, int]:
        for partition in partitions:
            self._check(partition)
        return {p: self._log.end_offset(p) for p in partitions}

    async def close(self) -> None:
        self._closed = True
        self._positions.clear()

    def _take(self, max_records: int) -> list[LogRecord]:
        out: list[LogRecord] = []
        for partition, position in self._positions.items():
            if len(out) >= max_records:
                break
            chunk = self._log.records(partition)[position : position + max_records - len(out)]
            if chunk:
                out.extend(chunk)
                self._positions[partition] = position + len(chunk)
        return out

    def _check(self, partition: int) -> None:
        if not 0 <= partition < self._log.num_partitions:
            raise ValueError(f"no partition {partition} in {self._log.topic}")
