"""EventLog on NATS JetStream (nats-py): one subject per partition, each in its own stream.

Layout (``T`` = the topic): partition ``p`` is the subject ``T.p`` of the stream ``T_p``. Why a
stream per partition rather than one stream holding every subject: JetStream numbers messages
per stream, and the port promises offsets per partition from 0, one by one. With a stream per
partition the stream sequence IS the offset + 1, with no producer-side counter to coordinate
between the processes that append. Stream ``T_0`` carries the partition count in its metadata
(``shardchat_partitions``): a log that predates us keeps its count, as a Kafka topic does.

Record: the payload is msgpack ``[key, value, headers]`` (exact bytes, whatever the header
values hold); the time is the stream's own timestamp of the message.

Append: ``publish_async`` per record on one connection, then every PubAck awaited (bounded by
``timeout_s``): the server stores a connection's messages in order, so the batch order holds per
key. A PubAck means the message is in the stream's file store; by default the server fsyncs
every ``sync_interval`` (2 minutes): a killed server process loses nothing acknowledged, an OS
crash may lose the newest messages unless ``sync_interval: always``. Replicated streams
(``num_replicas`` 3 on a NATS cluster) acknowledge after a quorum stored the message.

Retention: each stream keeps at most ``max_len`` messages (older ones are discarded); a reader
positioned before the first kept message continues from it.

Reader: one ordered push consumer (ephemeral, flow controlled, heartbeats; nats-py recreates it
from the last sequence it saw after a gap) per assigned partition, started at the reader's own
position. Messages land in one local queue that ``fetch`` drains; past ``max_buffered`` the
consumer callbacks wait, so flow control stops the server instead of memory growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError

from shardchat.eventlog import AppendError, EventLogError, LogReader, LogRecord, Record
from shardchat.partitioner import partition_for

DEFAULT_MAX_LEN = 1_000_000
_PARTITIONS_META = "shardchat_partitions"
_ERRORS = (NatsError, OSError, TimeoutError)
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[bytes, bytes, list[tuple[str, bytes]]]).decode


def stream_name(topic: str, partition: int) -> str:
    """A JetStream stream name for a partition (names may not hold ``.``, ``*``, ``>``, spaces)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", topic) + f"_{partition}"


