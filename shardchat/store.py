"""The Store port: durable users, refresh tokens, rooms, members, messages and the outbox.

Adapters: ``shardchat.adapters.sqlite_store`` (embedded default, aiosqlite) and
``shardchat.adapters.pg_store`` (asyncpg). ``open_store(settings)`` picks one. Business rules
(who may do what, input limits) live in ``chat_core`` / ``user_core``; the Store only makes
each change atomic and durable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

import msgspec

from chat_core.models import (
    Attachment,
    Invitation,
    Message,
    ReactionCount,
    ReadState,
    Room,
    RoomEvent,
    SealedKey,
    ThumbState,
    Upload,
)
from shardchat.config import Settings
from shardchat.keydirectory import KeyDirectory
from user_core.models import SessionInfo, User

Dialect = Literal["sqlite", "postgres"]


class UserRecord(msgspec.Struct, frozen=True):
    user: User
    password_hash: str
    totp_secret: str | None = None  # set from enrolment on; used once ``totp_enabled``
    totp_enabled: bool = False


class NewMessage(msgspec.Struct, frozen=True):
    """A message to store; ``id`` and ``created_at_ms`` are chosen by the caller, ``seq`` by
    the Store. ``trace`` (W3C trace context of the send, ``{}`` when tracing is off) is stored
    with its MESSAGE_CREATE event. ``mentions``: ids of the users the content @mentions; the
    Store keeps those who are members of the room at commit. ``attachments``: verified uploads
    (``ready``) to attach in the same transaction, in this order."""

    id: int
    room_id: int
    author_id: int
    content: str
    nonce: str
    created_at_ms: int
    trace: dict[str, str] = {}
    mentions: tuple[int, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    #: the wire payload of an end-to-end encrypted message (``content`` is then ""): stored by
    #: ``insert_encrypted_message`` only, under the room's current epoch
    encrypted: dict[str, Any] | None = None


class AttachConflict(Exception):
    """``insert_messages`` could not attach a new message's files: one is not (or no longer) a
    ready, unattached, unexpired upload of that author in that room (another send took it, or
    the sweeper is removing it). The whole batch was rolled back: nothing was stored."""


#: Why a message may not be stored in a room now (docs/e2e.md section 6.1).
EpochRefusal = Literal[
    "encrypted_room",  # plaintext sent to an encrypted room
    "not_encrypted",  # an encrypted payload sent to a plain room
    "stale_epoch",  # not the room's current key epoch
    "rotation_due",  # a member joined or left: no message until the key rotates
]
SendStatus = Literal["created", "duplicate", "not_member", "no_room"] | EpochRefusal


class SendOutcome(msgspec.Struct, frozen=True):
    """Result of one row of ``insert_messages``.

    ``created``: stored now, ``message`` and its MESSAGE_CREATE ``event`` are set.
    ``duplicate``: ``(author_id, nonce)`` already existed; ``message`` is the first one stored.
    ``not_member`` / ``no_room``: nothing stored.
    """

    status: SendStatus
    message: Message | None = None
    event: RoomEvent | None = None


#: The outcome of ``rotate_room_key``.
EpochStatus = Literal[
    "ok", "no_room", "not_member", "not_encrypted", "stale_epoch", "members_changed"
]


class EncryptedEdit(msgspec.Struct, frozen=True):
    """Result of ``edit_encrypted_message``: ``ok`` with the message and its MESSAGE_UPDATE;
    ``no_room`` when the message is missing or deleted; else the epoch refusal."""

    status: Literal["ok", "no_room"] | EpochRefusal
    message: Message | None = None
    event: RoomEvent | None = None


RefreshStatus = Literal["ok", "unknown", "expired", "reused", "revoked"]


class RefreshOutcome(msgspec.Struct, frozen=True):
    """``ok``: the old token is now used and the new one stored in the same family.
    ``reused``: the old token had been used already: the whole family is now revoked.
    ``revoked``: the family was revoked before. ``unknown`` / ``expired``: nothing changed."""

    status: RefreshStatus
    user_id: int | None = None
    family_id: str | None = None  # set for ok and reused


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
    - Roles: ``create_room`` makes its first member the owner; ``remove_member`` of the owner
      hands ownership to the longest-standing admin, else member, in the same transaction, so
      a room with members always has exactly one owner. ``add_member`` deletes the user's
      invitation to that room in its transaction.
    - Direct rooms: ``open_direct_room`` stores at most one room per pair, even when both open
      it at once from different processes (the pair is a primary key).
    - Encrypted rooms (docs/e2e.md section 6.1): ``create_room(encrypted=True)`` starts at key
      epoch 0 with a rotation due; ``add_member`` and ``remove_member`` set the rotation due in
      the transaction of their event (and count it in ``Room.key_changes``);
      ``mark_key_changes(user)`` does both for every encrypted room of a user whose device list
      changed. ``insert_messages`` stores no row of an encrypted room
      (``encrypted_room``); ``insert_encrypted_message`` and ``edit_encrypted_message`` store
      only in an encrypted room, under its current epoch, with no rotation due, checked under
      the room's lock so no message of an old epoch can follow a MEMBER_LEAVE.
      ``rotate_room_key`` is a compare-and-set: the epoch moves from ``epoch - 1`` to
      ``epoch`` only if the members are exactly ``member_ids`` and ``key_changes`` is still
      ``changes``; the keys are stored and the due flag cleared in the same transaction.
      Sealed keys are unique per (room, epoch, user, device): ``add_room_keys`` skips ones
      held already. ``delete_message`` erases the payload.
    - TOTP replay: ``use_totp_step`` is a compare-and-set: of concurrent calls with one step, one
      wins; a step not above the last accepted one is refused. ``use_recovery_code`` likewise
      spends a code at most once.
    - Mentions: a created message keeps, in ``Message.mentions`` and in its MESSAGE_CREATE
      ``mentions``, the ``NewMessage.mentions`` who are members of the room at commit (ascending
      ids), and stores one mention row per such member in the same transaction.
    - Read state: ``mark_read`` only ever moves ``last_read_seq`` forward (concurrent marks keep
      the highest). ``read_states`` answers for rooms the user is a member of (others are
      left out): no stored row means ``last_read_seq`` 0 and not muted; ``unread_count`` counts
      MESSAGE_CREATE events after ``last_read_seq`` by other authors, created at or after the
      user joined; ``mention_count`` counts mention rows of the user after ``last_read_seq``;
      both stop counting at ``cap``.
    - Uploads: ``create_upload`` checks the owner's quota and stores in one step, so concurrent
      uploads of one user can't pass it together. A message's attachments are attached in the
      transaction that stores it (all or none, ``AttachConflict``); an upload is attached to at
      most one message. ``delete_message`` marks its uploads deleted in the same transaction.
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

    async def get_user_record(self, user_id: int) -> UserRecord | None: ...

    async def set_password_hash(self, user_id: int, password_hash: str) -> None: ...

    async def set_totp(self, user_id: int, secret: str | None, enabled: bool) -> None:
        """Enrol (secret, not enabled), enable, or clear (None: also drops recovery codes)."""
        ...

    async def use_totp_step(self, user_id: int, step: int) -> bool:
        """Record ``step`` as the last accepted TOTP step; False if it is not above the last."""
        ...

    async def set_recovery_codes(self, user_id: int, code_hashes: Sequence[bytes]) -> None:
        """Replace the user's recovery codes."""
        ...

    async def use_recovery_code(self, user_id: int, code_hash: bytes, now_ms: int) -> bool:
        """Spend an unused code; False if unknown or spent."""
        ...

    async def recovery_codes_left(self, user_id: int) -> int: ...

    async def user_ids_by_name(self, names: Sequence[str]) -> dict[str, int]:
        """Lower-cased username -> id, for those of ``names`` that exist (any case)."""
        ...

    async def search_users(self, prefix: str, limit: int) -> list[User]:
        """Up to ``limit`` users whose username starts with ``prefix`` (case-insensitive),
        ordered by lower-cased username. ``prefix`` holds username characters only."""
        ...

    async def create_refresh_token(
        self,
        token_hash: bytes,
        user_id: int,
        family_id: str,
        now_ms: int,
        expires_at_ms: int,
        client: str | None = None,
    ) -> None:
        """Store the first token of a new family (``client``: what the session list shows)."""
        ...

    async def rotate_refresh_token(
        self, old_hash: bytes, new_hash: bytes, now_ms: int, expires_at_ms: int
    ) -> RefreshOutcome: ...

    async def revoke_refresh_family(self, token_hash: bytes, now_ms: int) -> bool:
        """Revoke the family of that token; True if the token was known and its family live."""
        ...

    async def refresh_family(self, token_hash: bytes) -> tuple[int, str] | None:
        """``(user_id, family_id)`` of a stored refresh token, spent or not."""
        ...

    async def list_sessions(self, user_id: int, now_ms: int) -> list[SessionInfo]:
        """Families not revoked that still hold an unused, unexpired token; newest first."""
        ...

    async def revoke_session(self, user_id: int, family_id: str, now_ms: int) -> bool:
        """Revoke one of the user's families; False if not theirs or revoked already."""
        ...

    async def revoke_all_sessions(self, user_id: int, now_ms: int) -> list[str]:
        """Revoke every live family of the user; returns their ids."""
        ...

    # --- rooms and members -----------------------------------------------------------------------
    async def create_room(
        self,
        room_id: int,
        name: str,
        created_at_ms: int,
        member_ids: Sequence[int],
        *,
        public: bool = False,
        encrypted: bool = False,
    ) -> tuple[Room, list[RoomEvent]]:
        """Create the room with the members (in order, no duplicates), one MEMBER_JOIN each;
        the first member owns it."""
        ...

    async def open_direct_room(
        self, room_id: int, user_a: int, user_b: int, name: str, now_ms: int
    ) -> tuple[Room, list[RoomEvent]]:
        """The pair's direct room: created now with ``room_id`` (both members, two MEMBER_JOIN)
        or the existing one (no events)."""
        ...

    async def add_member(
        self, room_id: int, user_id: int, now_ms: int
    ) -> tuple[Room, RoomEvent | None] | None:
        """None if no such room; event None if already a member."""
        ...

    async def remove_member(
        self, room_id: int, user_id: int, now_ms: int, removed_by: int | None = None
    ) -> RoomEvent | None:
        """The MEMBER_LEAVE event (with ``removed_by`` in its data when given), or None
        (nothing changed) if not a member."""
        ...

    async def member_role(self, room_id: int, user_id: int) -> str | None:
        """The member's role (``chat_core.models.ROLES``); None if not a member."""
        ...

    async def member_roles(self, room_id: int) -> list[tuple[int, str]]:
        """``(user_id, role)`` of every member, in join order."""
        ...

    async def set_member_role(self, room_id: int, user_id: int, role: str) -> bool:
        """False if not a member."""
        ...

    async def public_rooms(self, after: int | None, limit: int) -> list[Room]:
        """Public rooms by id, those with id > ``after`` when given."""
        ...

    async def shared_with(self, viewer: int, user_ids: Sequence[int]) -> set[int]:
        """Those of ``user_ids`` who share at least one room with ``viewer``."""
        ...

    # --- invitations -----------------------------------------------------------------------------
    async def create_invitations(
        self, room_id: int, inviter_id: int, user_ids: Sequence[int], now_ms: int
    ) -> list[int]:
        """Invite the users not yet members nor invited; returns those invited now."""
        ...

    async def invitations_of(self, user_id: int) -> list[Invitation]:
        """The user's pending invitations, oldest first."""
        ...

    async def has_invitation(self, room_id: int, user_id: int) -> bool: ...

    async def delete_invitation(self, room_id: int, user_id: int) -> bool: ...

    async def get_room(self, room_id: int) -> Room | None: ...

    async def rooms_of(self, user_id: int) -> list[Room]: ...

    async def members_of(self, room_id: int) -> list[int]: ...

    async def is_member(self, room_id: int, user_id: int) -> bool: ...

    # --- read state ------------------------------------------------------------------------------
    async def mark_read(self, user_id: int, room_id: int, seq: int) -> int:
        """Move the user's ``last_read_seq`` of the room up to ``seq`` (never down); the
        stored value after."""
        ...

    async def set_muted(self, user_id: int, room_id: int, muted: bool) -> None: ...

    async def read_states(
        self, user_id: int, room_ids: Sequence[int], cap: int
    ) -> dict[int, ReadState]:
        """The user's read state of each listed room it is a member of."""
        ...

    async def mentions_of(self, message_ids: Sequence[int]) -> dict[int, tuple[int, ...]]:
        """Per message that mentions anyone: the members it mentions (ascending ids)."""
        ...

    # --- messages --------------------------------------------------------------------------------
    async def insert_messages(self, rows: Sequence[NewMessage]) -> list[SendOutcome]:
        """Store a batch in ONE transaction; one outcome per row, same order. Only rows whose
        author is a member of the room (at commit) are stored."""
        ...

    async def insert_encrypted_message(self, row: NewMessage) -> SendOutcome:
        """Store one message with ``row.encrypted`` (its ``epoch`` checked as above) in its own
        transaction; idempotent by ``(author_id, nonce)`` like ``insert_messages``."""
        ...

    async def edit_encrypted_message(
        self, message_id: int, encrypted: dict[str, Any], edited_at_ms: int
    ) -> EncryptedEdit: ...

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

    async def find_message(self, author_id: int, nonce: str) -> Message | None:
        """The message stored for ``(author_id, nonce)``, if any (reactions not filled)."""
        ...

    async def attachments_of(self, message_ids: Sequence[int]) -> dict[int, tuple[Attachment, ...]]:
        """Per message (with any): its live attachments, in the order they were attached."""
        ...

    # --- uploads ---------------------------------------------------------------------------------
    async def create_upload(self, upload: Upload, quota_bytes: int) -> tuple[bool, int]:
        """Store the pending upload unless the owner's live uploads (pending or ready, not
        deleted) plus ``upload.size`` would pass ``quota_bytes``. Returns (stored, the bytes the
        owner had in use before)."""
        ...

    async def get_uploads(self, upload_ids: Sequence[int]) -> dict[int, Upload]: ...

    async def finish_upload(
        self,
        upload_id: int,
        content_type: str,
        size: int,
        width: int | None,
        height: int | None,
        thumb: ThumbState,
    ) -> bool:
        """pending -> ready with the server's values; False (nothing changed) unless pending."""
        ...

    async def reject_upload(self, upload_id: int, reason: str, now_ms: int) -> None:
        """pending -> rejected, expiring now (the sweeper removes it); no-op unless pending."""
        ...

    async def claim_thumbnails(self, now_ms: int, lease_ms: int, limit: int) -> list[Upload]:
        """Ready, live uploads whose thumbnail is pending and not claimed by a live lease: now
        claimed until ``now_ms + lease_ms`` (one claimant at a time; a crashed one's claim
        lapses)."""
        ...

    async def finish_thumbnail(self, upload_id: int, state: ThumbState) -> None: ...

    async def uploads_to_sweep(self, now_ms: int, limit: int) -> list[Upload]:
        """Uploads with work for the sweeper: never attached and past ``expires_at_ms``; of a
        deleted message; or attached with an upload URL now expired and the staging object not
        yet swept (a PUT repeated after the send would have left one)."""
        ...

    async def forget_uploads(self, upload_ids: Sequence[int]) -> None:
        """Delete the rows of those uploads that are unattached or deleted (never a live
        attachment)."""
        ...

    async def mark_staging_swept(self, upload_ids: Sequence[int]) -> None: ...
    # --- sealed room keys (docs/e2e.md section 5) -------------------------------------------------
    async def rotate_room_key(
        self,
        room_id: int,
        actor: int,
        epoch: int,
        member_ids: Sequence[int],
        changes: int,
        keys: Sequence[SealedKey],
        now_ms: int,
    ) -> EpochStatus:
        """``ok`` when the room moved to ``epoch`` with ``keys``; ``stale_epoch`` when its epoch
        is not ``epoch - 1`` (someone rotated first); ``members_changed`` when its members are
        not ``member_ids`` or its ``key_changes`` is not ``changes`` (members or their devices
        changed since the caller looked); ``not_member`` when ``actor`` is not one."""
        ...

    async def mark_key_changes(self, user_id: int) -> int:
        """A user's device list changed: every encrypted room they are in gets a rotation due
        (and ``key_changes`` + 1). Returns how many rooms."""
        ...

    async def add_room_keys(self, keys: Sequence[SealedKey], now_ms: int) -> int:
        """Store sealed keys, skipping any (room, epoch, user, device) held already; how many
        were new."""
        ...

    async def room_keys(
        self, room_id: int, user_id: int, device_id: bytes, after_epoch: int, limit: int
    ) -> list[SealedKey]:
        """The device's sealed keys of the room with epoch > ``after_epoch``, by epoch."""
        ...

    async def room_key_holders(self, room_id: int, epoch: int) -> set[tuple[int, bytes]]:
        """``(user_id, device_id)`` of every device holding a key of that epoch."""
        ...

    def key_directory(self) -> KeyDirectory:
        """The KeyDirectory adapter on this Store's database (shares its connection or pool)."""
        ...

    # --- room events and the outbox --------------------------------------------------------------
    async def events_after(self, room_id: int, after_seq: int, limit: int) -> list[RoomEvent]: ...

    async def pending_events(self, created_before_ms: int, limit: int) -> list[RoomEvent]: ...

    async def mark_published(self, keys: Sequence[tuple[int, int]]) -> None: ...

    async def acquire_lease(self, name: str, owner: str, ttl_ms: int) -> bool: ...


