"""The node's subscription state: rooms, the partition consumer, sessions, ephemeral delivery.

No sockets here: sessions talk through their FrameSink, so this is the part shared by the
WebSocket server, the tests and the fan-out benchmark.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Protocol

import msgspec

from chat_core.models import Room, RoomEvent
from gateway import metrics
from gateway.consumer import PartitionConsumer
from gateway.fanout import fanout
from gateway.outbound import Flusher
from gateway.ports import ChatPort
from gateway.rooms import RoomState, RoomTable
from gateway.session import Session
from protocol.close_codes import CloseCode
from shardchat.registry import Registry

log = logging.getLogger(__name__)


def events_channel(gateway_id: str) -> str:
    """Where other gateways publish ephemeral events (typing, presence) for this one."""
    return f"gateway:{gateway_id}:events"


class Holder(Protocol):
    """The connection holding a session (closed when the session is resumed elsewhere)."""

    def close(self, code: CloseCode, reason: str = "") -> None: ...


class Ephemeral(msgspec.Struct):
    kind: str  # "typing" | "presence"
    user_id: int
    rooms: list[int]
    status: str = ""


_eph_enc = msgspec.msgpack.Encoder()
_eph_dec = msgspec.msgpack.Decoder(Ephemeral)


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
    ) -> None:
        self.gateway_id = gateway_id
        self.chat = chat
        self.registry = registry
        self.flusher = Flusher()
        self.rooms = RoomTable(chat.events_after, self._deliver, ring_size)
        self.consumer: PartitionConsumer = consumer_factory(self.rooms.on_events)
        self.sessions: dict[str, Session] = {}
        self.holders: dict[str, Holder] = {}
        self._room_ttl_s = room_ttl_s
        self._background: set[asyncio.Task[Any]] = set()

    # --- live delivery --------------------------------------------------------------------
    def _deliver(self, room: RoomState, events: list[RoomEvent]) -> None:
        start = 0
        for i, event in enumerate(events):
            if event.type == "MEMBER_LEAVE":
                # The leaver's sessions get their own MEMBER_LEAVE (the batch is cut right
                # after it) and then stop receiving the room (they could not SUBSCRIBE to it
                # again either).
                fanout(events[start : i + 1], room.live, self.flusher)
                start = i + 1
                user_id = event.data.get("user_id")
                for sess in [s for s in room.live if str(s.user_id) == user_id]:
                    self.unsubscribe(sess, room.room_id)
        if start < len(events):
            fanout(events[start:] if start else events, room.live, self.flusher)

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
    async def subscribe(
        self,
        session: Session,
        room_id: int,
        after_seq: int | None,
        known: Room | None = None,
        *,
        acked_seq: int | None = None,
    ) -> tuple[int, bool]:
        """Membership check, catch-up from ``after_seq``, then live. Raises ChatError.

        ``acked_seq`` is the room position the client is known to hold when it differs from
        ``after_seq`` (RESUME: the replayed events are dispatched but not yet acknowledged).
        """
        if known is None:
            await self.chat.get_room(session.user_id, room_id)  # NotFound / Forbidden
        if room_id in session.rooms:
            self.unsubscribe(session, room_id)
        session.rooms.add(room_id)
        room = self.rooms.get_or_create(room_id)
        room.attaching += 1
        try:
            await self._ensure_ready(session, room)
            if after_seq is not None:
                session.acked[room_id] = after_seq if acked_seq is None else acked_seq
            seq, recovered = await self.rooms.attach(room, session, after_seq)
        except BaseException:
            room.attaching -= 1
            session.rooms.discard(room_id)
            session.acked.pop(room_id, None)
            if not room.live and room.attaching == 0:
                self._drop_room(room_id)
            raise
        room.attaching -= 1
        if after_seq is None or not recovered:
            # Resume baseline is where the session went live; nothing before it is owed.
            session.acked[room_id] = seq
            if session.tail:  # older frames of the room must not move the baseline back
                session.tail = [
                    None if e is not None and e.room_id == room_id else e for e in session.tail
                ]
        session.dirty = True
        metrics.SUBSCRIPTIONS.inc()
        return seq, recovered

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

    # --- ephemeral events (typing, presence) ------------------------------------------------
    async def publish_typing(self, session: Session, room_id: int) -> None:
        msg = Ephemeral("typing", session.user_id, [room_id])
        self.deliver_ephemeral(msg)
        await self._publish_remote(msg, [room_id])

    async def publish_presence(self, session: Session, status: str) -> None:
        shown = "offline" if status == "invisible" else status
        msg = Ephemeral("presence", session.user_id, sorted(session.rooms), shown)
        self.deliver_ephemeral(msg)
        await self._publish_remote(msg, msg.rooms)

    async def _publish_remote(self, msg: Ephemeral, rooms: Iterable[int]) -> None:
        targets: set[str] = set()
        for room_id in rooms:
            targets |= await self.registry.gateways_for_room(room_id)
        targets.discard(self.gateway_id)
        if targets:
            payload = _eph_enc.encode(msg)
            for gid in targets:
                await self.registry.publish(events_channel(gid), payload)

    def on_ephemeral(self, payload: bytes) -> None:
        try:
            msg = _eph_dec.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        self.deliver_ephemeral(msg)

    def deliver_ephemeral(self, msg: Ephemeral) -> None:
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
