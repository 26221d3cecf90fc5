"""ChatService: rooms, membership, messages, reactions, history and room-event recovery.

Every rule of chat lives here; the Store only makes each change atomic. Authorization:
an unknown room or message is NOT_FOUND; a room (or a message of a room) the actor is not a
member of is FORBIDDEN. Right after each commit the committed events are handed to
``on_commit`` (the outbox publisher's fast path); the Store's ``room_events`` rows are the
backstop the relay sweeps if that hand-off is lost.

Sends are measured (``chat_core.metrics``: outcome counter, call-to-ack latency) and, when
tracing is on, run in a ``chat.send_message`` span whose W3C context is stored with the event
(``RoomEvent.trace``) and so travels to the gateways in the Kafka record headers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import msgspec

from chat_core import metrics
from chat_core import validation as check
from chat_core.batcher import GroupCommitter
from chat_core.history_cache import CachedHistory
from chat_core.models import Message, Room, RoomEvent
from shardchat.config import Settings
from shardchat.errors import BadInput, Forbidden, NotFound
from shardchat.ids import IdGenerator
from shardchat.store import NewMessage, SendOutcome, Store
from shardchat.tracing import current_trace_headers, start_span

log = logging.getLogger(__name__)

OnCommit = Callable[[Sequence[RoomEvent]], None]
MAX_EVENTS_PAGE = 1000


def _no_op(events: Sequence[RoomEvent]) -> None:
    return None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class ChatService:
    """Construct with a started Store: ``ChatService(store, settings, on_commit=publisher)``.

    ``group_commit`` (default on) gathers concurrent ``send_message`` calls into one
    transaction of up to ``max_batch`` rows; call ``await close()`` on shutdown to flush.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        *,
        ids: IdGenerator | None = None,
        on_commit: OnCommit | None = None,
        group_commit: bool = True,
        max_batch: int = 512,
        max_inflight: int = 4,
        clock_ms: Callable[[], int] = _now_ms,
        history_cache: CachedHistory | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.ids = ids or IdGenerator()
        self.on_commit: OnCommit = on_commit or _no_op
        self._clock_ms = clock_ms
        self.history_cache = history_cache
        self._committer: GroupCommitter[NewMessage, SendOutcome] | None = None
        if group_commit:
            self._committer = GroupCommitter(self._write_batch, max_batch, max_inflight)

    async def close(self) -> None:
        if self._committer is not None:
            await self._committer.close()
        if self.history_cache is not None:
            await self.history_cache.close()

    def _published(self, events: Sequence[RoomEvent]) -> None:
        if not events:
            return
        if self.history_cache is not None:
            self.history_cache.committed(events)
        try:
            self.on_commit(events)
        except Exception:  # the change is committed: a failing sink must not fail the caller
            log.exception("on_commit sink failed; the outbox relay will publish these events")

    # --- rooms -----------------------------------------------------------------------------------
    async def _authorize(self, actor: int, room_id: int) -> Room:
        check.snowflake(room_id, "room id")
        room = await self.store.get_room(room_id)
        if room is None:
            raise NotFound("room not found")
        if not await self.store.is_member(room_id, actor):
            raise Forbidden("not a member of this room")
        return room

    async def create_room(self, actor: int, name: str, member_ids: Sequence[int] = ()) -> Room:
        """The actor and ``member_ids`` join at once, each with its own MEMBER_JOIN (actor first).
        Unknown member ids are BAD_USER_INPUT."""
        check.room_name(name)
        members = list(
            dict.fromkeys([actor, *(check.snowflake(m, "member id") for m in member_ids)])
        )
        known = await self.store.get_users(members)
        unknown = [m for m in members if m not in known]
        if unknown:
            raise BadInput(f"unknown user id(s): {', '.join(map(str, unknown))}")
        room, events = await self.store.create_room(
            self.ids.next_id(), name, self._clock_ms(), members
        )
        self._published(events)
        return room

    async def join_room(self, actor: int, room_id: int) -> Room:
        """Anyone may join an existing room; joining twice is a no-op (no second event)."""
        check.snowflake(room_id, "room id")
        result = await self.store.add_member(room_id, actor, self._clock_ms())
        if result is None:
            raise NotFound("room not found")
        room, event = result
        if event is not None:
            self._published([event])
        return room

    async def leave_room(self, actor: int, room_id: int) -> bool:
        """True when left. Unknown room: NOT_FOUND; not a member: FORBIDDEN (as for any other
        action of a non-member)."""
        check.snowflake(room_id, "room id")
        if await self.store.get_room(room_id) is None:
            raise NotFound("room not found")
        event = await self.store.remove_member(room_id, actor, self._clock_ms())
        if event is None:
            raise Forbidden("not a member of this room")
        self._published([event])
        return True

    async def get_room(self, actor: int, room_id: int) -> Room:
        return await self._authorize(actor, room_id)

    async def list_rooms(self, actor: int) -> list[Room]:
        return await self.store.rooms_of(actor)

    async def room_members(self, actor: int, room_id: int) -> list[int]:
        await self._authorize(actor, room_id)
        return await self.store.members_of(room_id)

    async def is_member(self, room_id: int, user_id: int) -> bool:
        return await self.store.is_member(room_id, user_id)

    # --- messages --------------------------------------------------------------------------------
    async def send_message(self, actor: int, room_id: int, content: str, nonce: str) -> Message:
        """Store a message (idempotent by ``(actor, nonce)``: a retry, even concurrent, returns
        the first message and creates nothing). Membership is checked in the storing
        transaction itself."""
        started = time.perf_counter()
        try:
            with start_span("chat.send_message"):
                outcome = await self._send(actor, room_id, content, nonce)
        except Exception as exc:
            # CancelledError is no outcome (the caller went away; its row may still commit).
            metrics.count_send_error(exc)
            raise
        # Only acknowledged sends feed the latency: a refused one returns early and would drag
        # the quantiles down exactly when something is wrong.
        metrics.SEND_LATENCY.observe(time.perf_counter() - started)
        if outcome.status == "created":
            metrics.SEND_OK.inc()
        else:
            metrics.SEND_DUPLICATE.inc()
        assert outcome.message is not None
        return outcome.message

    async def _send(self, actor: int, room_id: int, content: str, nonce: str) -> SendOutcome:
        """The stored outcome, ``created`` or ``duplicate``; a refusal raises."""
        check.snowflake(room_id, "room id")
        check.content(content, self.settings.max_content_chars)
        check.nonce(nonce, self.settings.max_nonce_bytes)
        row = NewMessage(
            self.ids.next_id(),
            room_id,
            actor,
            content,
            nonce,
            self._clock_ms(),
            # Taken inside the send span (the caller's span when there is one); {} when off.
            current_trace_headers(),
        )
        if self._committer is not None:
            outcome = await self._committer.submit(row)
        else:
            (outcome,) = await self._write_batch([row])
        if outcome.status == "no_room":
            raise NotFound("room not found")
        if outcome.status == "not_member":
            raise Forbidden("not a member of this room")
        return outcome

    async def _write_batch(self, rows: Sequence[NewMessage]) -> list[SendOutcome]:
        outcomes = await self.store.insert_messages(rows)
        self._published([o.event for o in outcomes if o.event is not None])
        return outcomes

    async def _own_message(self, actor: int, message_id: int) -> Message:
        """The live message the actor wrote, in a room the actor is still a member of."""
        msg = await self._visible_message(actor, message_id)
        if msg.author_id != actor:
            raise Forbidden("only the author may change this message")
        return msg

    async def _visible_message(self, actor: int, message_id: int) -> Message:
        check.snowflake(message_id, "message id")
        msg = await self.store.get_message(message_id)
        if msg is None or msg.deleted:
            raise NotFound("message not found")
        if not await self.store.is_member(msg.room_id, actor):
            raise Forbidden("not a member of this room")
        return msg

    async def edit_message(self, actor: int, message_id: int, content: str) -> Message:
        """Author only; a deleted message is NOT_FOUND. Emits MESSAGE_UPDATE."""
        check.content(content, self.settings.max_content_chars)
        await self._own_message(actor, message_id)
        result = await self.store.edit_message(message_id, content, self._clock_ms())
        if result is None:  # deleted in between
            raise NotFound("message not found")
        msg, event = result
        self._published([event])
        reactions = await self.store.reaction_counts([msg.id], actor)
        return msgspec.structs.replace(msg, reactions=reactions.get(msg.id, ()))

    async def delete_message(self, actor: int, message_id: int) -> bool:
        """Author only. Leaves a tombstone (content emptied, deleted=true, reactions dropped)
        and emits MESSAGE_DELETE. Already deleted: NOT_FOUND."""
        await self._own_message(actor, message_id)
        event = await self.store.delete_message(message_id, self._clock_ms())
        if event is None:
            raise NotFound("message not found")
        self._published([event])
        return True

    async def add_reaction(self, actor: int, message_id: int, emoji: str) -> bool:
        """True if added (REACTION_ADD emitted); False if the actor had it already."""
        check.emoji(emoji)
        await self._visible_message(actor, message_id)
        event = await self.store.add_reaction(message_id, actor, emoji, self._clock_ms())
        if event is None:
            return False
        self._published([event])
        return True

    async def remove_reaction(self, actor: int, message_id: int, emoji: str) -> bool:
        """True if removed (REACTION_REMOVE emitted); False if the actor had no such reaction."""
        check.emoji(emoji)
        await self._visible_message(actor, message_id)
        event = await self.store.remove_reaction(message_id, actor, emoji, self._clock_ms())
        if event is None:
            return False
        self._published([event])
        return True

    async def history(
        self,
        actor: int,
        room_id: int,
        before: int | None,
        after: int | None,
        limit: int = 50,
    ) -> tuple[list[Message], bool]:
        """A page of messages by id cursor, tombstones included (so cursors stay stable).

        ``after`` given: ids > after, OLDEST first (paging forward). Otherwise ids < ``before``
        (or the latest), NEWEST first. Both given: BAD_USER_INPUT. ``has_more``: more messages
        exist beyond the page in the same direction. Reactions are aggregated per emoji with
        ``me`` for the actor. Four queries per page whatever its size.
        """
        check.history_limit(limit)
        if before is not None and after is not None:
            raise BadInput("give before or after, not both")
        for cursor in (before, after):
            if cursor is not None:
                check.snowflake(cursor, "cursor")
        room = await self._authorize(actor, room_id)
        if self.history_cache is not None and before is None and after is None:
            items = await self.history_cache.newest(room, limit, self._newest)
        else:
            items = await self.store.list_messages(room_id, before, after, limit + 1)
        has_more = len(items) > limit
        items = items[:limit]
        counts = await self.store.reaction_counts([m.id for m in items if not m.deleted], actor)
        if counts:
            items = [
                msgspec.structs.replace(m, reactions=counts[m.id]) if m.id in counts else m
                for m in items
            ]
        return items, has_more

    async def events_after(self, room_id: int, after_seq: int, limit: int) -> list[RoomEvent]:
        """Stored events of the room with seq > after_seq, in seq order (recovery). No
        authorization here: the gateway checks membership when a session subscribes."""
        if after_seq < 0:
            raise BadInput("after_seq must be >= 0")
        limit = max(1, min(limit, MAX_EVENTS_PAGE))
        if self.history_cache is not None:
            cached = await self.history_cache.events_after(room_id, after_seq, limit)
            if cached is not None:
                return cached
        return await self.store.events_after(room_id, after_seq, limit)

    async def _newest(self, room_id: int, limit: int) -> list[Message]:
        return await self.store.list_messages(room_id, None, None, limit)
