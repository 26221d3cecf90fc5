"""ChatService: rooms, membership, messages, reactions, history and room-event recovery.

Every rule of chat lives here; the Store only makes each change atomic. Access (docs/protocol.md
section 9): rooms are private unless created public; public rooms are listed and anyone joins
them; private rooms are joined only by invitation (owner and admins invite; in a public room any
member does); direct rooms are the one private room of a pair. To a non-member, a room that
exists and one that does not are the same: NOT_FOUND, same message, on every path, so room ids
can't be probed. FORBIDDEN is kept for members lacking a role (an admin removing the owner).
Right after each commit the committed events are handed to
``on_commit`` (the outbox publisher's fast path); the Store's ``room_events`` rows are the
backstop the relay sweeps if that hand-off is lost.

Read state: ``mark_read`` / ``set_room_muted`` store a member's position and mute flag and hand
the new ``ReadState`` to ``on_read`` (the composition root publishes it to the user's gateway
sessions as READ_STATE); ``read_states`` serves unread and mention counts. Mentions: a sent
message's ``@username`` words are resolved to users here; the Store keeps those who are members.

A send may carry attachments: ids of uploads (``chat_core.files``) that ``files.prepare``
verifies before the transaction, which then attaches them with the message, all or none.

Sends are measured (``chat_core.metrics``: outcome counter, call-to-ack latency) and, when
tracing is on, run in a ``chat.send_message`` span whose W3C context is stored with the event
(``RoomEvent.trace``) and so travels to the gateways in the Kafka record headers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import msgspec

from chat_core import metrics
from chat_core import validation as check
from chat_core.batcher import GroupCommitter
from chat_core.e2e import KeyService
from chat_core.history_cache import CachedHistory
from chat_core.mentions import mention_names
from chat_core.models import Attachment, Invitation, Message, ReadState, Room, RoomEvent
from shardchat.config import Settings
from shardchat.e2e import scheme
from shardchat.errors import BadInput, Forbidden, NotFound
from shardchat.ids import IdGenerator
from shardchat.keydirectory import KeyDirectory
from shardchat.store import AttachConflict, EpochRefusal, NewMessage, SendOutcome, Store
from shardchat.tracing import current_trace_headers, start_span

log = logging.getLogger(__name__)

OnCommit = Callable[[Sequence[RoomEvent]], None]
#: Told a user's new read state of a room (after ``mark_read`` / ``set_room_muted``).
OnRead = Callable[[int, ReadState], Awaitable[None]]
MAX_EVENTS_PAGE = 1000
MAX_INVITES = 100  # users per inviteToRoom
MAX_PUBLIC_PAGE = 100
_NO_ROOM = "room not found"
_NO_MESSAGE = "message not found"
#: Unread and mention counts stop here: a badge shows "999+", and counting costs at most this.
COUNT_CAP = 1000


class AttachmentSource(Protocol):
    """What a send needs of files (``chat_core.files.service.FileService``)."""

    async def prepare(
        self, actor: int, room_id: int, upload_ids: Sequence[int]
    ) -> tuple[Attachment, ...]:
        """The verified attachments, in order, or a ChatError; attaches nothing itself."""
        ...


#: The epoch refusals of encrypted rooms (docs/e2e.md 6.1) as errors: (message, reason).
_REFUSALS: dict[str, tuple[str, str]] = {
    "encrypted_room": (
        "this room is end-to-end encrypted: send an encrypted payload",
        "ENCRYPTED_ROOM",
    ),
    "not_encrypted": ("this room is not end-to-end encrypted: send content", "NOT_ENCRYPTED"),
    "stale_epoch": ("not the room's current key epoch: fetch the room key", "STALE_EPOCH"),
    "rotation_due": (
        "the members or their devices changed: rotate the room key first",
        "ROTATION_DUE",
    ),
}


def _refused(status: EpochRefusal | str) -> BadInput:
    message, reason = _REFUSALS[status]
    return BadInput(message, reason=reason)


def _no_op(events: Sequence[RoomEvent]) -> None:
    return None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class ChatService:
    """Construct with a started Store: ``ChatService(store, settings, on_commit=publisher)``.

    ``group_commit`` (default on) gathers concurrent ``send_message`` calls into one
    transaction of up to ``max_batch`` rows; call ``await close()`` on shutdown to flush.
    ``files`` enables attachments (set it after construction when it needs this service).
    """

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        *,
        ids: IdGenerator | None = None,
        on_commit: OnCommit | None = None,
        on_read: OnRead | None = None,
        files: AttachmentSource | None = None,
        group_commit: bool = True,
        max_batch: int = 512,
        max_inflight: int = 4,
        clock_ms: Callable[[], int] = _now_ms,
        history_cache: CachedHistory | None = None,
        keys: KeyDirectory | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.ids = ids or IdGenerator()
        self.on_commit: OnCommit = on_commit or _no_op
        self.on_read = on_read
        self.files = files
        self._clock_ms = clock_ms
        self.history_cache = history_cache
        self._committer: GroupCommitter[NewMessage, SendOutcome] | None = None
        if group_commit:
            self._committer = GroupCommitter(self._write_batch, max_batch, max_inflight)
        #: end-to-end encrypted rooms: device lists, room keys (``keys`` defaults to the
        #: KeyDirectory on the Store's database)
        self.keys = KeyService(
            store, keys or store.key_directory(), self.settings, self._member_room, clock_ms
        )

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
    async def _member_room(self, actor: int, room_id: int) -> tuple[Room, str]:
        """The room and the actor's role, or NOT_FOUND: the same answer, after the same query,
        whether the room is unknown or the actor is not in it."""
        check.snowflake(room_id, "room id")
        role = await self.store.member_role(room_id, actor)
        room = await self.store.get_room(room_id) if role is not None else None
        if room is None or role is None:
            raise NotFound(_NO_ROOM)
        return room, role

    async def _known_users(self, user_ids: Sequence[int], what: str) -> list[int]:
        ids = list(dict.fromkeys(check.snowflake(u, what) for u in user_ids))
        known = await self.store.get_users(ids)
        unknown = [u for u in ids if u not in known]
        if unknown:
            raise BadInput(f"unknown user id(s): {', '.join(map(str, unknown))}")
        return ids

    async def create_room(
        self,
        actor: int,
        name: str,
        member_ids: Sequence[int] = (),
        *,
        public: bool = False,
        encrypted: bool = False,
    ) -> Room:
        """The actor (the owner) and ``member_ids`` join at once, each with its own MEMBER_JOIN
        (actor first). Unknown member ids are BAD_USER_INPUT. An ``encrypted`` room starts at
        key epoch 0 with a rotation due (docs/e2e.md 6.1)."""
        check.room_name(name)
        members = await self._known_users([actor, *member_ids], "member id")
        room, events = await self.store.create_room(
            self.ids.next_id(), name, self._clock_ms(), members, public=public, encrypted=encrypted
        )
        self._published(events)
        return room

    async def open_direct_room(self, actor: int, other: int) -> Room:
        """The one private two-person room of the pair, created on first use (idempotent and
        race-safe: concurrent calls of either side return the same room)."""
        if check.snowflake(other, "user id") == actor:
            raise BadInput("a direct room needs another user")
        users = await self.store.get_users([actor, other])
        if other not in users:
            raise BadInput(f"unknown user id(s): {other}")
        first, second = sorted((actor, other))
        name = f"{users[first].username}, {users[second].username}"[:100]
        room, events = await self.store.open_direct_room(
            self.ids.next_id(), actor, other, name, self._clock_ms()
        )
        self._published(events)
        return room

    async def _add(self, actor: int, room_id: int) -> Room:
        result = await self.store.add_member(room_id, actor, self._clock_ms())
        if result is None:
            raise NotFound(_NO_ROOM)
        room, event = result
        if event is not None:
            self._published([event])
        return room

    async def join_room(self, actor: int, room_id: int) -> Room:
        """Join a public room, or a private one the actor is invited to (accepting the
        invitation). Anything else is NOT_FOUND. Joining twice is a no-op (no second event)."""
        check.snowflake(room_id, "room id")
        room = await self.store.get_room(room_id)
        if room is None:
            raise NotFound(_NO_ROOM)
        if await self.store.member_role(room_id, actor) is not None:
            return room
        if not room.public and not await self.store.has_invitation(room_id, actor):
            raise NotFound(_NO_ROOM)
        return await self._add(actor, room_id)

    async def accept_invitation(self, actor: int, room_id: int) -> Room:
        check.snowflake(room_id, "room id")
        if not await self.store.has_invitation(room_id, actor):
            raise NotFound("invitation not found")
        return await self._add(actor, room_id)

    async def decline_invitation(self, actor: int, room_id: int) -> bool:
        check.snowflake(room_id, "room id")
        if not await self.store.delete_invitation(room_id, actor):
            raise NotFound("invitation not found")
        return True

    async def invitations(self, actor: int) -> list[Invitation]:
        return await self.store.invitations_of(actor)

    async def invite(self, actor: int, room_id: int, user_ids: Sequence[int]) -> list[int]:
        """Invite users (owner/admins of a private room; any member of a public one). Returns
        those invited now: members and users already invited are skipped."""
        room, role = await self._member_room(actor, room_id)
        if room.direct:
            raise BadInput("nobody can be invited to a direct room")
        if not room.public and role == "member":
            raise Forbidden("only the owner or an admin can invite to this room")
        if not 0 < len(user_ids) <= MAX_INVITES:
            raise BadInput(f"invite 1 to {MAX_INVITES} users at a time")
        ids = await self._known_users(user_ids, "user id")
        return await self.store.create_invitations(room_id, actor, ids, self._clock_ms())

    async def leave_room(self, actor: int, room_id: int) -> bool:
        """True when left; NOT_FOUND when not a member (or no such room). The owner's leaving
        hands the room to the longest-standing admin, else member. Direct rooms are kept."""
        room, _ = await self._member_room(actor, room_id)
        if room.direct:
            raise BadInput("a direct room can't be left")
        event = await self.store.remove_member(room_id, actor, self._clock_ms())
        if event is None:
            raise NotFound(_NO_ROOM)
        self._published([event])
        return True

    async def remove_member(self, actor: int, room_id: int, user_id: int) -> bool:
        """The owner removes anyone, an admin removes plain members. The MEMBER_LEAVE names the
        remover in ``removed_by``; it ends the removed member's live streams on every path."""
        room, role = await self._member_room(actor, room_id)
        check.snowflake(user_id, "user id")
        if room.direct:
            raise BadInput("nobody can be removed from a direct room")
        if user_id == actor:
            raise BadInput("use leaveRoom to leave a room")
        target = await self.store.member_role(room_id, user_id)
        if target is None:
            raise NotFound("not a member of this room")
        if not (role == "owner" or (role == "admin" and target == "member")):
            raise Forbidden("only the owner, or an admin for plain members, can remove members")
        event = await self.store.remove_member(room_id, user_id, self._clock_ms(), actor)
        if event is None:  # left meanwhile
            raise NotFound("not a member of this room")
        self._published([event])
        return True

    async def set_member_role(self, actor: int, room_id: int, user_id: int, role: str) -> bool:
        """The owner makes members admins (``admin``) or plain members again (``member``)."""
        _, mine = await self._member_room(actor, room_id)
        if role not in ("admin", "member"):
            raise BadInput("role must be admin or member")
        if mine != "owner":
            raise Forbidden("only the owner can change roles")
        if check.snowflake(user_id, "user id") == actor:
            raise BadInput("the owner's role changes only when the owner leaves")
        if not await self.store.set_member_role(room_id, user_id, role):
            raise NotFound("not a member of this room")
        return True

    async def get_room(self, actor: int, room_id: int) -> Room:
        room, _ = await self._member_room(actor, room_id)
        return room

    async def list_rooms(self, actor: int) -> list[Room]:
        return await self.store.rooms_of(actor)

    async def public_rooms(self, after: int | None = None, limit: int = 50) -> list[Room]:
        if after is not None:
            check.snowflake(after, "cursor")
        if not 1 <= limit <= MAX_PUBLIC_PAGE:
            raise BadInput(f"limit must be between 1 and {MAX_PUBLIC_PAGE}")
        return await self.store.public_rooms(after, limit)

    async def room_members(self, actor: int, room_id: int) -> list[int]:
        await self._member_room(actor, room_id)
        return await self.store.members_of(room_id)

    async def member_roles(self, actor: int, room_id: int) -> list[tuple[int, str]]:
        await self._member_room(actor, room_id)
        return await self.store.member_roles(room_id)

    async def member_role(self, actor: int, room_id: int) -> str:
        _, role = await self._member_room(actor, room_id)
        return role

    async def is_member(self, room_id: int, user_id: int) -> bool:
        return await self.store.is_member(room_id, user_id)

    async def shares_room_with(self, viewer: int, user_ids: Sequence[int]) -> set[int]:
        """Those of ``user_ids`` who share a room with ``viewer`` (who may see their presence)."""
        return await self.store.shared_with(viewer, user_ids)

    # --- messages --------------------------------------------------------------------------------
    async def send_message(
        self,
        actor: int,
        room_id: int,
        content: str | None,
        nonce: str,
        attachment_ids: Sequence[int] = (),
        encrypted: dict[str, Any] | None = None,
    ) -> Message:
        """Store a message (idempotent by ``(actor, nonce)``: a retry, even concurrent, returns
        the first message and creates nothing). Membership is checked in the storing
        transaction itself. Exactly one of ``content`` (plain rooms) and ``encrypted`` (the
        payload of docs/e2e.md, encrypted rooms, under the current epoch) is given.
        ``attachment_ids``: uploads of the actor for this room (plain rooms), attached in that
        transaction; then the content may be empty."""
        started = time.perf_counter()
        try:
            with start_span("chat.send_message"):
                outcome = await self._send(
                    actor, room_id, content, nonce, attachment_ids, encrypted
                )
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

    async def _send(
        self,
        actor: int,
        room_id: int,
        content: str | None,
        nonce: str,
        attachment_ids: Sequence[int],
        encrypted: dict[str, Any] | None,
    ) -> SendOutcome:
        """The stored outcome, ``created`` or ``duplicate``; a refusal raises."""
        check.snowflake(room_id, "room id")
        payload = self._message_body(content, encrypted, allow_empty=bool(attachment_ids))
        check.nonce(nonce, self.settings.max_nonce_bytes)
        if payload is not None:
            if attachment_ids:
                raise BadInput("attachments are not supported in end-to-end encrypted rooms yet")
            row = NewMessage(
                self.ids.next_id(),
                room_id,
                actor,
                "",
                nonce,
                self._clock_ms(),
                current_trace_headers(),
                encrypted=payload,
            )
            # One transaction under the room's lock (epoch rules). No mentions: the server
            # can't read the content.
            outcome = await self.store.insert_encrypted_message(row)
            self._published([outcome.event] if outcome.event is not None else [])
        else:
            outcome = await self._store_plain(actor, room_id, content or "", nonce, attachment_ids)
        if outcome.status in ("no_room", "not_member"):
            raise NotFound(_NO_ROOM)
        if outcome.status not in ("created", "duplicate"):
            raise _refused(outcome.status)
        assert outcome.message is not None
        if outcome.message.room_id != room_id:
            # The nonce was spent on a message of another room: no answer from that room, and
            # only a member of this one learns more than NOT_FOUND.
            if not await self.store.is_member(room_id, actor):
                raise NotFound(_NO_ROOM)
            raise BadInput("this nonce was already used for a message in another room")
        if outcome.status == "duplicate":  # the first message, with its files
            return SendOutcome("duplicate", await self._with_attachments(outcome.message))
        return outcome

    async def _store_plain(
        self, actor: int, room_id: int, content: str, nonce: str, attachment_ids: Sequence[int]
    ) -> SendOutcome:
        """A plain room's send: its files verified first, its mentions resolved, then stored."""
        outcome: SendOutcome | None = None
        attachments: tuple[Attachment, ...] = ()
        if attachment_ids:
            if self.files is None:
                raise BadInput("attachments are not enabled on this server")
            # A retry of a send whose files are attached already is a duplicate, as always;
            # checking first keeps it from failing on "already attached".
            first = await self.store.find_message(actor, nonce)
            if first is not None:
                outcome = SendOutcome("duplicate", first)
            else:
                attachments = await self.files.prepare(actor, room_id, attachment_ids)
        if outcome is None:
            mentioned: tuple[int, ...] = ()
            names = mention_names(content)
            if names:
                ids = await self.store.user_ids_by_name(names)
                mentioned = tuple(sorted(set(ids.values()) - {actor}))
            row = NewMessage(
                self.ids.next_id(),
                room_id,
                actor,
                content,
                nonce,
                self._clock_ms(),
                # Taken inside the send span (the caller's span when there is one); {} when off.
                current_trace_headers(),
                mentioned,
                attachments,
            )
            try:
                if self._committer is not None:
                    outcome = await self._committer.submit(row)
                else:
                    (outcome,) = await self._write_batch([row])
            except AttachConflict:
                raise BadInput(
                    "an attachment was taken by another message or expired meanwhile; nothing"
                    " was sent"
                ) from None
        assert outcome is not None
        return outcome

    async def _with_attachments(self, msg: Message) -> Message:
        found = await self.store.attachments_of([msg.id])
        return msgspec.structs.replace(msg, attachments=found.get(msg.id, ()))

    def _message_body(
        self, content: str | None, encrypted: dict[str, Any] | None, *, allow_empty: bool = False
    ) -> dict[str, Any] | None:
        """Check the one body a message has: ``content``, or the ``encrypted`` payload (returned
        in its canonical wire form)."""
        if encrypted is None:
            check.content(
                content if content is not None else "",
                self.settings.max_content_chars,
                allow_empty=allow_empty,
            )
            return None
        if content:
            raise BadInput("give content or encrypted, not both")
        try:
            envelope = scheme.envelope_from_wire(encrypted, self.settings.e2e_max_ciphertext_bytes)
        except scheme.SchemeError as exc:
            raise BadInput(f"encrypted: {exc}") from None
        return envelope.wire()

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
        if msg is None or msg.deleted or not await self.store.is_member(msg.room_id, actor):
            raise NotFound(_NO_MESSAGE)
        return msg

    async def edit_message(
        self,
        actor: int,
        message_id: int,
        content: str | None,
        encrypted: dict[str, Any] | None = None,
    ) -> Message:
        """Author only; a deleted message is NOT_FOUND. Emits MESSAGE_UPDATE. In an encrypted
        room the new body is an ``encrypted`` payload under the current epoch."""
        payload = self._message_body(content, encrypted)
        own = await self._own_message(actor, message_id)
        room = await self.store.get_room(own.room_id)
        if room is not None and room.encrypted != (payload is not None):
            raise _refused("encrypted_room" if room.encrypted else "not_encrypted")
        if payload is not None:
            edited = await self.store.edit_encrypted_message(message_id, payload, self._clock_ms())
            if edited.status not in ("ok", "no_room"):
                raise _refused(edited.status)
            result = None if edited.message is None else (edited.message, edited.event)
        else:
            result = await self.store.edit_message(message_id, content or "", self._clock_ms())
        if result is None:  # deleted in between
            raise NotFound(_NO_MESSAGE)
        msg, event = result
        assert event is not None
        self._published([event])
        (msg,) = await self._decorate([msg], actor)
        return msg

    async def delete_message(self, actor: int, message_id: int) -> bool:
        """Author only. Leaves a tombstone (content emptied, deleted=true, reactions dropped)
        and emits MESSAGE_DELETE. Already deleted: NOT_FOUND."""
        await self._own_message(actor, message_id)
        event = await self.store.delete_message(message_id, self._clock_ms())
        if event is None:
            raise NotFound(_NO_MESSAGE)
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
        ``me`` for the actor; mentions and attachments are filled in. Six queries per page
        whatever its size.
        """
        check.history_limit(limit)
        if before is not None and after is not None:
            raise BadInput("give before or after, not both")
        for cursor in (before, after):
            if cursor is not None:
                check.snowflake(cursor, "cursor")
        room, _ = await self._member_room(actor, room_id)
        if self.history_cache is not None and before is None and after is None:
            items = await self.history_cache.newest(room, limit, self._newest)
        else:
            items = await self.store.list_messages(room_id, before, after, limit + 1)
        has_more = len(items) > limit
        return await self._decorate(items[:limit], actor), has_more

    async def _decorate(self, items: list[Message], actor: int) -> list[Message]:
        """Fill reactions (aggregated, ``me`` for the actor), mentions and attachments: three
        queries."""
        live = [m.id for m in items if not m.deleted]
        counts = await self.store.reaction_counts(live, actor)
        mentions = await self.store.mentions_of(live)
        files = await self.store.attachments_of(live)
        if not counts and not mentions and not files:
            return items
        return [
            msgspec.structs.replace(
                m,
                reactions=counts.get(m.id, m.reactions),
                mentions=mentions.get(m.id, m.mentions),
                attachments=files.get(m.id, m.attachments),
            )
            for m in items
        ]

    # --- read state ------------------------------------------------------------------------------
    async def mark_read(self, actor: int, room_id: int, seq: int) -> ReadState:
        """The actor has read the room up to ``seq`` (clamped to the room's last seq; the
        stored position never moves back). Members only."""
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise BadInput("seq must be >= 0")
        room, _ = await self._member_room(actor, room_id)
        await self.store.mark_read(actor, room_id, min(seq, room.last_seq))
        return await self._changed_read_state(actor, room_id)

    async def set_room_muted(self, actor: int, room_id: int, muted: bool) -> ReadState:
        """Mute or unmute the room for the actor (clients then skip its notifications)."""
        await self._member_room(actor, room_id)
        await self.store.set_muted(actor, room_id, bool(muted))
        return await self._changed_read_state(actor, room_id)

    async def read_states(self, actor: int, room_ids: Sequence[int]) -> dict[int, ReadState]:
        """The actor's read state of each listed room it is a member of (others left out)."""
        return await self.store.read_states(actor, room_ids, COUNT_CAP)

    async def _changed_read_state(self, actor: int, room_id: int) -> ReadState:
        state = (await self.read_states(actor, [room_id])).get(room_id)
        if state is None:  # left the room meanwhile
            raise NotFound(_NO_ROOM)
        if self.on_read is not None:
            try:
                await self.on_read(actor, state)
            except Exception:  # stored: telling the other sessions is best effort
                log.exception("on_read sink failed; the read state is stored")
        return state

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
