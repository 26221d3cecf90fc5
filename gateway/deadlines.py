"""Items filed by deadline, so a periodic check touches only those due (a timing wheel).

The gateway files every connection under its heartbeat deadline; the sweep asks for the ones
due instead of polling every connection every second (10k idle connections were 10k polls a
second). A deadline only moves later (a frame arrived), so an item taken out as due and found
not yet expired is filed again under its new deadline: each item is looked at about once per
heartbeat timeout, not once per sweep.
"""

from __future__ import annotations

import math
from typing import Generic, TypeVar

T = TypeVar("T")


class DeadlineWheel(Generic[T]):
    """Items in slots of ``resolution_s``: ``due(now)`` returns every item whose deadline is at
    or before ``now`` (possibly also some up to one slot later: callers re-check), each once,
    and forgets them. ``add`` of a filed item moves it; ``discard`` of an unknown item is a
    no-op."""

    def __init__(self, resolution_s: float) -> None:
        if resolution_s <= 0:
            raise ValueError("resolution_s must be > 0")
        self._res = resolution_s
        self._slots: dict[int, set[T]] = {}
        self._slot_of: dict[T, int] = {}
        self._next: int | None = None  # the lowest slot not yet returned by due()

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, item: object) -> bool:
        return item in self._slot_of

    def add(self, item: T, deadline: float) -> None:
        self.discard(item)
        # Floor: an item is returned in the first due() at or after its slot's start, which
        # may be before its deadline (by less than one slot); never after the due() following.
        slot = math.floor(deadline / self._res)
        if self._next is not None and slot < self._next:
            slot = self._next  # already past: returned by the next due()
        self._slots.setdefault(slot, set()).add(item)
        self._slot_of[item] = slot

    def discard(self, item: T) -> None:
        slot = self._slot_of.pop(item, None)
        if slot is not None:
            bucket = self._slots[slot]
            bucket.discard(item)
            if not bucket:
                del self._slots[slot]

    def due(self, now: float) -> list[T]:
        last = math.floor(now / self._res)
        out: list[T] = []
        if self._next is None or len(self._slots) < last - self._next:
            slots = [s for s in self._slots if s <= last]  # few filed slots: pick them out
        else:
            slots = [s for s in range(self._next, last + 1) if s in self._slots]
        for slot in slots:
            for item in self._slots.pop(slot):
                del self._slot_of[item]
                out.append(item)
        self._next = last + 1
        return out
