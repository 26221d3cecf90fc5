"""Store on a SQLite file via aiosqlite: the embedded default (one process, or a few).

One connection does everything, behind an asyncio lock: SQLite has one writer anyway, and a
single connection makes every transaction see the previous one's commit. Writes use
``BEGIN IMMEDIATE`` so other processes sharing the file queue on the write lock (busy_timeout)
instead of failing at commit; that also serializes room seq assignment.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from chat_core import events as ev
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
from shardchat.adapters.sqlite_keys import SqliteKeyDirectory
from shardchat.store import (
    UPLOAD_COLUMNS,
    AttachConflict,
    Dialect,
    EncryptedEdit,
    EpochStatus,
    NewMessage,
    RefreshOutcome,
    SendOutcome,
    UserRecord,
    e2e_from_column,
    e2e_to_column,
    epoch_refusal,
    rotation_status,
    trace_from_column,
    trace_to_column,
    upload_values,
)
from user_core.models import SessionInfo, User

_MSG_COLS = "id, room_id, seq, author_id, content, nonce, created_at_ms, edited_at_ms, deleted, e2e"
_ROOM_COLS = (
    "id, name, last_seq, created_at_ms, is_public, is_direct, encrypted, key_epoch,"
    " key_rotation_due, key_changes"
)
_KEY_COLS = (
    "room_id, epoch, user_id, device_id, key_version, sender_id, sender_device, sealed, signature"
)
_USER_RECORD_COLS = "id, username, created_at_ms, password_hash, totp_secret, totp_enabled"
_EVENT_COLS = "room_id, seq, type, data, created_at_ms, trace"
_ATTACHMENT_COLS = "id, filename, content_type, size, width, height"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _message(row: Iterable[Any]) -> Message:
    mid, room_id, seq, author, content, nonce, created, edited, deleted, e2e = row
    return Message(
        mid,
        room_id,
        seq,
        author,
        content,
        nonce,
        created,
        edited,
        bool(deleted),
        encrypted=e2e_from_column(e2e),
    )


def _upload(row: Sequence[Any]) -> Upload:
    values = list(row)
    values[16] = bool(values[16])  # staging_swept: 0/1 in SQLite
    return Upload(*values)


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def _room(row: Iterable[Any]) -> Room:
    rid, name, last_seq, created, public, direct, encrypted, epoch, due, changes = row
    return Room(
        rid,
        name,
        last_seq,
        created,
        bool(public),
        bool(direct),
        bool(encrypted),
        epoch,
        bool(due),
        changes,
    )


def _sealed_key(row: Sequence[Any]) -> SealedKey:
    room_id, epoch, user_id, device, version, sender, sender_device, sealed, sig = row
    return SealedKey(
        room_id, epoch, user_id, bytes(device), version, sender, bytes(sender_device),
        bytes(sealed), bytes(sig),
    )  # fmt: skip


def _user_record(row: Sequence[Any]) -> UserRecord:
    return UserRecord(User(row[0], row[1], row[2]), row[3], row[4], bool(row[5]))


class SqliteStore:
    dialect: Dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    # --- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (the sqlite3 module's implicit
        # transactions would start them lazily, i.e. DEFERRED, and break seq serialization).
        db = await aiosqlite.connect(self.path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")  # acknowledged means on disk
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA busy_timeout=10000")
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("SqliteStore not started")
        return self._db

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    transaction = _tx  # for the KeyDirectory adapter on this connection

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            yield self.db

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        async with self._read() as db, db.execute(sql, params) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        async with self._read() as db, db.execute(sql, params) as cur:
            return list(await cur.fetchall())

    fetch_one = _one
    fetch_all = _all

    def key_directory(self) -> SqliteKeyDirectory:
        return SqliteKeyDirectory(self)

    # --- migrations ------------------------------------------------------------------------------
    async def apply_migrations(self, migrations: Sequence[tuple[str, str]]) -> list[str]:
        applied: list[str] = []
        async with self._lock:
            db = self.db
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version TEXT PRIMARY KEY, applied_at_ms INTEGER NOT NULL)"
            )
            for version, sql in migrations:
                # executescript() would COMMIT first: run the script's statements one by one
                # inside our own transaction instead, so a failing migration leaves no trace.
                await db.execute("BEGIN IMMEDIATE")
                try:
                    async with db.execute(
                        "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
                    ) as cur:
                        done = await cur.fetchone()
                    if done is None:
                        for statement in _split_sql(sql):
                            await db.execute(statement)
                        await db.execute(
                            "INSERT INTO schema_migrations VALUES (?, ?)", (version, _now_ms())
                        )
                        applied.append(version)
                except BaseException:
                    await db.execute("ROLLBACK")
                    raise
                await db.execute("COMMIT")
        return applied

    # --- users and refresh tokens ----------------------------------------------------------------
    async def create_user(self, user: User, password_hash: str) -> bool:
        try:
            async with self._tx() as db:
                await db.execute(
                    "INSERT INTO users (id, username, password_hash, created_at_ms)"
                    " VALUES (?, ?, ?, ?)",
                    (user.id, user.username, password_hash, user.created_at_ms),
                )
        except sqlite3.IntegrityError:
            return False
        return True

    async def get_user_by_name(self, username: str) -> UserRecord | None:
        row = await self._one(
            f"SELECT {_USER_RECORD_COLS} FROM users WHERE username = ? COLLATE NOCASE",
            (username,),
        )
        return None if row is None else _user_record(row)

    async def get_user_record(self, user_id: int) -> UserRecord | None:
        row = await self._one(f"SELECT {_USER_RECORD_COLS} FROM users WHERE id = ?", (user_id,))
        return None if row is None else _user_record(row)

    async def _write(self, sql: str, params: Sequence[Any]) -> int:
        """One statement in a write transaction; the number of rows it changed."""
        async with self._tx() as db:
            cur = await db.execute(sql, params)
            return int(cur.rowcount)

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        await self._write(
            "UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id)
        )

    async def set_totp(self, user_id: int, secret: str | None, enabled: bool) -> None:
        async with self._tx() as db:
            await db.execute(
                "UPDATE users SET totp_secret = ?, totp_enabled = ?,"
                " totp_last_step = CASE WHEN ? IS NULL THEN NULL ELSE totp_last_step END"
                " WHERE id = ?",
                (secret, int(enabled), secret, user_id),
            )
            if secret is None:
                await db.execute("DELETE FROM recovery_codes WHERE user_id = ?", (user_id,))

    async def use_totp_step(self, user_id: int, step: int) -> bool:
        changed = await self._write(
            "UPDATE users SET totp_last_step = ? WHERE id = ?"
            " AND (totp_last_step IS NULL OR totp_last_step < ?)",
            (step, user_id, step),
        )
        return changed > 0

    async def set_recovery_codes(self, user_id: int, code_hashes: Sequence[bytes]) -> None:
        async with self._tx() as db:
            await db.execute("DELETE FROM recovery_codes WHERE user_id = ?", (user_id,))
            await db.executemany(
                "INSERT INTO recovery_codes (user_id, code_hash) VALUES (?, ?)",
                [(user_id, h) for h in code_hashes],
            )

    async def use_recovery_code(self, user_id: int, code_hash: bytes, now_ms: int) -> bool:
        changed = await self._write(
            "UPDATE recovery_codes SET used_at_ms = ? WHERE user_id = ? AND code_hash = ?"
            " AND used_at_ms IS NULL",
            (now_ms, user_id, code_hash),
        )
        return changed > 0

    async def recovery_codes_left(self, user_id: int) -> int:
        row = await self._one(
            "SELECT count(*) FROM recovery_codes WHERE user_id = ? AND used_at_ms IS NULL",
            (user_id,),
        )
        return int(row[0])

    async def get_users(self, user_ids: Sequence[int]) -> dict[int, User]:
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = await self._all(
            f"SELECT id, username, created_at_ms FROM users WHERE id IN ({marks})", ids
        )
        return {r[0]: User(r[0], r[1], r[2]) for r in rows}

    async def user_ids_by_name(self, names: Sequence[str]) -> dict[str, int]:
        lowered = list(dict.fromkeys(n.lower() for n in names))
        if not lowered:
            return {}
        marks = ",".join("?" * len(lowered))
        rows = await self._all(
            f"SELECT lower(username), id FROM users WHERE username COLLATE NOCASE IN ({marks})",
            lowered,
        )
        return {r[0]: int(r[1]) for r in rows}

    async def search_users(self, prefix: str, limit: int) -> list[User]:
        # LIKE is ASCII case-insensitive here (usernames are ASCII); "_" is a wildcard: escape.
        pattern = prefix.replace("\\", "\\\\").replace("_", "\\_") + "%"
        rows = await self._all(
            "SELECT id, username, created_at_ms FROM users WHERE username LIKE ? ESCAPE '\\'"
            " ORDER BY username COLLATE NOCASE LIMIT ?",
            (pattern, limit),
        )
        return [User(r[0], r[1], r[2]) for r in rows]

    async def create_refresh_token(
        self,
        token_hash: bytes,
        user_id: int,
        family_id: str,
        now_ms: int,
        expires_at_ms: int,
        client: str | None = None,
    ) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO refresh_families (id, user_id, created_at_ms, last_used_at_ms, client)"
                " VALUES (?, ?, ?, ?, ?)",
                (family_id, user_id, now_ms, now_ms, client),
            )
            await db.execute(
                "INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at_ms,"
                " expires_at_ms) VALUES (?, ?, ?, ?, ?)",
                (token_hash, family_id, user_id, now_ms, expires_at_ms),
            )

    async def rotate_refresh_token(
        self, old_hash: bytes, new_hash: bytes, now_ms: int, expires_at_ms: int
    ) -> RefreshOutcome:
        async with self._tx() as db:
            async with db.execute(
                "SELECT t.family_id, t.user_id, t.expires_at_ms, t.used_at_ms, f.revoked_at_ms"
                " FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id"
                " WHERE t.token_hash = ?",
                (old_hash,),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return RefreshOutcome("unknown")
            family, user_id, expires, used, revoked = row
            if revoked is not None:
                return RefreshOutcome("revoked")
            if used is not None:
                await db.execute(
                    "UPDATE refresh_families SET revoked_at_ms = ? WHERE id = ?", (now_ms, family)
                )
                return RefreshOutcome("reused", user_id, family)
            if expires <= now_ms:
                return RefreshOutcome("expired")
            await db.execute(
                "UPDATE refresh_tokens SET used_at_ms = ? WHERE token_hash = ?", (now_ms, old_hash)
            )
            await db.execute(
                "UPDATE refresh_families SET last_used_at_ms = ? WHERE id = ?", (now_ms, family)
            )
            await db.execute(
                "INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at_ms,"
                " expires_at_ms) VALUES (?, ?, ?, ?, ?)",
                (new_hash, family, user_id, now_ms, expires_at_ms),
            )
            return RefreshOutcome("ok", user_id, family)

    async def revoke_refresh_family(self, token_hash: bytes, now_ms: int) -> bool:
        async with self._tx() as db:
            cur = await db.execute(
                "UPDATE refresh_families SET revoked_at_ms = ? WHERE revoked_at_ms IS NULL AND id ="
                " (SELECT family_id FROM refresh_tokens WHERE token_hash = ?)",
                (now_ms, token_hash),
            )
            return cur.rowcount > 0

    async def refresh_family(self, token_hash: bytes) -> tuple[int, str] | None:
        row = await self._one(
            "SELECT user_id, family_id FROM refresh_tokens WHERE token_hash = ?", (token_hash,)
        )
        return None if row is None else (int(row[0]), str(row[1]))

    async def list_sessions(self, user_id: int, now_ms: int) -> list[SessionInfo]:
        rows = await self._all(
            "SELECT f.id, f.created_at_ms, f.last_used_at_ms, f.client FROM refresh_families f"
            " WHERE f.user_id = ? AND f.revoked_at_ms IS NULL AND EXISTS (SELECT 1 FROM"
            " refresh_tokens t WHERE t.family_id = f.id AND t.used_at_ms IS NULL"
            " AND t.expires_at_ms > ?) ORDER BY f.created_at_ms DESC, f.id",
            (user_id, now_ms),
        )
        return [SessionInfo(*r) for r in rows]

    async def revoke_session(self, user_id: int, family_id: str, now_ms: int) -> bool:
        changed = await self._write(
            "UPDATE refresh_families SET revoked_at_ms = ?"
            " WHERE id = ? AND user_id = ? AND revoked_at_ms IS NULL",
            (now_ms, family_id, user_id),
        )
        return changed > 0

    async def revoke_all_sessions(self, user_id: int, now_ms: int) -> list[str]:
        async with (
            self._tx() as db,
            db.execute(
                "UPDATE refresh_families SET revoked_at_ms = ?"
                " WHERE user_id = ? AND revoked_at_ms IS NULL RETURNING id",
                (now_ms, user_id),
            ) as cur,
        ):
            return [str(r[0]) for r in await cur.fetchall()]

    # --- rooms and members -----------------------------------------------------------------------
    async def _append(
        self,
        db: aiosqlite.Connection,
        room_id: int,
        type_: str,
        build: Any,
        now_ms: int,
        trace: dict[str, str] | None = None,
        *,
        membership: bool = False,
    ) -> RoomEvent:
        """Take the room's next seq and store the event: call inside a write transaction.
        ``trace``: the W3C trace context to keep with it (stored NULL when empty).
        ``membership``: a MEMBER_JOIN/LEAVE, which makes an encrypted room's rotation due."""
        due = (
            ", key_rotation_due = (key_rotation_due OR encrypted),"
            " key_changes = key_changes + encrypted"
            if membership
            else ""
        )
        async with db.execute(
            f"UPDATE rooms SET last_seq = last_seq + 1{due} WHERE id = ? RETURNING last_seq",
            (room_id,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            raise LookupError(f"room {room_id} vanished")
        seq = int(row[0])
        data: dict[str, Any] = build(seq)
        await db.execute(
            "INSERT INTO room_events (room_id, seq, type, data, created_at_ms, trace)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                room_id,
                seq,
                type_,
                msgspec.json.encode(data).decode(),
                now_ms,
                trace_to_column(trace),
            ),
        )
        return RoomEvent(room_id, seq, type_, data, now_ms, trace or {})

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
        async with self._tx() as db:
            return await self._create_room(
                db,
                room_id,
                name,
                created_at_ms,
                member_ids,
                public=public,
                direct=False,
                encrypted=encrypted,
            )

    async def _create_room(
        self,
        db: aiosqlite.Connection,
        room_id: int,
        name: str,
        created_at_ms: int,
        member_ids: Sequence[int],
        *,
        public: bool,
        direct: bool,
        encrypted: bool = False,
    ) -> tuple[Room, list[RoomEvent]]:
        out: list[RoomEvent] = []
        await db.execute(
            "INSERT INTO rooms (id, name, last_seq, created_at_ms, is_public, is_direct,"
            " encrypted, key_rotation_due) VALUES (?, ?, 0, ?, ?, ?, ?, ?)",
            (
                room_id,
                name,
                created_at_ms,
                int(public),
                int(direct),
                int(encrypted),
                int(encrypted),
            ),
        )
        for i, uid in enumerate(dict.fromkeys(member_ids)):
            # A group room's first member owns it; the two of a direct room are equals.
            role = "owner" if i == 0 and not direct else "member"
            await db.execute(
                "INSERT INTO room_members (room_id, user_id, joined_at_ms, role)"
                " VALUES (?, ?, ?, ?)",
                (room_id, uid, created_at_ms, role),
            )
            out.append(
                await self._append(
                    db,
                    room_id,
                    "MEMBER_JOIN",
                    lambda s, u=uid: ev.member(room_id, s, u),
                    created_at_ms,
                )
            )
        room = Room(room_id, name, len(out), created_at_ms, public, direct, encrypted, 0, encrypted)
        return room, out

    async def open_direct_room(
        self, room_id: int, user_a: int, user_b: int, name: str, now_ms: int
    ) -> tuple[Room, list[RoomEvent]]:
        lo, hi = sorted((user_a, user_b))
        # BEGIN IMMEDIATE holds the write lock: check-then-insert cannot race, even across
        # processes sharing the file.
        async with self._tx() as db:
            async with db.execute(
                f"SELECT {_ROOM_COLS} FROM rooms WHERE id ="
                " (SELECT room_id FROM direct_rooms WHERE user_lo = ? AND user_hi = ?)",
                (lo, hi),
            ) as cur:
                row = await cur.fetchone()
            if row is not None:
                return _room(row), []
            room, events = await self._create_room(
                db, room_id, name, now_ms, [user_a, user_b], public=False, direct=True
            )
            await db.execute(
                "INSERT INTO direct_rooms (user_lo, user_hi, room_id) VALUES (?, ?, ?)",
                (lo, hi, room_id),
            )
        return room, events

    async def add_member(
        self, room_id: int, user_id: int, now_ms: int
    ) -> tuple[Room, RoomEvent | None] | None:
        async with self._tx() as db:
            cur = await db.execute(
                "INSERT INTO room_members (room_id, user_id, joined_at_ms)"
                " SELECT id, ?, ? FROM rooms WHERE id = ? ON CONFLICT DO NOTHING",
                (user_id, now_ms, room_id),
            )
            await db.execute(
                "DELETE FROM room_invitations WHERE room_id = ? AND user_id = ?", (room_id, user_id)
            )
            event = None
            if cur.rowcount > 0:
                event = await self._append(
                    db,
                    room_id,
                    "MEMBER_JOIN",
                    lambda s: ev.member(room_id, s, user_id),
                    now_ms,
                    membership=True,
                )
            async with db.execute(f"SELECT {_ROOM_COLS} FROM rooms WHERE id = ?", (room_id,)) as c2:
                row = await c2.fetchone()
        return None if row is None else (_room(row), event)

    async def remove_member(
        self, room_id: int, user_id: int, now_ms: int, removed_by: int | None = None
    ) -> RoomEvent | None:
        async with self._tx() as db:
            async with db.execute(
                "DELETE FROM room_members WHERE room_id = ? AND user_id = ? RETURNING role",
                (room_id, user_id),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            if row[0] == "owner":  # the longest-standing admin, else member, takes over
                await db.execute(
                    "UPDATE room_members SET role = 'owner' WHERE room_id = ? AND user_id ="
                    " (SELECT user_id FROM room_members WHERE room_id = ? ORDER BY"
                    " role <> 'admin', joined_at_ms, user_id LIMIT 1)",
                    (room_id, room_id),
                )
            return await self._append(
                db,
                room_id,
                "MEMBER_LEAVE",
                lambda s: ev.member(room_id, s, user_id, removed_by),
                now_ms,
                membership=True,
            )

    async def member_role(self, room_id: int, user_id: int) -> str | None:
        row = await self._one(
            "SELECT role FROM room_members WHERE room_id = ? AND user_id = ?", (room_id, user_id)
        )
        return None if row is None else str(row[0])

    async def member_roles(self, room_id: int) -> list[tuple[int, str]]:
        rows = await self._all(
            "SELECT user_id, role FROM room_members WHERE room_id = ?"
            " ORDER BY joined_at_ms, user_id",
            (room_id,),
        )
        return [(int(r[0]), str(r[1])) for r in rows]

    async def set_member_role(self, room_id: int, user_id: int, role: str) -> bool:
        changed = await self._write(
            "UPDATE room_members SET role = ? WHERE room_id = ? AND user_id = ?",
            (role, room_id, user_id),
        )
        return changed > 0

    async def public_rooms(self, after: int | None, limit: int) -> list[Room]:
        rows = await self._all(
            f"SELECT {_ROOM_COLS} FROM rooms WHERE is_public = 1 AND id > ? ORDER BY id LIMIT ?",
            (after or 0, limit),
        )
        return [_room(r) for r in rows]

    async def shared_with(self, viewer: int, user_ids: Sequence[int]) -> set[int]:
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        rows = await self._all(
            "SELECT DISTINCT o.user_id FROM room_members v JOIN room_members o"
            f" ON o.room_id = v.room_id WHERE v.user_id = ? AND o.user_id IN ({marks})",
            (viewer, *ids),
        )
        return {int(r[0]) for r in rows}

    # --- invitations -----------------------------------------------------------------------------
    async def create_invitations(
        self, room_id: int, inviter_id: int, user_ids: Sequence[int], now_ms: int
    ) -> list[int]:
        invited: list[int] = []
        async with self._tx() as db:
            for uid in dict.fromkeys(user_ids):
                cur = await db.execute(
                    "INSERT INTO room_invitations (room_id, user_id, inviter_id, created_at_ms)"
                    " SELECT ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM room_members"
                    " WHERE room_id = ? AND user_id = ?) ON CONFLICT DO NOTHING",
                    (room_id, uid, inviter_id, now_ms, room_id, uid),
                )
                if cur.rowcount > 0:
                    invited.append(uid)
        return invited

    async def invitations_of(self, user_id: int) -> list[Invitation]:
        rows = await self._all(
            "SELECT i.room_id, r.name, i.user_id, i.inviter_id, i.created_at_ms"
            " FROM room_invitations i JOIN rooms r ON r.id = i.room_id"
            " WHERE i.user_id = ? ORDER BY i.created_at_ms, i.room_id",
            (user_id,),
        )
        return [Invitation(*r) for r in rows]

    async def has_invitation(self, room_id: int, user_id: int) -> bool:
        row = await self._one(
            "SELECT 1 FROM room_invitations WHERE room_id = ? AND user_id = ?", (room_id, user_id)
        )
        return row is not None

    async def delete_invitation(self, room_id: int, user_id: int) -> bool:
        changed = await self._write(
            "DELETE FROM room_invitations WHERE room_id = ? AND user_id = ?", (room_id, user_id)
        )
        return changed > 0

    async def get_room(self, room_id: int) -> Room | None:
        row = await self._one(f"SELECT {_ROOM_COLS} FROM rooms WHERE id = ?", (room_id,))
        return None if row is None else _room(row)

    async def rooms_of(self, user_id: int) -> list[Room]:
        rows = await self._all(
            f"SELECT {_ROOM_COLS} FROM rooms WHERE id IN"
            " (SELECT room_id FROM room_members WHERE user_id = ?) ORDER BY id",
            (user_id,),
        )
        return [_room(r) for r in rows]

    async def members_of(self, room_id: int) -> list[int]:
        rows = await self._all(
            "SELECT user_id FROM room_members WHERE room_id = ? ORDER BY joined_at_ms, user_id",
            (room_id,),
        )
        return [int(r[0]) for r in rows]

    async def is_member(self, room_id: int, user_id: int) -> bool:
        row = await self._one(
            "SELECT 1 FROM room_members WHERE room_id = ? AND user_id = ?", (room_id, user_id)
        )
        return row is not None

    # --- read state ------------------------------------------------------------------------------
    async def mark_read(self, user_id: int, room_id: int, seq: int) -> int:
        async with (
            self._tx() as db,
            db.execute(
                "INSERT INTO read_states (user_id, room_id, last_read_seq) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id, room_id) DO UPDATE SET last_read_seq ="
                " max(read_states.last_read_seq, excluded.last_read_seq)"
                " RETURNING last_read_seq",
                (user_id, room_id, seq),
            ) as cur,
        ):
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def set_muted(self, user_id: int, room_id: int, muted: bool) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO read_states (user_id, room_id, muted) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id, room_id) DO UPDATE SET muted = excluded.muted",
                (user_id, room_id, int(muted)),
            )

    async def read_states(
        self, user_id: int, room_ids: Sequence[int], cap: int
    ) -> dict[int, ReadState]:
        ids = list(dict.fromkeys(room_ids))
        if not ids:
            return {}
        rooms = {f"r{i}": rid for i, rid in enumerate(ids)}
        in_rooms = ",".join(f":{name}" for name in rooms)
        rows = await self._all(
            "SELECT m.room_id, coalesce(r.last_read_seq, 0), coalesce(r.muted, 0),"
            " (SELECT count(*) FROM (SELECT 1 FROM room_events e WHERE e.room_id = m.room_id"
            "   AND e.seq > coalesce(r.last_read_seq, 0) AND e.type = 'MESSAGE_CREATE'"
            "   AND e.created_at_ms >= m.joined_at_ms"
            "   AND json_extract(e.data, '$.author_id') <> :author LIMIT :cap)),"
            " (SELECT count(*) FROM (SELECT 1 FROM message_mentions x WHERE x.user_id = :user"
            "   AND x.room_id = m.room_id AND x.seq > coalesce(r.last_read_seq, 0) LIMIT :cap))"
            " FROM room_members m LEFT JOIN read_states r"
            " ON r.user_id = m.user_id AND r.room_id = m.room_id"
            f" WHERE m.user_id = :user AND m.room_id IN ({in_rooms})",
            {"user": user_id, "author": str(user_id), "cap": cap} | rooms,
        )
        return {
            int(r[0]): ReadState(int(r[0]), int(r[1]), int(r[3]), int(r[4]), bool(r[2]))
            for r in rows
        }

    async def mentions_of(self, message_ids: Sequence[int]) -> dict[int, tuple[int, ...]]:
        ids = list(dict.fromkeys(message_ids))
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = await self._all(
            "SELECT message_id, user_id FROM message_mentions"
            f" WHERE message_id IN ({marks}) ORDER BY message_id, user_id",
            ids,
        )
        out: dict[int, list[int]] = {}
        for mid, uid in rows:
            out.setdefault(int(mid), []).append(int(uid))
        return {k: tuple(v) for k, v in out.items()}

    # --- messages --------------------------------------------------------------------------------
    async def insert_messages(self, rows: Sequence[NewMessage]) -> list[SendOutcome]:
        out: list[SendOutcome] = []
        async with self._tx() as db:
            for new in rows:
                out.append(await self._insert_one(db, new))
        return out

    async def _insert_one(self, db: aiosqlite.Connection, new: NewMessage) -> SendOutcome:
        # The write lock is held (BEGIN IMMEDIATE): check-then-insert cannot race here.
        async with db.execute(
            f"SELECT {_MSG_COLS} FROM messages WHERE author_id = ? AND nonce = ?",
            (new.author_id, new.nonce),
        ) as cur:
            row = await cur.fetchone()
        if row is not None:
            return SendOutcome("duplicate", _message(row))
        async with db.execute(
            "SELECT (SELECT encrypted FROM rooms WHERE id = ?),"
            " (SELECT key_epoch FROM rooms WHERE id = ?),"
            " (SELECT key_rotation_due FROM rooms WHERE id = ?),"
            " (SELECT 1 FROM room_members WHERE room_id = ? AND user_id = ?)",
            (new.room_id, new.room_id, new.room_id, new.room_id, new.author_id),
        ) as cur:
            check = await cur.fetchone()
        assert check is not None
        encrypted, epoch, due, member = check
        if encrypted is None:
            return SendOutcome("no_room")
        if member is None:
            return SendOutcome("not_member")
        refused = epoch_refusal(bool(encrypted), epoch, bool(due), new.encrypted)
        if refused is not None:
            return SendOutcome(refused)
        mentions = await self._members_among(db, new.room_id, new.mentions)
        msg = Message(
            new.id,
            new.room_id,
            0,
            new.author_id,
            new.content,
            new.nonce,
            new.created_at_ms,
            mentions=mentions,
            attachments=new.attachments,
            encrypted=new.encrypted,
        )
        event = await self._append(
            db,
            new.room_id,
            "MESSAGE_CREATE",
            lambda s: ev.message_create(msg, s),
            new.created_at_ms,
            new.trace,
        )
        msg = msgspec.structs.replace(msg, seq=event.seq)
        await db.execute(
            f"INSERT INTO messages ({_MSG_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 0, ?)",
            (
                msg.id,
                msg.room_id,
                msg.seq,
                msg.author_id,
                msg.content,
                msg.nonce,
                msg.created_at_ms,
                e2e_to_column(msg.encrypted),
            ),
        )
        if mentions:
            await db.executemany(
                "INSERT INTO message_mentions (user_id, room_id, seq, message_id)"
                " VALUES (?, ?, ?, ?)",
                [(u, msg.room_id, msg.seq, msg.id) for u in mentions],
            )
        for position, a in enumerate(new.attachments):
            cur = await db.execute(
                "UPDATE uploads SET message_id = ?, position = ? WHERE id = ? AND owner_id = ?"
                " AND room_id = ? AND state = 'ready' AND message_id IS NULL"
                " AND deleted_at_ms IS NULL AND expires_at_ms > ?",
                (msg.id, position, a.id, new.author_id, new.room_id, new.created_at_ms),
            )
            if cur.rowcount != 1:
                raise AttachConflict(f"upload {a.id} can't be attached")
        return SendOutcome("created", msg, event)

    async def _members_among(
        self, db: aiosqlite.Connection, room_id: int, user_ids: Sequence[int]
    ) -> tuple[int, ...]:
        """Those of ``user_ids`` who are members of the room, ascending (mentions)."""
        if not user_ids:
            return ()
        marks = ",".join("?" * len(user_ids))
        async with db.execute(
            f"SELECT user_id FROM room_members WHERE room_id = ? AND user_id IN ({marks})"
            " ORDER BY user_id",
            (room_id, *user_ids),
        ) as cur:
            return tuple(int(r[0]) for r in await cur.fetchall())

    async def insert_encrypted_message(self, row: NewMessage) -> SendOutcome:
        if row.encrypted is None:
            raise ValueError("insert_encrypted_message needs row.encrypted")
        async with self._tx() as db:
            return await self._insert_one(db, row)

    async def edit_encrypted_message(
        self, message_id: int, encrypted: dict[str, Any], edited_at_ms: int
    ) -> EncryptedEdit:
        async with self._tx() as db:
            async with db.execute(
                "SELECT r.encrypted, r.key_epoch, r.key_rotation_due FROM messages m"
                " JOIN rooms r ON r.id = m.room_id WHERE m.id = ? AND m.deleted = 0",
                (message_id,),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return EncryptedEdit("no_room")
            refused = epoch_refusal(bool(row[0]), row[1], bool(row[2]), encrypted)
            if refused is not None:
                return EncryptedEdit(refused)
            async with db.execute(
                f"UPDATE messages SET e2e = ?, edited_at_ms = ? WHERE id = ? RETURNING {_MSG_COLS}",
                (e2e_to_column(encrypted), edited_at_ms, message_id),
            ) as cur:
                updated = await cur.fetchone()
            assert updated is not None
            msg = _message(updated)
            event = await self._append(
                db,
                msg.room_id,
                "MESSAGE_UPDATE",
                lambda s: ev.message_update(
                    msg.room_id, s, message_id, "", edited_at_ms, encrypted
                ),
                edited_at_ms,
            )
        return EncryptedEdit("ok", msg, event)

    async def get_message(self, message_id: int) -> Message | None:
        row = await self._one(f"SELECT {_MSG_COLS} FROM messages WHERE id = ?", (message_id,))
        return None if row is None else _message(row)

    async def edit_message(
        self, message_id: int, content: str, edited_at_ms: int
    ) -> tuple[Message, RoomEvent] | None:
        async with self._tx() as db:
            async with db.execute(
                "UPDATE messages SET content = ?, edited_at_ms = ? WHERE id = ? AND deleted = 0"
                f" RETURNING {_MSG_COLS}",
                (content, edited_at_ms, message_id),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            msg = _message(row)
            event = await self._append(
                db,
                msg.room_id,
                "MESSAGE_UPDATE",
                lambda s: ev.message_update(msg.room_id, s, message_id, content, edited_at_ms),
                edited_at_ms,
            )
        return msg, event

    async def delete_message(self, message_id: int, now_ms: int) -> RoomEvent | None:
        async with self._tx() as db:
            async with db.execute(
                "UPDATE messages SET content = '', e2e = NULL, deleted = 1"
                " WHERE id = ? AND deleted = 0"
                " RETURNING room_id",
                (message_id,),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            room_id = int(row[0])
            # A tombstone keeps no reactions: they would describe content that is gone.
            await db.execute("DELETE FROM reactions WHERE message_id = ?", (message_id,))
            # Nor files: the sweeper removes their objects.
            await db.execute(
                "UPDATE uploads SET deleted_at_ms = ? WHERE message_id = ?"
                " AND deleted_at_ms IS NULL",
                (now_ms, message_id),
            )
            return await self._append(
                db,
                room_id,
                "MESSAGE_DELETE",
                lambda s: ev.message_delete(room_id, s, message_id),
                now_ms,
            )

    async def add_reaction(
        self, message_id: int, user_id: int, emoji: str, now_ms: int
    ) -> RoomEvent | None:
        async with self._tx() as db:
            async with db.execute(
                "SELECT room_id FROM messages WHERE id = ? AND deleted = 0", (message_id,)
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            room_id = int(row[0])
            cur2 = await db.execute(
                "INSERT INTO reactions (message_id, emoji, user_id, created_at_ms)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (message_id, emoji, user_id, now_ms),
            )
            if cur2.rowcount == 0:
                return None
            return await self._append(
                db,
                room_id,
                "REACTION_ADD",
                lambda s: ev.reaction(room_id, s, message_id, user_id, emoji),
                now_ms,
            )

    async def remove_reaction(
        self, message_id: int, user_id: int, emoji: str, now_ms: int
    ) -> RoomEvent | None:
        async with self._tx() as db:
            cur = await db.execute(
                "DELETE FROM reactions WHERE message_id = ? AND emoji = ? AND user_id = ?",
                (message_id, emoji, user_id),
            )
            if cur.rowcount == 0:
                return None
            async with db.execute("SELECT room_id FROM messages WHERE id = ?", (message_id,)) as c2:
                row = await c2.fetchone()
            assert row is not None
            room_id = int(row[0])
            return await self._append(
                db,
                room_id,
                "REACTION_REMOVE",
                lambda s: ev.reaction(room_id, s, message_id, user_id, emoji),
                now_ms,
            )

    async def list_messages(
        self, room_id: int, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        if after is not None:
            sql = f"SELECT {_MSG_COLS} FROM messages WHERE room_id = ? AND id > ? ORDER BY id"
            params: tuple[int, ...] = (room_id, after)
        elif before is not None:
            sql = f"SELECT {_MSG_COLS} FROM messages WHERE room_id = ? AND id < ? ORDER BY id DESC"
            params = (room_id, before)
        else:
            sql = f"SELECT {_MSG_COLS} FROM messages WHERE room_id = ? ORDER BY id DESC"
            params = (room_id,)
        rows = await self._all(sql + " LIMIT ?", (*params, limit))
        return [_message(r) for r in rows]

    async def reaction_counts(
        self, message_ids: Sequence[int], viewer: int
    ) -> dict[int, tuple[ReactionCount, ...]]:
        ids = list(dict.fromkeys(message_ids))
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = await self._all(
            "SELECT message_id, emoji, count(*), max(user_id = ?), min(created_at_ms) AS first"
            f" FROM reactions WHERE message_id IN ({marks})"
            " GROUP BY message_id, emoji ORDER BY message_id, first, emoji",
            (viewer, *ids),
        )
        out: dict[int, list[ReactionCount]] = {}
        for mid, emoji, count, me, _ in rows:
            out.setdefault(mid, []).append(ReactionCount(emoji, count, bool(me)))
        return {k: tuple(v) for k, v in out.items()}

    async def find_message(self, author_id: int, nonce: str) -> Message | None:
        row = await self._one(
            f"SELECT {_MSG_COLS} FROM messages WHERE author_id = ? AND nonce = ?",
            (author_id, nonce),
        )
        return None if row is None else _message(row)

    async def attachments_of(self, message_ids: Sequence[int]) -> dict[int, tuple[Attachment, ...]]:
        ids = list(dict.fromkeys(message_ids))
        if not ids:
            return {}
        rows = await self._all(
            f"SELECT message_id, {_ATTACHMENT_COLS} FROM uploads WHERE message_id IN"
            f" ({_marks(ids)}) AND deleted_at_ms IS NULL ORDER BY message_id, position",
            ids,
        )
        out: dict[int, list[Attachment]] = {}
        for mid, *cols in rows:
            out.setdefault(mid, []).append(Attachment(*cols))
        return {k: tuple(v) for k, v in out.items()}

    # --- uploads ---------------------------------------------------------------------------------
    async def create_upload(self, upload: Upload, quota_bytes: int) -> tuple[bool, int]:
        async with self._tx() as db:  # the write lock: no concurrent upload passes the quota
            async with db.execute(
                "SELECT coalesce(sum(size), 0) FROM uploads WHERE owner_id = ?"
                " AND deleted_at_ms IS NULL AND state IN ('pending', 'ready')",
                (upload.owner_id,),
            ) as cur:
                row = await cur.fetchone()
            used = int(row[0]) if row is not None else 0
            if used + upload.size > quota_bytes:
                return False, used
            await db.execute(
                f"INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES ({_marks(upload_values(upload))})",
                upload_values(upload),
            )
        return True, used

    async def get_uploads(self, upload_ids: Sequence[int]) -> dict[int, Upload]:
        ids = list(dict.fromkeys(upload_ids))
        if not ids:
            return {}
        rows = await self._all(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id IN ({_marks(ids)})", ids
        )
        return {r[0]: _upload(r) for r in rows}

    async def finish_upload(
        self,
        upload_id: int,
        content_type: str,
        size: int,
        width: int | None,
        height: int | None,
        thumb: ThumbState,
    ) -> bool:
        async with self._tx() as db:
            cur = await db.execute(
                "UPDATE uploads SET state = 'ready', content_type = ?, size = ?, width = ?,"
                " height = ?, thumb = ? WHERE id = ? AND state = 'pending'",
                (content_type, size, width, height, thumb, upload_id),
            )
            return cur.rowcount > 0

    async def reject_upload(self, upload_id: int, reason: str, now_ms: int) -> None:
        async with self._tx() as db:
            await db.execute(
                "UPDATE uploads SET state = 'rejected', reason = ?, expires_at_ms = ?"
                " WHERE id = ? AND state = 'pending'",
                (reason, now_ms, upload_id),
            )

    async def claim_thumbnails(self, now_ms: int, lease_ms: int, limit: int) -> list[Upload]:
        async with (
            self._tx() as db,
            db.execute(
                "UPDATE uploads SET thumb_claimed_until_ms = ? WHERE id IN (SELECT id FROM"
                " uploads WHERE thumb = 'pending' AND state = 'ready' AND deleted_at_ms IS NULL"
                " AND thumb_claimed_until_ms < ? ORDER BY id LIMIT ?)"
                f" RETURNING {UPLOAD_COLUMNS}",
                (now_ms + lease_ms, now_ms, limit),
            ) as cur,
        ):
            return [_upload(r) for r in await cur.fetchall()]

    async def finish_thumbnail(self, upload_id: int, state: ThumbState) -> None:
        async with self._tx() as db:
            await db.execute(
                "UPDATE uploads SET thumb = ? WHERE id = ? AND thumb = 'pending'",
                (state, upload_id),
            )

    async def uploads_to_sweep(self, now_ms: int, limit: int) -> list[Upload]:
        rows = await self._all(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE message_id IS NULL AND expires_at_ms <= ?"
            f" UNION SELECT {UPLOAD_COLUMNS} FROM uploads WHERE deleted_at_ms IS NOT NULL"
            f" UNION SELECT {UPLOAD_COLUMNS} FROM uploads WHERE message_id IS NOT NULL"
            " AND staging_swept = 0 AND put_expires_at_ms <= ?"
            " ORDER BY id LIMIT ?",
            (now_ms, now_ms, limit),
        )
        return [_upload(r) for r in rows]

    async def forget_uploads(self, upload_ids: Sequence[int]) -> None:
        ids = list(upload_ids)
        if not ids:
            return
        async with self._tx() as db:
            await db.execute(
                f"DELETE FROM uploads WHERE id IN ({_marks(ids)})"
                " AND (message_id IS NULL OR deleted_at_ms IS NOT NULL)",
                ids,
            )

    async def mark_staging_swept(self, upload_ids: Sequence[int]) -> None:
        ids = list(upload_ids)
        if not ids:
            return
        async with self._tx() as db:
            await db.execute(
                f"UPDATE uploads SET staging_swept = 1 WHERE id IN ({_marks(ids)})", ids
            )

    # --- sealed room keys -----------------------------------------------------------------------
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
        async with self._tx() as db:
            async with db.execute(
                "SELECT encrypted, key_epoch, key_changes FROM rooms WHERE id = ?", (room_id,)
            ) as cur:
                row = await cur.fetchone()
            async with db.execute(
                "SELECT user_id FROM room_members WHERE room_id = ?", (room_id,)
            ) as cur:
                members = {int(r[0]) for r in await cur.fetchall()}
            status = rotation_status(
                None if row is None else (bool(row[0]), int(row[1]), int(row[2])),
                actor,
                members,
                epoch,
                member_ids,
                changes,
            )
            if status != "ok":
                return status
            await db.executemany(
                f"INSERT INTO room_keys ({_KEY_COLS}, created_at_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*_key_row(k), now_ms) for k in keys],
            )
            await db.execute(
                "UPDATE rooms SET key_epoch = ?, key_rotation_due = 0 WHERE id = ?",
                (epoch, room_id),
            )
        return "ok"

    async def add_room_keys(self, keys: Sequence[SealedKey], now_ms: int) -> int:
        added = 0
        async with self._tx() as db:
            for k in keys:
                cur = await db.execute(
                    f"INSERT INTO room_keys ({_KEY_COLS}, created_at_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (*_key_row(k), now_ms),
                )
                added += cur.rowcount
        return added

    async def mark_key_changes(self, user_id: int) -> int:
        return await self._write(
            "UPDATE rooms SET key_rotation_due = 1, key_changes = key_changes + 1"
            " WHERE encrypted = 1 AND id IN (SELECT room_id FROM room_members WHERE user_id = ?)",
            (user_id,),
        )

    async def room_keys(
        self, room_id: int, user_id: int, device_id: bytes, after_epoch: int, limit: int
    ) -> list[SealedKey]:
        rows = await self._all(
            f"SELECT {_KEY_COLS} FROM room_keys WHERE room_id = ? AND user_id = ?"
            " AND device_id = ? AND epoch > ? ORDER BY epoch LIMIT ?",
            (room_id, user_id, device_id, after_epoch, limit),
        )
        return [_sealed_key(r) for r in rows]

    async def room_key_holders(self, room_id: int, epoch: int) -> set[tuple[int, bytes]]:
        rows = await self._all(
            "SELECT user_id, device_id FROM room_keys WHERE room_id = ? AND epoch = ?",
            (room_id, epoch),
        )
        return {(int(r[0]), bytes(r[1])) for r in rows}

    # --- room events and the outbox --------------------------------------------------------------
    async def events_after(self, room_id: int, after_seq: int, limit: int) -> list[RoomEvent]:
        rows = await self._all(
            f"SELECT {_EVENT_COLS} FROM room_events"
            " WHERE room_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (room_id, after_seq, limit),
        )
        return [_event(r) for r in rows]

    async def pending_events(self, created_before_ms: int, limit: int) -> list[RoomEvent]:
        rows = await self._all(
            f"SELECT {_EVENT_COLS} FROM room_events"
            " WHERE published_at_ms IS NULL AND created_at_ms < ? ORDER BY room_id, seq LIMIT ?",
            (created_before_ms, limit),
        )
        return [_event(r) for r in rows]

    async def mark_published(self, keys: Sequence[tuple[int, int]]) -> None:
        if not keys:
            return
        now = _now_ms()
        async with self._tx() as db:
            await db.executemany(
                "UPDATE room_events SET published_at_ms = ?"
                " WHERE room_id = ? AND seq = ? AND published_at_ms IS NULL",
                [(now, r, s) for r, s in keys],
            )

    async def acquire_lease(self, name: str, owner: str, ttl_ms: int) -> bool:
        now = _now_ms()
        async with (
            self._tx() as db,
            db.execute(
                "INSERT INTO leases (name, owner, expires_at_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
                " expires_at_ms = excluded.expires_at_ms"
                " WHERE leases.owner = excluded.owner OR leases.expires_at_ms <= ?"
                " RETURNING owner",
                (name, owner, now + ttl_ms, now),
            ) as cur,
        ):
            row = await cur.fetchone()
        return row is not None


def _event(row: Iterable[Any]) -> RoomEvent:
    room_id, seq, type_, data, created, trace = row
    return RoomEvent(
        room_id, seq, type_, msgspec.json.decode(data), created, trace_from_column(trace)
    )


def _key_row(k: SealedKey) -> tuple[Any, ...]:
    return (
        k.room_id, k.epoch, k.user_id, k.device_id, k.key_version, k.sender_id, k.sender_device,
        k.sealed, k.signature,
    )  # fmt: skip


def _split_sql(script: str) -> list[str]:
    """Statements of a migration file (they hold no ';' inside literals: keep it that way)."""
    lines = [ln for ln in script.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
