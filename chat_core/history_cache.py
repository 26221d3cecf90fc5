"""The history cache: the newest page of each active room, kept up to date by the room's events.

``HistoryCache`` is the port (adapters: ``shardchat.adapters.memory_history_cache`` and
``shardchat.adapters.redis_history_cache``, one contract suite in
tests/contract/test_history_cache_contract.py). ``CachedHistory`` is what ChatService uses:
read-through for the newest ``messages`` page and for catch-up (``events_after``), and the
updates from committed room events.

Why it is never stale: an entry names the room seq it reflects (``last_seq``) and a reader
compares it with the room's ``last_seq`` that it reads from the Store anyway (authorization
reads the room): every change of a room (send, edit, delete, reaction, join, leave) bumps the
seq, so an entry that missed an event no longer matches and is refilled. Catch-up needs no such
check: room events never change once committed, so any contiguous run of them is right.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Protocol

import msgspec

from chat_core import metrics
from chat_core.models import Message, Room, RoomEvent

log = logging.getLogger(__name__)


class CachedRoom(msgspec.Struct, frozen=True):
    """One room's entry. ``messages``: its newest messages, newest first, tombstones included,
    reactions NOT filled (they depend on the viewer); ``complete``: no older message exists;
    ``events``: its newest events, ascending and contiguous, the last one at ``last_seq``
    (empty right after a fill: it grows with the room's events)."""

    last_seq: int
    messages: tuple[Message, ...]
    complete: bool
    events: tuple[RoomEvent, ...] = ()


class HistoryCache(Protocol):
    """Entries per room with a TTL. Guarantees:
    - ``get`` returns the entry last stored (or None: absent, expired, or the backend failed:
      a cache failure is a miss, never an error for the reader);
    - ``put(room, entry, replaces=None)`` (a fill) stores unless the stored entry has a
      ``last_seq`` >= ``entry.last_seq``; ``put(room, entry, replaces=s)`` (an update) stores only
      when the stored entry's ``last_seq`` is ``s``; both atomic (one compare-and-set) across
      every process sharing the backend, and both restart the TTL. True when stored.
    - ``delete`` drops the entry.
    """

    async def get(self, room_id: int) -> CachedRoom | None: ...

    async def put(self, room_id: int, entry: CachedRoom, *, replaces: int | None) -> bool: ...

    async def delete(self, room_id: int) -> None: ...

    async def close(self) -> None: ...


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000 + 0.5)


def apply_events(entry: CachedRoom, events: Sequence[RoomEvent], size: int) -> CachedRoom | None:
    """``entry`` moved forward by ``events`` (ascending, of its room), or None when they do not
    follow it without a gap (the caller then drops the entry)."""
    messages = list(entry.messages)
    complete = entry.complete
    seq = entry.last_seq
    run = list(entry.events)
    for event in events:
        if event.seq <= seq:
            continue  # already applied (the relay may publish an event twice)
        if event.seq != seq + 1:
            return None
        seq = event.seq
        run.append(event)
        d = event.data
        if event.type == "MESSAGE_CREATE":
            if any(m.id == int(d["id"]) for m in messages):
                continue  # the fill read it already (rows are read after the room)
            messages.insert(
                0,
                Message(
                    int(d["id"]),
                    event.room_id,
                    event.seq,
                    int(d["author_id"]),
                    d["content"],
                    d.get("nonce"),
                    _ms(d["created_at"]),
                    encrypted=d.get("encrypted"),
                ),
            )
            if len(messages) > size:
                del messages[size:]
                complete = False
        elif event.type in ("MESSAGE_UPDATE", "MESSAGE_DELETE"):
            target = int(d["id"])
            for i, msg in enumerate(messages):
                if msg.id == target:
                    if event.type == "MESSAGE_UPDATE":
                        msg = msgspec.structs.replace(
                            msg,
                            content=d["content"],
                            edited_at_ms=_ms(d["edited_at"]),
                            encrypted=d.get("encrypted"),
                        )
                    else:
                        msg = msgspec.structs.replace(
                            msg,
                            content="",
                            deleted=True,
                            encrypted=None,
                            mentions=(),
                            attachments=(),
                        )
                    messages[i] = msg
                    break
        # Reactions and membership change no cached field (reactions are read per viewer).
    return CachedRoom(seq, tuple(messages), complete, tuple(run[-size:]))


