"""The EventLog port: a partitioned, durable, append-only log keyed by room.

Adapters: ``shardchat.adapters.memory_log`` (embedded default) and ``shardchat.adapters.kafka_log``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec


class LogRecord(msgspec.Struct, frozen=True):
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()


class LogReader(Protocol):
    """One consumer of the log with a manual assignment (no consumer group, offsets are its own).

    Guarantees:
    - ``assign`` adds partitions and starts each at the given offset (``None`` = the current end);
      partitions already assigned keep their positions and their prefetched records.
    - ``unassign`` drops partitions; nothing of theirs is returned afterwards.
    - ``fetch`` returns records of assigned partitions, in offset order within a partition, each
      record once, waiting at most ``timeout_ms`` when none is ready.
    """

    async def assign(self, starts: Mapping[int, int | None]) -> None: ...

    async def unassign(self, partitions: Sequence[int]) -> None: ...

    def assignment(self) -> frozenset[int]: ...

    async def fetch(self, timeout_ms: int, max_records: int = 10_000) -> list[LogRecord]: ...

    async def end_offsets(self, partitions: Sequence[int]) -> dict[int, int]: ...

    async def close(self) -> None: ...


class EventLog(Protocol):
    """A partitioned, durable, append-only log (Kafka, or an in-process equivalent).

    Guarantees:
    - ``partition_for(key)`` is Kafka's murmur2 partitioner, the same in every process.
    - ``append`` returns once the record is durable (Kafka: acks=all, idempotent producer) and
      returns ``(partition, offset)``; records appended with one key keep their append order.
    - ``append_many`` is ``append`` for a batch, keeping the batch order per key.
    """

    num_partitions: int
    topic: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def partition_for(self, key: bytes) -> int: ...

    async def append(
        self, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[int, int]: ...

    async def append_many(
        self, records: Sequence[tuple[bytes, bytes, Sequence[tuple[str, bytes]]]]
    ) -> list[tuple[int, int]]: ...

    def reader(self) -> LogReader: ...