# --- the uploads columns: Upload's fields, in order (both adapters read and write rows so) --------
UPLOAD_COLUMNS = ", ".join(f.name for f in msgspec.structs.fields(Upload))


def upload_values(upload: Upload) -> tuple[Any, ...]:
    """An uploads row in ``UPLOAD_COLUMNS`` order."""
    return msgspec.structs.astuple(upload)


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


# --- encrypted rooms: the rules both adapters apply inside their transactions --------------------


def epoch_refusal(
    encrypted: bool, key_epoch: int, rotation_due: bool, payload: dict[str, Any] | None
) -> EpochRefusal | None:
    """Why a message (``payload``: its encrypted object, None for plaintext) may not be stored
    in a room in this state (docs/e2e.md section 6.1), or None when it may."""
    if payload is None:
        return "encrypted_room" if encrypted else None
    if not encrypted:
        return "not_encrypted"
    if rotation_due:
        return "rotation_due"
    return None if payload.get("epoch") == key_epoch else "stale_epoch"


def rotation_status(
    room: tuple[bool, int, int] | None,
    actor: int,
    members: set[int],
    epoch: int,
    member_ids: Sequence[int],
    changes: int,
) -> EpochStatus:
    """The outcome of ``rotate_room_key`` for a room (``(encrypted, key_epoch, key_changes)``,
    None when missing) whose members are ``members``, read under the room's write lock."""
    if room is None:
        return "no_room"
    if actor not in members:
        return "not_member"
    encrypted, key_epoch, key_changes = room
    if not encrypted:
        return "not_encrypted"
    if key_epoch != epoch - 1:
        return "stale_epoch"
    ok = set(member_ids) == members and key_changes == changes
    return "ok" if ok else "members_changed"


_E2E_DECODER = msgspec.json.Decoder(dict[str, Any])


def e2e_to_column(payload: dict[str, Any] | None) -> str | None:
    return None if payload is None else msgspec.json.encode(payload).decode()


def e2e_from_column(text: str | None) -> dict[str, Any] | None:
    return None if text is None else _E2E_DECODER.decode(text)


def open_store(settings: Settings) -> Store:
    """The adapter Settings.store names (not started: ``await store.start()``)."""
    if settings.store == "postgres":
        from shardchat.adapters.pg_store import PgStore

        return PgStore(settings.postgres_dsn, pool_size=settings.postgres_pool_size)
    from shardchat.adapters.sqlite_store import SqliteStore

    return SqliteStore(settings.sqlite_path)
