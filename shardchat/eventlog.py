"""The EventLog port: a partitioned, durable, append-only log keyed by room.

Adapters: ``shardchat.adapters.memory_log`` (embedded default) and ``shardchat.adapters.kafka_log``.
Both pass the one contract suite in ``tests/contract/test_eventlog_contract.py``.

Every producer and consumer names a room's records with :func:`room_key` (the room id as ASCII
decimal), so ``partition_for(room_key(room_id))`` tells any process which partition holds a room.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec

#: One record to append: ``(key, value, headers)``.
Record = tuple[bytes, bytes, Sequence[tuple[str, bytes]]]


def room_key(room_id: int) -> bytes:
    """The record key of a room's events: its id in ASCII decimal (the wire form of ids)."""
    return str(room_id).encode()


class EventLogError(Exception):
    """The log could not do what was asked (broker down, timeout). Retrying later is safe."""


class AppendError(EventLogError):
    """``append_many`` failed for some records.

    ``results[i]`` is ``(partition, offset)`` for each record that is durable and ``None`` for each
    one that is not (it was not written, or its fate is unknown and a retry may duplicate it).
    """

    def __init__(self, message: str, results: list[tuple[int, int] | None]) -> None:
        super().__init__(message)
        self.results = results


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
    - ``assign`` adds partitions and starts each at the given offset (``None`` = the current end,
      resolved when ``assign`` returns). Partitions already assigned keep their positions and
      nothing of theirs is lost or returned twice. Assigning a partition that is already assigned
      with an explicit offset moves it there (records may then repeat); with ``None`` it is a no-op.
    - ``unassign`` drops partitions; nothing of theirs is returned by a ``fetch`` that starts after
      ``unassign`` returned. Unknown partitions are ignored.
    - Concurrent ``assign``/``unassign`` calls are applied in call order; calls made while a change
      is in flight are coalesced into the next one.
    - ``fetch`` returns records of assigned partitions, in offset order within a partition, each
      record once, waiting at most ``timeout_ms`` when none is ready (then returns ``[]``).
      Only one ``fetch`` may run at a time.
    - ``end_offsets`` gives, per partition, the offset the next appended record will get.
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
    - ``partition_for(key)`` is Kafka's murmur2 partitioner (``shardchat.partitioner``), the same
      in every process; ``num_partitions`` is the real partition count after ``start``.
    - ``append`` returns once the record is durable (Kafka: acks=all, idempotent producer) and
      returns ``(partition, offset)``; records appended with one key keep their append order, and
      a producer-internal retry never duplicates a record.
    - ``append_many`` is ``append`` for a batch, keeping the batch order per key, and returns the
      results in batch order. On failure it raises :class:`AppendError` telling which records
      are durable; ``append`` raises :class:`EventLogError`.
    - Offsets of a partition start at 0 and grow by one per record.
    """

    num_partitions: int
    topic: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def partition_for(self, key: bytes) -> int: ...

    async def append(
        self, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[int, int]: ...

    async def append_many(self, records: Sequence[Record]) -> list[tuple[int, int]]: ...

    def reader(self) -> LogReader: ...
