"""Group commit: gather concurrent submissions and write them in one call (one transaction).

Everything submitted while no writer is free, or within the same event-loop tick, is written
together, up to ``max_batch`` items. ``max_inflight`` writers may run at once so one batch's
round trips overlap the next batch's gathering. Each submitter gets its own result or its own
exception: when a whole batch fails, its items are retried one by one so one bad item cannot
fail the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Writes a batch; returns one result per item, in order (an exception = that item's error).
BatchWriter = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]


class GroupCommitter(Generic[T, R]):
    def __init__(
        self, write: BatchWriter[T, R], max_batch: int = 512, max_inflight: int = 2
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._writers: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._queue.append((item, fut))
        if len(self._writers) < self._max_inflight:
            task = asyncio.create_task(self._drain())
            self._writers.add(task)  # a strong reference: the loop keeps only weak ones
            task.add_done_callback(self._writers.discard)
        # shield: a cancelled caller must not cancel the write others share; its item may still
        # be stored, which idempotent retries (same nonce) make harmless.
        return await asyncio.shield(fut)

    async def close(self) -> None:
        """Wait until everything submitted so far is written."""
        while self._writers:
            await asyncio.gather(*self._writers, return_exceptions=True)

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let the rest of this tick's submitters join the batch
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            await self._write_batch(batch)

    async def _write_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = list(await self._write([item for item, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError("batch writer returned a wrong number of results")
        except Exception as exc:
            if len(batch) > 1:
                for one in batch:
                    await self._write_batch([one])
                return
            results = [exc]
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark the error seen: a submitter cancelled while shielded never awaits its future, and
    asyncio would log "exception was never retrieved" for it."""
    if not fut.cancelled():
        fut.exception()
