"""The Store port: durable users, refresh tokens, rooms, members, messages and the outbox.

Adapters: ``shardchat.adapters.sqlite_store`` (embedded default, aiosqlite) and
``shardchat.adapters.pg_store`` (asyncpg). ``open_store(settings)`` picks one. Business rules
(who may do what, input limits) live in ``chat_core`` / ``user_core``; the Store only makes
each change atomic and durable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import msgspec

from chat_core.models import Message, ReactionCount, Room, RoomEvent
from shardchat.config import Settings
from user_core.models import User

Dialect = Literal["sqlite", "postgres"]


class UserRecord(msgspec.Struct, frozen=True):
    user: User
    password_hash: str


class NewMessage(msgspec.Struct, frozen=True):
    """A message to store; ``id`` and ``created_at_ms`` are chosen by the caller, ``seq`` by
    the Store. ``trace`` (W3C trace context of the send, ``{}`` when tracing is off) is stored
    with its MESSAGE_CREATE event."""

    id: int
    room_id: int
    author_id: int
    content: str
    nonce: str
    created_at_ms: int
    trace: dict[str, str] = {}


SendStatus = Literal["created", "duplicate", "not_member", "no_room"]


class SendOutcome(msgspec.Struct, frozen=True):
    """Result of one row of ``insert_messages``.

    ``created``: stored now, ``message`` and its MESSAGE_CREATE ``event`` are set.
    ``duplicate``: ``(author_id, nonce)`` already existed; ``message`` is the first one stored.
    ``not_member`` / ``no_room``: nothing stored.
    """

    status: SendStatus
    message: Message | None = None
    event: RoomEvent | None = None


RefreshStatus = Literal["ok", "unknown", "expired", "reused", "revoked"]


class RefreshOutcome(msgspec.Struct, frozen=True):
    """``ok``: the old token is now used and the new one stored in the same family.
    ``reused``: the old token had been used already: the whole family is now revoked.
    ``revoked``: the family was revoked before. ``unknown`` / ``expired``: nothing changed."""

    status: RefreshStatus
    user_id: int | None = None


class Store(Protocol):
    """Durable state. Every method is atomic: it commits entirely or not at all.

    Guarantees:
    - Room seq: each durable room event gets ``rooms.last_seq + 1`` in the SAME transaction that
      stores the change and inserts the event row (PRIMARY KEY (room_id, seq)). Concurrent
      writers to one room, from any number of processes, get contiguous seqs 1, 2, 3 ... with
      no gap and no duplicate; the seq order of a room is its commit order.
    - A method returning events returned them committed: the caller may publish them at once.
      ``RoomEvent.data`` is exactly the DISPATCH ``d`` (built by ``chat_core.events``).
    - Idempotent send: ``(author_id, nonce)`` is unique; a second row with the same key, even
      concurrent or in the same batch, stores nothing and yields the first message.
    - Outbox: every event starts unpublished; ``pending_events`` lists unpublished ones created
      before a time, ordered by (room_id, seq); ``mark_published`` is idempotent.
    - Trace context: a MESSAGE_CREATE event carries its ``NewMessage.trace``, stored with the row
      (``room_events.trace``, NULL when empty) and returned by ``events_after`` and
      ``pending_events`` too, so an event the relay publishes keeps its trace.
    - ``acquire_lease(name, owner, ttl_ms)`` is True when the lease was free, expired or already
      held by ``owner``, and then (re)sets its expiry to now + ttl (the database's clock where
      there is one); at most one owner holds a live lease.
    - Usernames are unique case-insensitively. Refresh tokens are stored only as hashes.
    """

    dialect: Dialect

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    # --- migrations (see shardchat.migrate) ------------------------------------------------------
    async def apply_migrations(self, migrations: Sequence[tuple[str, str]]) -> list[str]:
        """Apply ``(version, sql)`` pairs not yet in ``schema_migrations``, in order, each in its
        own transaction; safe when several processes migrate at once. Returns those applied."""
        ...

    # --- users and refresh tokens ----------------------------------------------------------------
    async def create_user(self, user: User, password_hash: str) -> bool:
        """False (nothing stored) when the username is taken."""
        ...

    async def get_user_by_name(self, username: str) -> UserRecord | None: ...

    async def get_users(self, user_ids: Sequence[int]) -> dict[int, User]: ...

    async def create_refresh_token(
        self, token_hash: bytes, user_id: int, family_id: str, now_ms: int, expires_at_ms: int
    ) -> None:
        """Store the first token of a new family."""
        ...

    async def rotate_refresh_token(
        self, old_hash: bytes, new_hash: bytes, now_ms: int, expires_at_ms: int
    ) -> RefreshOutcome: ...

    async def revoke_refresh_family(self, token_hash: bytes, now_ms: int) -> bool:
        """Revoke the family of that token; True if the token was known and its family live."""
        ...

    # --- rooms and members -----------------------------------------------------------------------
    async def create_room(
        self, room_id: int, name: str, created_at_ms: int, member_ids: Sequence[int]
    ) -> tuple[Room, list[RoomEvent]]:
        """Create the room with the members (in order, no duplicates), one MEMBER_JOIN each."""
        ...

    async def add_member(
        self, room_id: int, user_id: int, now_ms: int
    ) -> tuple[Room, RoomEvent | None] | None:
        """None if no such room; event None if already a member."""
        ...

    async def remove_member(self, room_id: int, user_id: int, now_ms: int) -> RoomEvent | None:
        """The MEMBER_LEAVE event, or None (nothing changed) if not a member."""
        ...

    async def get_room(self, room_id: int) -> Room | None: ...

    async def rooms_of(self, user_id: int) -> list[Room]: ...

    async def members_of(self, room_id: int) -> list[int]: ...

    async def is_member(self, room_id: int, user_id: int) -> bool: ...

    # --- messages --------------------------------------------------------------------------------
    async def insert_messages(self, rows: Sequence[NewMessage]) -> list[SendOutcome]:
        """Store a batch in ONE transaction; one outcome per row, same order. Only rows whose
        author is a member of the room (at commit) are stored."""
        ...

    async def get_message(self, message_id: int) -> Message | None: ...

    async def edit_message(
        self, message_id: int, content: str, edited_at_ms: int
    ) -> tuple[Message, RoomEvent] | None:
        """None if the message is missing or deleted."""
        ...

    async def delete_message(self, message_id: int, now_ms: int) -> RoomEvent | None:
        """Tombstone it (content emptied, deleted); None if missing or already deleted."""
        ...

    async def add_reaction(
        self, message_id: int, user_id: int, emoji: str, now_ms: int
    ) -> RoomEvent | None:
        """None if that reaction exists already or the message is missing or deleted."""
        ...

    async def remove_reaction(
        self, message_id: int, user_id: int, emoji: str, now_ms: int
    ) -> RoomEvent | None:
        """None if there was no such reaction."""
        ...

    async def list_messages(
        self, room_id: int, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        """Up to ``limit`` messages (tombstones included) by id: ``after`` set -> ids > after,
        oldest first; else ids < before (if set), newest first. Reactions are not filled."""
        ...

    async def reaction_counts(
        self, message_ids: Sequence[int], viewer: int
    ) -> dict[int, tuple[ReactionCount, ...]]:
        """Per message: one ReactionCount per emoji (ordered by first use), ``me`` for viewer."""
        ...

    # --- room events and the outbox --------------------------------------------------------------
    async def events_after(self, room_id: int, after_seq: int, limit: int) -> list[RoomEvent]: ...

    async def pending_events(self, created_before_ms: int, limit: int) -> list[RoomEvent]: ...

    async def mark_published(self, keys: Sequence[tuple[int, int]]) -> None: ...

    async def acquire_lease(self, name: str, owner: str, ttl_ms: int) -> bool: ...


# --- the room_events.trace column, shared by both adapters so they store the same text ----------
_TRACE_DECODER = msgspec.json.Decoder(dict[str, str])


def trace_to_column(trace: dict[str, str] | None) -> str | None:
    """JSON text of the trace context, or NULL (None) when there is none (tracing off)."""
    return msgspec.json.encode(trace).decode() if trace else None


def trace_from_column(text: str | None) -> dict[str, str]:
    """The stored trace context; ``{}`` for NULL or an unreadable value (a trace is a hint for
    observability, never a reason to stop the relay publishing the event)."""
    if not text:
        return {}
    try:
        return _TRACE_DECODER.decode(text)
    except msgspec.DecodeError:
        return {}


def open_store(settings: Settings) -> Store:
    """The adapter Settings.store names (not started: ``await store.start()``)."""
    if settings.store == "postgres":
        from shardchat.adapters.pg_store import PgStore

        return PgStore(settings.postgres_dsn, pool_size=settings.postgres_pool_size)
    from shardchat.adapters.sqlite_store import SqliteStore

    return SqliteStore(settings.sqlite_path)
