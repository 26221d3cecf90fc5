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
every await and every ``catch_up``.

A session joins a room through ``catch_up``: the events after its position are read from the ring
(or the Store, page by page) and queued outside the slow-consumer limit, waiting for the socket
to drain between chunks, so a backlog of any size up to ``MAX_RECOVER`` arrives; events applied
meanwhile are read too, and the session goes live once its position equals ``last_seq``.
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
#: history over GraphQL instead of the gateway streaming a room's whole past. Paced by the
#: socket (see ``catch_up``), so it is not bounded by the outbound limit: 10,000 events of the
#: longest content are about 40 MiB.
MAX_RECOVER = 10_000
#: Events read per step of a catch-up (from the ring, or one Store page).
CATCHUP_PAGE = 200
#: Bytes queued to a socket between two waits for it to drain, during a catch-up.
CATCHUP_CHUNK_BYTES = 64 * 1024
_ring_encode = msgspec.msgpack.Encoder().encode
_ring_decode = msgspec.msgpack.Decoder(RoomEvent).decode
_FILL_RETRIES = 5
#: Backoff of gap fill while the Store fails: 0.1 s doubling up to this.
_FILL_BACKOFF_MAX_S = 5.0


class CatchUpAborted(Exception):
    """The connection went away, or the session left the room, before it went live.

    Nothing about the session's position changed: what it acknowledged stays as it was, and what
    was queued to it is in its unacknowledged tail (a later RESUME replays from there)."""


class LeftRoom(CatchUpAborted):
    """The catch-up reached the session's own MEMBER_LEAVE: it was sent, and the room ends there
    (as in live delivery); the caller unsubscribes the session."""


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

    def __init__(
        self,
        fetch: FetchEvents,
        deliver: Deliver,
        ring_size: int,
        *,
        on_deliver_error: Callable[[RoomState], None] = lambda room: None,
        stall_s: float = 60.0,
    ) -> None:
        self._fetch = fetch
        self._deliver = deliver
        self._on_deliver_error = on_deliver_error
        self._stall_s = stall_s  # a catch-up whose socket takes nothing for this long is cut
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
                if not due:
                    continue
                try:
                    self._deliver(room, due)
                except Exception:
                    # The room's sessions may have missed these events: they must not go on as
                    # if they had them (they RESUME and get them from the ring or the Store).
                    log.exception("room %s: delivery failed", room.room_id)
                    self._on_deliver_error(room)

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
        """Fetch the missing range from the Store, deliver it in order, then the held events.

        Store errors are retried with backoff for as long as the gap exists (the room's held
        events wait behind it: order first); only cancellation (the room dropped) ends it."""
        retries = failures = 0
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
                try:
                    events = await self._fetch(room.room_id, last, want)
                except Exception:
                    failures += 1
                    if failures == 1 or failures % 20 == 0:
                        log.warning("room %s: gap fill failed %d times", room.room_id, failures)
                    await asyncio.sleep(min(_FILL_BACKOFF_MAX_S, 0.1 * 2 ** min(failures, 6)))
                    continue
                failures = 0
                progressed = self._apply_fetched(room, events)
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
        finally:
            self._deliver_due()
            room.filling = None

    def _apply_fetched(self, room: RoomState, events: list[RoomEvent]) -> bool:
        """Apply Store events that continue the room, then what they unblock; deliver them
        (before any await: see the module docstring). True if the room moved forward."""
        progressed = False
        for event in events:
            if room.last_seq is not None and event.seq == room.last_seq + 1:
                room.pending.pop(event.seq, None)
                self._apply(room, event)
                progressed = True
        self._drain(room)
        self._deliver_due()
        return progressed

    async def verify(self, room: RoomState) -> None:
        """Deliver what the Store has after the room's last seq (the log skipped records: an
        offset reset, records lost on a broker). A room with a gap fill running is left to it."""
        while room.last_seq is not None and room.filling is None:
            events = await self._fetch(room.room_id, room.last_seq, FETCH_PAGE)
            if room.filling is not None or not self._apply_fetched(room, events):
                return
            if len(events) < FETCH_PAGE:
                return

    # --- subscriptions ----------------------------------------------------------------------
    async def catch_up(self, room: RoomState, session: Session, pos: int) -> tuple[int, bool]:
        """Send ``session`` the room's events after ``pos``, paced by its socket; then it is live.

        Returns ``(seq, recovered)``: the room seq the session went live at, and whether every
        event after ``pos`` was sent (False: more than ``MAX_RECOVER`` behind, or the Store no
        longer has them; it went live at ``last_seq`` and the client refetches history).
        ``pos`` beyond what this node has applied (never beyond the Store: callers clamp) goes
        live at once and skips the events up to it as they arrive. Raises ``CatchUpAborted``
        (the socket closed or took nothing for ``stall_s``: then cut as a slow consumer, or the
        session was unsubscribed), ``LeftRoom`` (its own MEMBER_LEAVE was sent), and Store errors.
        The room must be initialised.
        """
        room_id = room.room_id
        assert room.last_seq is not None
        if pos > room.last_seq:
            session.skip[room_id] = pos
            room.live[session] = None
            return pos, True
        recovered = True
        queued = 0
        mine = str(session.user_id)
        while pos < room.last_seq:
            last = room.last_seq
            if last - pos > MAX_RECOVER:
                recovered = False
                break
            batch = room.ring_after(pos, min(last, pos + CATCHUP_PAGE))
            if batch is None:
                batch = await self._fetch(room_id, pos, CATCHUP_PAGE)
                self._check(session, room_id)
                if not batch or batch[0].seq != pos + 1:
                    recovered = False  # retention: the Store no longer has them
                    break
            for event in batch:
                if event.seq > room.last_seq:
                    break  # the Store is ahead of this node: they arrive live
                if event.seq != pos + 1:
                    raise AssertionError(f"room {room_id}: catch-up read {event.seq} at {pos}")
                queued += session.dispatch_catchup(event)
                pos = event.seq
                if event.type == "MEMBER_LEAVE" and event.data.get("user_id") == mine:
                    raise LeftRoom(room_id)
                if queued >= CATCHUP_CHUNK_BYTES:
                    queued = 0
                    await self._drained(session, room_id)
        if not recovered:
            pos = room.last_seq  # jump to live (PROTOCOL.md 4.3, recovered: false)
        room.live[session] = None
        return pos, recovered

    async def _drained(self, session: Session, room_id: int) -> None:
        try:
            await asyncio.wait_for(session.out.drained(), self._stall_s)
        except TimeoutError:
            session.out.cut()  # it reads nothing at all: a slow consumer after all (4010)
        self._check(session, room_id)

    @staticmethod
    def _check(session: Session, room_id: int) -> None:
        if session.out.closed or room_id not in session.rooms:
            raise CatchUpAborted(room_id)

    def detach(self, room: RoomState, session: Session) -> bool:
        """Remove ``session``; True when the room has no local subscriber left."""
        room.live.pop(session, None)
        return not room.live and room.attaching == 0
