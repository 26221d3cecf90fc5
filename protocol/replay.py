"""Bounded buffer of a session's last DISPATCH events, for RESUME on the same gateway."""

from __future__ import annotations

from collections import deque
from itertools import islice

from protocol.codec import DispatchEvent


class ReplayBuffer:
    """The last ``maxlen`` events, keyed by their contiguous dispatch seq.

    Holds references to the shared ``DispatchEvent`` objects (not per-session bytes), so a full
    buffer costs about one pointer per event per session, and a replay can be re-encoded for a
    resuming connection that picked another encoding.
    """

    __slots__ = ("_events", "_last_seq", "_maxlen")

    #: Shared by every buffer that holds nothing yet: an empty deque costs ~760 bytes, a lot
    #: per idle session (the gateway runs with ``maxlen=0`` and never fills one).
    _EMPTY: deque[DispatchEvent] = deque(maxlen=0)

    def __init__(self, maxlen: int) -> None:
        if maxlen < 0:
            raise ValueError("maxlen must be >= 0")
        self._maxlen = maxlen
        self._events = self._EMPTY  # replaced by a real deque on the first append
        self._last_seq = 0

    @property
    def last_seq(self) -> int:
        """The seq of the newest event recorded (0 before any)."""
        return self._last_seq

    @property
    def first_seq(self) -> int:
        """The seq of the oldest event still held (``last_seq + 1`` when empty)."""
        return self._last_seq - len(self._events) + 1

    def __len__(self) -> int:
        return len(self._events)

    def append(self, seq: int, event: DispatchEvent) -> None:
        if seq != self._last_seq + 1:
            # A gap (the seq was restarted, say by a cross-node resume): older events can no
            # longer be replayed contiguously, so drop them rather than replay a hole.
            self._events.clear()
        if self._events is self._EMPTY and self._maxlen:
            self._events = deque(maxlen=self._maxlen)
        self._events.append(event)  # on _EMPTY (maxlen 0): kept nowhere, as intended
        self._last_seq = seq

    def reset(self, last_seq: int) -> None:
        """Forget everything; the next event recorded will be ``last_seq + 1``."""
        self._events.clear()
        self._last_seq = last_seq

    def after(self, seq: int) -> list[DispatchEvent] | None:
        """Events with seq > ``seq``, oldest first; None if some of them are gone (or ``seq`` is
        in the future, which only a confused client sends)."""
        if seq > self._last_seq or seq < self.first_seq - 1:
            return None
        return list(islice(self._events, seq - self.first_seq + 1, None))
