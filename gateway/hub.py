"""The node's subscription state: rooms, the partition consumer, sessions, ephemeral delivery.

No sockets here: sessions talk through their Outbound, so this is the part shared by the
WebSocket server, the tests and the fan-out benchmark.

Catch-ups (SUBSCRIBE ``after_seq``, a RESUME's replay, a live room that fell behind in one burst)
run as jobs, one at a time per session and in submission order, on a task of their own: they
take as long as the client's socket needs, while the connection keeps reading its heartbeats
(which acknowledge what arrived) and serving its other ops.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from chat_core.models import RoomEvent
from gateway import metrics
from gateway.consumer import PartitionConsumer
from gateway.fanout import fanout
from gateway.outbound import Flusher
from gateway.ports import ChatPort
from gateway.rooms import CatchUpAborted, LeftRoom, RoomState, RoomTable
from gateway.session import Session
from protocol.close_codes import CloseCode
from shardchat.ephemeral import Ephemeral, decode_ephemeral, publish_to_room_gateways
from shardchat.registry import Registry

log = logging.getLogger(__name__)


class Holder(Protocol):
    """The connection holding a session (closed when the session is resumed elsewhere)."""

    def close(self, code: CloseCode, reason: str = "") -> None: ...


Job = Callable[[], Awaitable[None]]


class Hub:
    def __init__(
        self,
        gateway_id: str,
        chat: ChatPort,
        registry: Registry,
        consumer_factory: Any,
        *,
        ring_size: int,
        room_ttl_s: float,
        stall_s: float = 60.0,
        flush_window_s: float = 0.0,
    ) -> None:
        self.gateway_id = gateway_id
        self.chat = chat
        self.registry = registry
        self.flusher = Flusher(window_s=flush_window_s)
        self.rooms = RoomTable(
            chat.events_after,
            self._deliver,
            ring_size,
            on_deliver_error=self._deliver_failed,
            stall_s=stall_s,
        )
        self.consumer: PartitionConsumer = consumer_factory(self.rooms.on_events, self._verify)
        self.sessions: dict[str, Session] = {}
        self.holders: dict[str, Holder] = {}
        self._room_ttl_s = room_ttl_s
        self._background: set[asyncio.Task[Any]] = set()
        self._jobs: dict[Session, tuple[deque[Job], asyncio.Task[None]]] = {}

    # --- live delivery --------------------------------------------------------------------
    def _deliver(self, room: RoomState, events: list[RoomEvent]) -> None:
        start = 0
        overflow: list[Session] = []
        for i, event in enumerate(events):
            if event.type == "MEMBER_LEAVE":
                # The leaver's sessions get their own MEMBER_LEAVE (the batch is cut right
                # after it) and then stop receiving the room (they could not SUBSCRIBE to it
                # again either).
                self._fanout(room, events[start : i + 1], overflow)
                start = i + 1
                user_id = event.data.get("user_id")
                for sess in [s for s in room.live if str(s.user_id) == user_id]:
                    self.unsubscribe(sess, room.room_id)
        if start < len(events):
            self._fanout(room, events[start:] if start else events, overflow)

    def _fanout(self, room: RoomState, events: list[RoomEvent], overflow: list[Session]) -> None:
        fanout(events, room.live, self.flusher, overflow)
        if not overflow:
            return
        pos = events[0].seq - 1  # what each of them has of the room
        for sess in overflow:
            out = sess.out
            if out.base > out.limit // 2:
                out.cut()  # it had not taken what it was sent before: a slow consumer (4010)
                continue
            # It keeps up, but this batch alone (a big log fetch) passes its limit: it leaves
            # the live set and catches the room up paced, from where it is.
            room.live.pop(sess, None)
            room.attaching += 1
            self.submit(sess, functools.partial(self._resync, sess, room, pos))
        overflow.clear()

    async def _resync(self, session: Session, room: RoomState, pos: int) -> None:
        try:
            if room.room_id in session.rooms and self.rooms.get(room.room_id) is room:
                await self.rooms.catch_up(room, session, pos)
        except LeftRoom:
            self.unsubscribe(session, room.room_id)
        except CatchUpAborted:
            pass
        finally:
            self._detached(room)

    def _deliver_failed(self, room: RoomState) -> None:
        """Delivery of a room raised: its live sessions may lack events they will never get
        live; close them resumably (4000) so they RESUME and recover them by seq."""
        for sess in list(room.live):
            holder = self.holders.get(sess.session_id)
            if holder is not None:
                holder.close(CloseCode.INTERNAL_ERROR, "delivery failed")

    def _verify(self, partitions: Iterable[int]) -> None:
        """The log skipped records of these partitions (see PartitionConsumer): deliver what
        the Store has beyond each local room's last seq."""
        wanted = set(partitions)
        for room in list(self.rooms.rooms.values()):
            if self.consumer.partition_of(room.room_id) in wanted:
                self.spawn(self.rooms.verify(room))

    # --- catch-up jobs -----------------------------------------------------------------------
    def submit(self, session: Session, job: Job) -> None:
        """Run ``job`` after the session's earlier jobs, on the session's job task."""
        entry = self._jobs.get(session)
        if entry is None:
            queue: deque[Job] = deque()
            task = asyncio.get_running_loop().create_task(self._run_jobs(session, queue))
            entry = self._jobs[session] = (queue, task)
        entry[0].append(job)

    async def _run_jobs(self, session: Session, queue: deque[Job]) -> None:
        try:
            while queue:
                job = queue.popleft()
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # A Store or log error mid catch-up: the client's acknowledged positions
                    # are saved as they were; it reconnects and RESUMEs (4000).
                    log.warning("session %s: catch-up failed", session.session_id, exc_info=True)
                    holder = self.holders.get(session.session_id)
                    if holder is not None:
                        holder.close(CloseCode.INTERNAL_ERROR, "catch-up failed")
                    return
        finally:
            if self._jobs.get(session, (None,))[0] is queue:
                del self._jobs[session]

    def spawn(self, coro: Any) -> None:
        """Fire-and-forget registry writes; kept referenced until done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background registry call failed: %r", task.exception())

    # --- subscriptions ---------------------------------------------------------------------
    def hold(self, session: Session, room_id: int, acked: int) -> None:
        """Make the room part of the session at the client's position ``acked`` (saved with it
        from now on), before its catch-up starts."""
        if session.hold(room_id, acked):
            metrics.SUBSCRIPTIONS.inc()

    async def join(
        self, session: Session, room_id: int, pos: int, *, acked: int | None = None
    ) -> tuple[int, bool]:
        """Catch the session up in a room from ``pos`` (paced), then make it live there.

        The caller checked membership (and clamped ``pos`` to the room's last seq). ``acked``
        is the position the client is known to hold (default ``pos``); it stays the saved one
        while the catch-up's frames are unacknowledged, so a cut never skips what was unread.
        Returns ``catch_up``'s ``(seq, recovered)``; raises what it raises (``LeftRoom`` after
        unsubscribing the session).
        """
        self.hold(session, room_id, pos if acked is None else acked)
        room = self.rooms.get_or_create(room_id)
        room.attaching += 1
        try:
            await self._ensure_ready(session, room)
            seq, recovered = await self.rooms.catch_up(room, session, pos)
        except LeftRoom:
            self.unsubscribe(session, room_id)
            raise
        finally:
            self._detached(room)
        if not recovered:
            # Nothing before ``seq`` is owed any more: the client refetches history.
            session.acked[room_id] = seq
            if session.tail:  # older frames of the room must not move the baseline back
                session.tail = [
                    None if e is not None and e.room_id == room_id else e for e in session.tail
                ]
        return seq, recovered

    def _detached(self, room: RoomState) -> None:
        """A catch-up of ``room`` ended (live or not): drop the room if nobody holds it."""
        room.attaching -= 1
        if not room.live and room.attaching == 0 and self.rooms.get(room.room_id) is room:
            self._drop_room(room.room_id)

    async def _ensure_ready(self, session: Session, room: RoomState) -> None:
        if room.last_seq is not None:
            return
        if room.ready is not None:
            await asyncio.shield(room.ready)
            return
        ready = room.ready = asyncio.get_running_loop().create_future()
        acquired = False
        try:
            # Order matters: assign the partition first, then read the Store's last seq, so
            # every event after that seq either arrives live or fills a gap (never lost).
            acquired = True  # acquire() counts the reference before it awaits
            await self.consumer.acquire(room.room_id)
            info = await self.chat.get_room(session.user_id, room.room_id)
            self.rooms.initialise(room, info.last_seq)
            ready.set_result(None)
        except BaseException as exc:
            room.ready = None
            ready.set_exception(exc)
            ready.exception()  # retrieved: other waiters re-raise it themselves
            if acquired:
                self.consumer.release(room.room_id)
            raise
        self.spawn(self.registry.add_rooms(self.gateway_id, [room.room_id], self._room_ttl_s))

    def unsubscribe(self, session: Session, room_id: int) -> None:
        if room_id not in session.rooms:
            return
        session.rooms.discard(room_id)
        session.forget_room(room_id)
        session.dirty = True
        metrics.SUBSCRIPTIONS.dec()
        room = self.rooms.get(room_id)
        if room is not None and self.rooms.detach(room, session):
            self._drop_room(room_id)

    def _drop_room(self, room_id: int) -> None:
        room = self.rooms.get(room_id)
        if room is None:
            return
        initialised = room.last_seq is not None
        self.rooms.drop(room_id)
        if initialised:
            self.consumer.release(room_id)
            self.spawn(self.registry.remove_rooms(self.gateway_id, [room_id]))

    def remove_session(self, session: Session) -> None:
        entry = self._jobs.pop(session, None)
        if entry is not None:
            entry[1].cancel()
        for room_id in list(session.rooms):
            self.unsubscribe(session, room_id)
        if self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]
            self.holders.pop(session.session_id, None)
            metrics.SESSIONS.dec()

    def add_session(self, session: Session, holder: Holder) -> None:
        self.sessions[session.session_id] = session
        self.holders[session.session_id] = holder
        metrics.SESSIONS.inc()

    # --- ephemeral events (typing, presence, read state: shardchat/ephemeral.py) -------------
    async def publish_typing(self, session: Session, room_id: int) -> None:
        msg = Ephemeral("typing", session.user_id, [room_id])
        self.deliver_ephemeral(msg)
        await publish_to_room_gateways(self.registry, msg, [room_id], skip=self.gateway_id)

    async def publish_presence(self, session: Session, status: str) -> None:
        shown = "offline" if status == "invisible" else status
        msg = Ephemeral("presence", session.user_id, sorted(session.rooms), shown)
        self.deliver_ephemeral(msg)
        await publish_to_room_gateways(self.registry, msg, msg.rooms, skip=self.gateway_id)

    def on_ephemeral(self, payload: bytes) -> None:
        msg = decode_ephemeral(payload)
        if msg is not None:
            self.deliver_ephemeral(msg)

    def deliver_ephemeral(self, msg: Ephemeral) -> None:
        if msg.kind == "read_state":
            self._deliver_own(msg, "READ_STATE")
            return
        seen: set[Session] = set()
        for room_id in msg.rooms:
            room = self.rooms.get(room_id)
            if room is None:
                continue
            for sess in room.live:
                if sess in seen or sess.user_id == msg.user_id:
                    continue
                seen.add(sess)
                if msg.kind == "typing":
                    sess.dispatch(
                        "TYPING_START", {"room_id": str(room_id), "user_id": str(msg.user_id)}
                    )
                else:
                    sess.dispatch(
                        "PRESENCE_UPDATE", {"user_id": str(msg.user_id), "status": msg.status}
                    )

    def _deliver_own(self, msg: Ephemeral, t: str) -> None:
        """To the sessions of ``msg.user_id`` itself in the rooms (its other tabs, devices)."""
        for room_id in msg.rooms:
            room = self.rooms.get(room_id)
            if room is None:
                continue
            for sess in room.live:
                if sess.user_id == msg.user_id:
                    sess.dispatch(t, msg.data)
