"""Per-room state on this node: live subscribers, last delivered seq, a ring of recent events.

Guarantee (PROTOCOL.md 4.2): a live session of a room gets that room's events in seq order with
no gap and no duplicate. The log may deliver duplicates (redelivery, relay + fast path) and gaps
(a record published late by the outbox relay, a partition assigned after an event). So:
- ``seq <= last_seq``: duplicate, dropped;
- ``seq == last_seq + 1``: delivered, then any held successors;
- ``seq > last_seq + 1``: held, and the missing range is fetched from the Store first.
Invariant: every live session has received exactly the room's events ``..last_seq``; a session
joins ``live`` only when its catch-up position equals ``last_seq`` (checked with no await between).

Delivery is batched: events applied during one synchronous call (a log fetch routed with
``on_events``, a gap-fill page) collect in their room's ``due`` list and each room's list goes to
``deliver`` in one call before that call returns, so fan-out handles them in one pass per
recipient. ``due`` is empty whenever control leaves this module, so the invariant above holds at
every await and every ``attach``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

import msgspec

from chat_core.models import RoomEvent
from gateway import metrics
from gateway.session import Session

log = logging.getLogger(__name__)

#: ``(room_id, after_seq, limit) -> events with seq > after_seq, ascending`` (ChatService).
FetchEvents = Callable[[int, int, int], Awaitable[list[RoomEvent]]]
#: Called with a room's newly applied events (consecutive seqs, in order), for its live sessions.
Deliver = Callable[["RoomState", list[RoomEvent]], None]

FETCH_PAGE = 500
#: A catch-up longer than this is not recovered (``recovered: false``): the client refetches
#: history over GraphQL instead of the gateway streaming a room's whole past.
MAX_RECOVER = 10_000
_ring_encode = msgspec.msgpack.Encoder().encode
_ring_decode = msgspec.msgpack.Decoder(RoomEvent).decode
_FILL_RETRIES = 5


class RoomState:
    __slots__ = (
        "attaching",
        "due",
        "filling",
        "last_seq",
        "live",
        "pending",
        "ready",
        "ring",
        "room_id",
    )

    def __init__(self, room_id: int, ring_size: int) -> None:
        self.room_id = room_id
        self.last_seq: int | None = None  # None until initialised from the Store
        # The last events up to last_seq, contiguous, msgpack-encoded: a decoded event with its
        # ``data`` dict costs about 1.1 KiB, its encoding about a third of that, and the ring
        # is only read for catch-up (rooms x ring_buffer_events of them stay in memory).
        self.ring: deque[bytes] = deque(maxlen=ring_size)
        self.live: dict[Session, None] = {}  # ordered set
        self.pending: dict[int, RoomEvent] = {}  # seq -> event held behind a gap
        self.filling: asyncio.Task[None] | None = None
        self.ready: asyncio.Future[None] | None = None
        self.attaching = 0  # sessions between subscribe and live (keeps the room alive)
        self.due: list[RoomEvent] = []  # applied, not yet handed to deliver (see module doc)

    def ring_after(self, after_seq: int, upto: int) -> list[RoomEvent] | None:
        """Events ``after_seq+1 .. upto`` if the ring holds all of them, else None."""
        ring, last = self.ring, self.last_seq
        if not ring or last is None:
            return None
        first = last - len(ring) + 1
        if first > after_seq + 1 or last < upto:
            return None
        start = after_seq + 1 - first
        return [_ring_decode(ring[i]) for i in range(start, start + (upto - after_seq))]


class RoomTable:
    """The rooms this node has subscribers for, fed with the log's records in any order."""

    def __init__(self, fetch: FetchEvents, deliver: Deliver, ring_size: int) -> None:
        self._fetch = fetch
        self._deliver = deliver
        self._ring_size = ring_size
        self.rooms: dict[int, RoomState] = {}
        self._due_rooms: list[RoomState] = []  # rooms whose ``due`` is not empty

    def get(self, room_id: int) -> RoomState | None:
        return self.rooms.get(room_id)

    def get_or_create(self, room_id: int) -> RoomState:
        room = self.rooms.get(room_id)
        if room is None:
            room = self.rooms[room_id] = RoomState(room_id, self._ring_size)
        return room

    def drop(self, room_id: int) -> None:
        room = self.rooms.pop(room_id, None)
        if room is not None and room.filling is not None:
            room.filling.cancel()

    def initialise(self, room: RoomState, last_seq: int) -> None:
        """Set the room's start (the Store's last seq, read after its partition was assigned)."""
        if room.last_seq is not None:
            return
        room.last_seq = last_seq
        held = sorted(room.pending.items())
        room.pending.clear()
        for _, event in held:
            self._on_room_event(room, event)
        self._deliver_due()

    # --- live events ------------------------------------------------------------------------
    def on_events(self, events: Iterable[RoomEvent]) -> int:
        """Route a batch (one log fetch); returns how many no local room wanted (waste).

        Each room's deliverable events of the batch are fanned out together, after routing."""
        unrouted = 0
        try:
            for event in events:
                if not self._route(event):
                    unrouted += 1
        finally:
            self._deliver_due()
        return unrouted

    def on_event(self, event: RoomEvent) -> bool:
        """Route one event; False when no local room wants it (the waste ratio's numerator)."""
        try:
            return self._route(event)
        finally:
            self._deliver_due()

    def _route(self, event: RoomEvent) -> bool:
        room = self.rooms.get(event.room_id)
        if room is None:
            return False
        if room.last_seq is None:
            room.pending[event.seq] = event  # initialising: applied after the Store read
            return True
        self._on_room_event(room, event)
        return True

    def _on_room_event(self, room: RoomState, event: RoomEvent) -> None:
        last = room.last_seq
        assert last is not None
        seq = event.seq
        if seq <= last or seq in room.pending:
            metrics.DUPLICATES_DROPPED.inc()
            return
        if seq == last + 1 and room.filling is None:
            self._apply(room, event)
            self._drain(room)
            return
        room.pending[seq] = event
        if room.filling is None:
            room.filling = asyncio.get_running_loop().create_task(self._fill(room))

    def _apply(self, room: RoomState, event: RoomEvent) -> None:
        room.last_seq = event.seq
        room.ring.append(_ring_encode(event))
        if not room.due:
            self._due_rooms.append(room)
        room.due.append(event)

    def _deliver_due(self) -> None:
        """Hand every room's applied events to ``deliver``, one call per room, in seq order."""
        while self._due_rooms:  # deliver may not apply events, but stay safe if it does
            rooms, self._due_rooms = self._due_rooms, []
            for room in rooms:
                due, room.due = room.due, []
                if due:
                    self._deliver(room, due)

    def _drain(self, room: RoomState) -> None:
        pending = room.pending
        while pending:
            assert room.last_seq is not None
            event = pending.pop(room.last_seq + 1, None)
            if event is None:
                break
            self._apply(room, event)
        if pending:  # still a gap behind held events: drop stale ones, fill the rest
            assert room.last_seq is not None
            for seq in [s for s in pending if s <= room.last_seq]:
                del pending[seq]

    async def _fill(self, room: RoomState) -> None:
        """Fetch the missing range from the Store, deliver it in order, then the held events."""
        retries = 0
        try:
            while room.pending:
                last = room.last_seq
                assert last is not None
                first_held = min(room.pending)
                if first_held <= last + 1:
                    self._drain(room)
                    self._deliver_due()
                    continue
                metrics.GAP_FILLS.inc()
                want = min(first_held - last - 1, FETCH_PAGE)
                events = await self._fetch(room.room_id, last, want)
                progressed = False
                for event in events:
                    if room.last_seq is not None and event.seq == room.last_seq + 1:
                        room.pending.pop(event.seq, None)
                        self._apply(room, event)
                        progressed = True
                self._drain(room)
                self._deliver_due()  # before any await: see the module docstring
                if progressed:
                    retries = 0
                    continue
                retries += 1
                if retries > _FILL_RETRIES:
                    # The Store lacks the range (retention): skip to the held events rather
                    # than stall the room forever. Sessions resync via after_seq if they care.
                    log.warning(
                        "room %s: seq %s..%s unrecoverable", room.room_id, last + 1, first_held - 1
                    )
                    room.last_seq = first_held - 1
                    room.ring.clear()  # the ring holds contiguous seqs only
                    self._drain(room)
                    self._deliver_due()
                    retries = 0
                    continue
                await asyncio.sleep(0.05 * retries)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("room %s: gap fill failed", room.room_id)
        finally:
            self._deliver_due()
            room.filling = None
        if room.pending:  # an event arrived with a new gap while we were finishing
            room.filling = asyncio.get_running_loop().create_task(self._fill(room))

    # --- subscriptions ----------------------------------------------------------------------
    async def attach(
        self, room: RoomState, session: Session, after_seq: int | None
    ) -> tuple[int, bool]:
        """Catch ``session`` up from ``after_seq`` and make it live.

        Returns ``(seq, recovered)``: the room seq the session is at when it goes live, and
        whether every event after ``after_seq`` was delivered. The room must be initialised.
        """
        assert room.last_seq is not None
        if after_seq is None:
            room.live[session] = None
            return room.last_seq, False
        pos = after_seq
        recovered = True
        if pos > room.last_seq:
            # The client knows events this node has not seen yet: skip them when they arrive.
            session.skip[room.room_id] = pos
            room.live[session] = None
            return pos, True
        if room.last_seq - pos > MAX_RECOVER:
            room.live[session] = None
            return room.last_seq, False
        while pos < room.last_seq:
            target = room.last_seq
            batch = room.ring_after(pos, target)
            if batch is None:
                batch = await self._fetch(room.room_id, pos, min(target - pos, FETCH_PAGE))
                batch = [e for e in batch if e.seq <= target]
                if not batch or batch[0].seq != pos + 1:
                    recovered = False  # retention: the Store no longer has them
                    break
            if session.out.closed or room.room_id not in session.rooms:
                return pos, False
            for event in batch:
                if event.seq != pos + 1:
                    recovered = False
                    break
                session.dispatch_event(event)
                pos = event.seq
            if not recovered:
                break
        if not recovered:
            # Jump to live: the client refetches history (PROTOCOL.md 4.3, recovered: false).
            pos = room.last_seq
        room.live[session] = None
        return pos, recovered

    def detach(self, room: RoomState, session: Session) -> bool:
        """Remove ``session``; True when the room has no local subscriber left."""
        room.live.pop(session, None)
        return not room.live and room.attaching == 0