ListNewest = Callable[[int, int], Awaitable[list[Message]]]


class CachedHistory:
    """Read-through over a HistoryCache, and its updater (one task: updates apply in the order
    this process committed them).

    ``size``: messages and events kept per room (a page beyond it goes to the Store).
    """

    def __init__(self, cache: HistoryCache, size: int = 200) -> None:
        self.cache = cache
        self.size = size
        self._queue: asyncio.Queue[list[RoomEvent]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def newest(self, room: Room, limit: int, load: ListNewest) -> list[Message]:
        """The room's newest ``limit`` messages (at most ``limit + 1`` returned, as
        ``Store.list_messages`` does, so callers see whether more exist); ``load(room_id, n)``
        reads the newest ``n`` from the Store on a miss."""
        entry = await self.cache.get(room.id)
        if entry is not None and entry.last_seq == room.last_seq and limit < len(entry.messages):
            metrics.HISTORY_HIT.inc()
            return list(entry.messages[: limit + 1])
        if entry is not None and entry.last_seq == room.last_seq and entry.complete:
            metrics.HISTORY_HIT.inc()
            return list(entry.messages)
        metrics.HISTORY_MISS.inc()
        want = max(limit + 1, self.size)
        items = await load(room.id, want)
        # The rows were read after the room: they are at least as new as room.last_seq.
        fresh = CachedRoom(room.last_seq, tuple(items[: self.size]), len(items) < want)
        with contextlib.suppress(Exception):
            await self.cache.put(room.id, fresh, replaces=None)
        return items[: limit + 1]

    async def events_after(
        self, room_id: int, after_seq: int, limit: int
    ) -> list[RoomEvent] | None:
        """Events ``after_seq+1 .. after_seq+limit`` when the cached run holds all of them,
        else None (the caller reads the Store)."""
        entry = await self.cache.get(room_id)
        run = entry.events if entry is not None else ()
        if run and run[0].seq <= after_seq + 1 and run[-1].seq >= after_seq + limit:
            metrics.EVENTS_HIT.inc()
            start = after_seq + 1 - run[0].seq
            return list(run[start : start + limit])
        metrics.EVENTS_MISS.inc()
        return None

    def committed(self, events: Sequence[RoomEvent]) -> None:
        """Queue committed events for the update (never blocks, never raises)."""
        if events:
            self._queue.put_nowait(list(events))
            if self._worker is None or self._worker.done():
                self._worker = asyncio.get_running_loop().create_task(self._update_loop())

    async def _update_loop(self) -> None:
        while not self._queue.empty():
            batch = self._queue.get_nowait()
            by_room: dict[int, list[RoomEvent]] = {}
            for event in batch:
                by_room.setdefault(event.room_id, []).append(event)
            for room_id, events in by_room.items():
                try:
                    await self._update(room_id, sorted(events, key=lambda e: e.seq))
                except Exception:
                    log.warning("history cache update of room %d failed", room_id, exc_info=True)

    async def _update(self, room_id: int, events: list[RoomEvent]) -> None:
        entry = await self.cache.get(room_id)
        if entry is None:
            return  # not cached: the next reader fills it
        moved = apply_events(entry, events, self.size)
        if moved is None:
            metrics.HISTORY_CACHE_DROPPED.inc()
            await self.cache.delete(room_id)
        elif moved.last_seq != entry.last_seq and not await self.cache.put(
            room_id, moved, replaces=entry.last_seq
        ):
            # Another process moved it meanwhile; readers compare seqs, so leaving it is safe.
            metrics.HISTORY_CACHE_DROPPED.inc()

    async def close(self) -> None:
        """Apply what is queued, then close the cache."""
        if self._worker is not None:
            with contextlib.suppress(Exception):
                await self._worker
        await self.cache.close()