class NatsEventLog:
    """The EventLog port on NATS JetStream. ``start`` creates the streams that are missing."""

    def __init__(
        self,
        url: str,
        topic: str,
        num_partitions: int = 32,
        *,
        max_len: int = DEFAULT_MAX_LEN,
        replicas: int = 1,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.topic = topic
        self.num_partitions = num_partitions
        self._max_len = max_len
        self._replicas = replicas
        self._timeout_s = timeout_s
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._readers: list[NatsLogReader] = []
        self._subjects: list[str] = []

    @property
    def js(self) -> JetStreamContext:
        """The one JetStream context (its async-publish reply inbox is made once)."""
        if self._js is None:
            raise EventLogError("nats event log not started")
        return self._js

    async def start(self) -> None:
        try:
            self._nc = await nats.connect(
                self.url,
                connect_timeout=2,
                max_reconnect_attempts=-1,  # keep trying: a restarted server comes back
                reconnect_time_wait=0.2,
                allow_reconnect=True,
            )
            self._js = self._nc.jetstream(timeout=self._timeout_s)
            self.num_partitions = await self._ensure_streams()
        except _ERRORS as exc:
            raise EventLogError(f"nats start failed: {exc!r}") from exc
        self._subjects = [self.subject(p) for p in range(self.num_partitions)]

    async def _ensure_streams(self) -> int:
        js = self.js
        try:
            info = await js.stream_info(stream_name(self.topic, 0))
            count = int((info.config.metadata or {}).get(_PARTITIONS_META, self.num_partitions))
        except NotFoundError:
            count = self.num_partitions
        for p in range(count):
            config = api.StreamConfig(
                name=stream_name(self.topic, p),
                subjects=[self.subject(p)],
                storage=api.StorageType.FILE,
                max_msgs=self._max_len,
                discard=api.DiscardPolicy.OLD,
                num_replicas=self._replicas,
                allow_direct=True,
                metadata={_PARTITIONS_META: str(count)} if p == 0 else None,
            )
            # The same config again succeeds; another one (an older max_len) is refused: the
            # existing stream is kept as it is.
            with contextlib.suppress(BadRequestError):
                await js.add_stream(config)
        return count

    async def close(self) -> None:
        for reader in list(self._readers):
            await reader.close()
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(*_ERRORS):
                await asyncio.wait_for(self._nc.drain(), self._timeout_s)
        self._nc = self._js = None

    def subject(self, partition: int) -> str:
        return f"{self.topic}.{partition}"

    def partition_for(self, key: bytes) -> int:
        return partition_for(key, self.num_partitions)

    async def append(
        self, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[int, int]:
        try:
            (result,) = await self.append_many([(key, value, headers)])
        except AppendError as exc:
            raise EventLogError(str(exc)) from exc
        return result

    async def append_many(self, records: Sequence[Record]) -> list[tuple[int, int]]:
        js = self.js
        partitions = [self.partition_for(key) for key, _, _ in records]
        futures: list[asyncio.Future[api.PubAck]] = []
        error: BaseException | None = None
        for (key, value, headers), p in zip(records, partitions, strict=True):
            try:
                futures.append(
                    await js.publish_async(self._subjects[p], _encode((key, value, list(headers))))
                )
            except _ERRORS as exc:
                # Stop here: publishing later records of a key after a failed one would reorder.
                error = exc
                break
        results: list[tuple[int, int] | None] = [None] * len(records)
        if futures:
            done, pending = await asyncio.wait(futures, timeout=self._timeout_s)
            for fut in pending:
                fut.cancel()  # fate unknown: reported as not durable
            for i, fut in enumerate(futures):
                if fut in done and fut.exception() is None:
                    results[i] = (partitions[i], fut.result().seq - 1)
                elif fut in done:
                    error = error or fut.exception()
                else:
                    error = error or TimeoutError(f"no PubAck within {self._timeout_s}s")
        if error is not None or any(r is None for r in results):
            raise AppendError(f"nats append failed: {error!r}", results)
        return [r for r in results if r is not None]

    def reader(self) -> LogReader:
        reader = NatsLogReader(self)
        self._readers.append(reader)
        return reader

    async def end_offsets(self, partitions: Sequence[int]) -> dict[int, int]:
        for p in partitions:
            if not 0 <= p < self.num_partitions:
                raise ValueError(f"no partition {p} in {self.topic}")
        js = self.js
        try:
            infos = await asyncio.gather(
                *(js.stream_info(stream_name(self.topic, p)) for p in partitions)
            )
        except _ERRORS as exc:
            raise EventLogError(f"nats end offsets failed: {exc!r}") from exc
        return {p: int(info.state.last_seq) for p, info in zip(partitions, infos, strict=True)}

    async def delete(self) -> None:
        """Delete every stream of the topic (tests and benchmarks; the service never does)."""
        js = self.js
        for p in range(self.num_partitions):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(stream_name(self.topic, p))


class NatsLogReader:
    """Ordered push consumers on the assigned partitions; see the module docstring."""

    def __init__(self, log: NatsEventLog, max_buffered: int = 50_000) -> None:
        self._log = log
        self._max_buffered = max_buffered
        self._subs: dict[int, Any] = {}  # partition -> PushSubscription
        self._next: dict[int, int] = {}  # partition -> next offset fetch returns
        self._received: dict[int, int] = {}  # partition -> next offset the consumer may queue
        self._gen: dict[int, int] = {}  # partition -> generation of its current consumer
        self._gens = 0
        self._buffer: deque[tuple[int, LogRecord]] = deque()
        self._arrived = asyncio.Event()
        self._drained = asyncio.Event()
        self._lock = asyncio.Lock()  # assignment changes apply one at a time, in call order
        self._closed = False

    async def assign(self, starts: Mapping[int, int | None]) -> None:
        for p in starts:
            if not 0 <= p < self._log.num_partitions:
                raise ValueError(f"no partition {p} in {self._log.topic}")
        async with self._lock:
            moves = {p: s for p, s in starts.items() if s is not None or p not in self._next}
            resolve = [p for p, s in moves.items() if s is None]
            ends = await self._log.end_offsets(resolve) if resolve else {}
            for p, start in moves.items():
                await self._stop(p)
                offset = max(0, start) if start is not None else ends[p]
                await self._consume(p, offset)

    async def unassign(self, partitions: Sequence[int]) -> None:
        async with self._lock:
            for p in partitions:
                await self._stop(p)

    def assignment(self) -> frozenset[int]:
        return frozenset(self._next)

    async def end_offsets(self, partitions: Sequence[int]) -> dict[int, int]:
        return await self._log.end_offsets(partitions)

    async def fetch(self, timeout_ms: int, max_records: int = 10_000) -> list[LogRecord]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            out = self._take(max_records)
            remaining = deadline - loop.time()
            if out or remaining <= 0 or self._closed:
                return out
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def _take(self, max_records: int) -> list[LogRecord]:
        out: list[LogRecord] = []
        buffer = self._buffer
        while buffer and len(out) < max_records:
            gen, record = buffer.popleft()
            p = record.partition
            # Queued by a consumer since replaced (moved) or stopped (unassigned): skip.
            if self._gen.get(p) != gen or record.offset < self._next[p]:
                continue
            self._next[p] = record.offset + 1
            out.append(record)
        if len(buffer) < self._max_buffered:
            self._drained.set()
        return out

    async def _consume(self, p: int, offset: int) -> None:
        self._gens += 1
        gen = self._gens
        self._gen[p] = gen
        self._next[p] = self._received[p] = offset

        async def on_msg(msg: Msg) -> None:
            while len(self._buffer) >= self._max_buffered and not self._closed:
                self._drained.clear()
                await self._drained.wait()
            if self._gen.get(p) != gen:
                return
            offset = msg.metadata.sequence.stream - 1
            if offset < self._received[p]:
                return  # a consumer recreated after a gap may repeat what it sent
            self._received[p] = offset + 1
            key, value, headers = _decode(msg.data)
            ts = int(msg.metadata.timestamp.timestamp() * 1000)
            self._buffer.append((gen, LogRecord(p, offset, key, value, ts, tuple(headers))))
            self._arrived.set()

        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=offset + 1
        )
        try:
            self._subs[p] = await self._log.js.subscribe(
                self._log.subject(p),
                stream=stream_name(self._log.topic, p),
                cb=on_msg,
                ordered_consumer=True,
                idle_heartbeat=2.0,
                config=config,
            )
        except _ERRORS as exc:
            self._forget(p)
            raise EventLogError(f"nats subscribe to partition {p} failed: {exc!r}") from exc

    def _forget(self, p: int) -> None:
        self._gen.pop(p, None)
        self._next.pop(p, None)
        self._received.pop(p, None)

    async def _stop(self, p: int) -> None:
        self._forget(p)
        sub = self._subs.pop(p, None)
        if sub is not None:
            with contextlib.suppress(*_ERRORS):
                await sub.unsubscribe()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._drained.set()
        self._arrived.set()
        async with self._lock:
            for p in list(self._subs):
                await self._stop(p)
        self._buffer.clear()
        with contextlib.suppress(ValueError):
            self._log._readers.remove(self)
