"""A minimal DataLoader: coalesce the ``load(key)`` calls of one execution tick into one batch.

graphql-core resolves the fields of list items concurrently (``asyncio.gather``), so the
``author`` resolvers of a 50-message page all call ``load`` within the same loop iteration.
Dispatch waits two iterations (nested gathers start their children one iteration later) and
then calls the batch function once for every key queued so far. Results are cached per request:
a loader lives in one request context and is never shared between users.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

BatchFn = Callable[[list[K]], Awaitable[Mapping[K, V]]]


class DataLoader(Generic[K, V]):
    def __init__(self, batch: BatchFn[K, V]) -> None:
        self._batch = batch
        self._cache: dict[K, asyncio.Future[V | None]] = {}
        self._queue: list[K] = []

    def prime(self, key: K, value: V) -> None:
        """Seed the cache with a value already fetched (saves a lookup later)."""
        if key not in self._cache:
            fut: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
            fut.set_result(value)
            self._cache[key] = fut

    def load(self, key: K) -> asyncio.Future[V | None]:
        fut = self._cache.get(key)
        if fut is not None:
            return fut
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._cache[key] = fut
        if not self._queue:
            loop.call_soon(loop.call_soon, self._start_dispatch)
        self._queue.append(key)
        return fut

    async def load_many(self, keys: Iterable[K]) -> list[V | None]:
        return list(await asyncio.gather(*(self.load(k) for k in keys)))

    def _start_dispatch(self) -> None:
        keys, self._queue = self._queue, []
        task = asyncio.ensure_future(self._dispatch(keys))
        task.add_done_callback(_consume)

    async def _dispatch(self, keys: list[K]) -> None:
        try:
            found = await self._batch(keys)
        except BaseException as exc:
            for k in keys:
                fut = self._cache.pop(k)
                if not fut.done():
                    fut.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for k in keys:
            fut = self._cache[k]
            if not fut.done():
                fut.set_result(found.get(k))


def _consume(task: asyncio.Future[None]) -> None:
    # errors were handed to the waiting futures; don't log "exception never retrieved"
    if not task.cancelled():
        task.exception()
