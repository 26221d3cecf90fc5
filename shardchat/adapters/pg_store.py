"""Store on PostgreSQL via asyncpg: the scale-out adapter.

Room seqs: ``UPDATE rooms SET last_seq = last_seq + n ... RETURNING`` takes the room's row lock
until commit, so concurrent writers to one room (any process) queue there and get contiguous
seqs in commit order. Batches lock their rooms in id order first so two batches touching the
same rooms cannot deadlock. Sends are written set-based (``unnest`` of array parameters): a
constant number of statements per batch whatever its size; ``executemany`` would run one
statement per row. A batch whose rows are all for ONE room (every batch of a lightly loaded
writer) is ONE statement in its own implicit transaction (``_ONE_ROOM_INSERT``): one round
trip instead of six (BEGIN, insert, lock, bump, number + events, COMMIT); a batch of a few
rooms is one such statement per room, run concurrently on their own connections.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs published
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
from shardchat.adapters.pg_keys import PgKeyDirectory
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
_EVENT_COLS = "room_id, seq, type, data, created_at_ms, trace"
_ATTACHMENT_COLS = "id, filename, content_type, size, width, height"
# The database's clock for leases: every process agrees on it.
_DB_NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
# One number for the advisory lock that serializes concurrent migrators.
_MIGRATION_LOCK = 0x5C4A7  # "shardchat"-ish; any constant shared by all processes


def _message(r: Any) -> Message:
    return Message(
        r["id"],
        r["room_id"],
        r["seq"],
        r["author_id"],
        r["content"],
        r["nonce"],
        r["created_at_ms"],
        r["edited_at_ms"],
        r["deleted"],
        encrypted=e2e_from_column(r["e2e"]),
    )


def _upload(r: Any) -> Upload:
    return Upload(*r.values())


def _room(r: Any) -> Room:
    return Room(
        r["id"],
        r["name"],
        r["last_seq"],
        r["created_at_ms"],
        r["is_public"],
        r["is_direct"],
        r["encrypted"],
        r["key_epoch"],
        r["key_rotation_due"],
        r["key_changes"],
    )


def _sealed_key(r: Any) -> SealedKey:
    return SealedKey(
        r["room_id"], r["epoch"], r["user_id"], bytes(r["device_id"]), r["key_version"],
        r["sender_id"], bytes(r["sender_device"]), bytes(r["sealed"]), bytes(r["signature"]),
    )  # fmt: skip


def _key_columns(keys: Sequence[SealedKey]) -> list[list[Any]]:
    """The keys as one array per column of ``_KEY_COLS`` (for ``unnest``)."""
    return [list(col) for col in zip(*(msgspec.structs.astuple(k) for k in keys), strict=True)]


def _user_record(r: Any) -> UserRecord:
    return UserRecord(
        User(r["id"], r["username"], r["created_at_ms"]),
        r["password_hash"],
        r["totp_secret"],
        r["totp_enabled"],
    )


_USER_RECORD_COLS = "id, username, created_at_ms, password_hash, totp_secret, totp_enabled"


def _event(r: Any) -> RoomEvent:
    return RoomEvent(
        r["room_id"],
        r["seq"],
        r["type"],
        json.loads(r["data"]),
        r["created_at_ms"],
        trace_from_column(r["trace"]),
    )


def _json(data: dict[str, Any]) -> str:
    return msgspec.json.encode(data).decode()


# A batch of one room, as one statement (see ``PgStore._insert_one_room``). ``ok``: the rows
# whose author is a member and whose (author, nonce) is not stored yet; ``bump`` takes the
# room's row lock and its seqs for exactly those; ``num`` numbers them in batch order; the
# message rows and their events (``data`` = the event JSON around its seq) are inserted with
# their seqs. A concurrent insert of the same (author, nonce) is invisible to ``ok`` and makes
# ``ins`` skip a row that took a seq: the last line then divides by zero, which aborts the whole
# statement (nothing of it is written) and the caller takes the general path instead.
_ONE_ROOM_INSERT = """
WITH i AS (
  SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bigint[],
                       $7::text[], $8::text[], $9::text[])
    WITH ORDINALITY AS i(id, author_id, content, nonce, created_at_ms, head, tail, trace, ord)
), ok AS (
  SELECT i.* FROM i
  WHERE EXISTS (SELECT 1 FROM room_members m WHERE m.room_id = $1 AND m.user_id = i.author_id)
    AND NOT EXISTS (SELECT 1 FROM rooms e WHERE e.id = $1 AND e.encrypted)
    AND NOT EXISTS (SELECT 1 FROM messages x WHERE x.author_id = i.author_id
                    AND x.nonce = i.nonce)
), bump AS (
  UPDATE rooms SET last_seq = last_seq + (SELECT count(*) FROM ok)
  WHERE id = $1 AND EXISTS (SELECT 1 FROM ok) RETURNING last_seq
), num AS (
  SELECT ok.*, (SELECT last_seq FROM bump) - (SELECT count(*) FROM ok)
               + row_number() OVER (ORDER BY ok.ord) AS seq
  FROM ok
), ins AS (
  INSERT INTO messages (id, room_id, seq, author_id, content, nonce, created_at_ms)
  SELECT id, $1, seq, author_id, content, nonce, created_at_ms FROM num
  ON CONFLICT (author_id, nonce) DO NOTHING RETURNING id
), evt AS (
  INSERT INTO room_events (room_id, seq, type, data, created_at_ms, trace)
  SELECT $1, seq, 'MESSAGE_CREATE', head || seq::text || tail, created_at_ms, trace FROM num
)
SELECT id, seq,
  1 / (CASE WHEN (SELECT count(*) FROM ins) = (SELECT count(*) FROM num) THEN 1 ELSE 0 END)
FROM num
"""
_SEQ_HOLE = '"seq":0'


def _around_seq(data: dict[str, Any]) -> tuple[str, str]:
    """The event JSON of ``data`` (whose ``seq`` is 0) split around the seq's digits."""
    text = _json(data)
    at = text.index(_SEQ_HOLE) + len(_SEQ_HOLE) - 1
    return text[:at], text[at + 1 :]


class _LostRace(Exception):
    """Raised inside a transaction to roll it back: another process did the same first."""


#: A batch of plain rows of at most this many rooms is written as one statement per room, in
#: parallel; more rooms take the general path (one transaction of four statements).
_ONE_STATEMENT_ROOMS = 4


async def _no_session_state(conn: Any) -> None:
    """The pool's reset on release: nothing beyond the rollback of an open transaction, which
    asyncpg always does. Its default (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) is a
    second round trip per Store call; this store leaves no session state on a connection (no
    SET, LISTEN or cursor outside a transaction; the migration lock is released in a finally)."""


class PgStore:
    dialect: Dialect = "postgres"

    def __init__(self, dsn: str, pool_size: int = 10) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self._pool: Any = None

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=min(2, self.pool_size),
            max_size=self.pool_size,
            reset=_no_session_state,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("PgStore not started")
        return self._pool

    def key_directory(self) -> PgKeyDirectory:
        return PgKeyDirectory(self)

    # --- migrations ------------------------------------------------------------------------------
    async def apply_migrations(self, migrations: Sequence[tuple[str, str]]) -> list[str]:
        applied: list[str] = []
        async with self.pool.acquire() as conn:
            # The lock makes a second migrator wait, then find everything applied.
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations"
                    " (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {
                    r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")
                }
                for version, sql in migrations:
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(sql)  # no arguments: simple protocol, many statements
                        await conn.execute(
                            "INSERT INTO schema_migrations (version) VALUES ($1)", version
                        )
                    applied.append(version)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        return applied

    # --- users and refresh tokens ----------------------------------------------------------------
    async def create_user(self, user: User, password_hash: str) -> bool:
        row = await self.pool.fetchrow(
            "INSERT INTO users (id, username, password_hash, created_at_ms) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING RETURNING id",
            user.id,
            user.username,
            password_hash,
            user.created_at_ms,
        )
        return row is not None

    async def get_user_by_name(self, username: str) -> UserRecord | None:
        r = await self.pool.fetchrow(
            f"SELECT {_USER_RECORD_COLS} FROM users WHERE lower(username) = lower($1)", username
        )
        return None if r is None else _user_record(r)

    async def get_user_record(self, user_id: int) -> UserRecord | None:
        r = await self.pool.fetchrow(
            f"SELECT {_USER_RECORD_COLS} FROM users WHERE id = $1", user_id
        )
        return None if r is None else _user_record(r)

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        await self.pool.execute(
            "UPDATE users SET password_hash = $2 WHERE id = $1", user_id, password_hash
        )

    async def set_totp(self, user_id: int, secret: str | None, enabled: bool) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE users SET totp_secret = $2, totp_enabled = $3,"
                " totp_last_step = CASE WHEN $2::text IS NULL THEN NULL ELSE totp_last_step END"
                " WHERE id = $1",
                user_id,
                secret,
                enabled,
            )
            if secret is None:
                await conn.execute("DELETE FROM recovery_codes WHERE user_id = $1", user_id)

    async def use_totp_step(self, user_id: int, step: int) -> bool:
        r = await self.pool.fetchval(
            "UPDATE users SET totp_last_step = $2 WHERE id = $1"
            " AND (totp_last_step IS NULL OR totp_last_step < $2) RETURNING 1",
            user_id,
            step,
        )
        return r is not None

    async def set_recovery_codes(self, user_id: int, code_hashes: Sequence[bytes]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM recovery_codes WHERE user_id = $1", user_id)
            await conn.execute(
                "INSERT INTO recovery_codes (user_id, code_hash)"
                " SELECT $1, h FROM unnest($2::bytea[]) AS h",
                user_id,
                list(code_hashes),
            )

    async def use_recovery_code(self, user_id: int, code_hash: bytes, now_ms: int) -> bool:
        r = await self.pool.fetchval(
            "UPDATE recovery_codes SET used_at_ms = $3 WHERE user_id = $1 AND code_hash = $2"
            " AND used_at_ms IS NULL RETURNING 1",
            user_id,
            code_hash,
            now_ms,
        )
        return r is not None

    async def recovery_codes_left(self, user_id: int) -> int:
        n: int = await self.pool.fetchval(
            "SELECT count(*) FROM recovery_codes WHERE user_id = $1 AND used_at_ms IS NULL",
            user_id,
        )
        return n

    async def get_users(self, user_ids: Sequence[int]) -> dict[int, User]:
        if not user_ids:
            return {}
        rows = await self.pool.fetch(
            "SELECT id, username, created_at_ms FROM users WHERE id = ANY($1::bigint[])",
            list(user_ids),
        )
        return {r["id"]: User(r["id"], r["username"], r["created_at_ms"]) for r in rows}

    async def user_ids_by_name(self, names: Sequence[str]) -> dict[str, int]:
        if not names:
            return {}
        rows = await self.pool.fetch(
            "SELECT lower(username) AS name, id FROM users WHERE lower(username) = ANY($1::text[])",
            [n.lower() for n in names],
        )
        return {r["name"]: r["id"] for r in rows}

    async def search_users(self, prefix: str, limit: int) -> list[User]:
        # "_" is a LIKE wildcard and a username character: escape it (and the escape itself).
        pattern = prefix.lower().replace("\\", "\\\\").replace("_", "\\_") + "%"
        rows = await self.pool.fetch(
            "SELECT id, username, created_at_ms FROM users WHERE lower(username) LIKE $1"
            " ORDER BY lower(username) LIMIT $2",
            pattern,
            limit,
        )
        return [User(r["id"], r["username"], r["created_at_ms"]) for r in rows]

    async def create_refresh_token(
        self,
        token_hash: bytes,
        user_id: int,
        family_id: str,
        now_ms: int,
        expires_at_ms: int,
        client: str | None = None,
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO refresh_families (id, user_id, created_at_ms, last_used_at_ms, client)"
                " VALUES ($1, $2, $3, $3, $4)",
                family_id,
                user_id,
                now_ms,
                client,
            )
            await conn.execute(
                "INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at_ms,"
                " expires_at_ms) VALUES ($1, $2, $3, $4, $5)",
                token_hash,
                family_id,
                user_id,
                now_ms,
                expires_at_ms,
            )

    async def rotate_refresh_token(
        self, old_hash: bytes, new_hash: bytes, now_ms: int, expires_at_ms: int
    ) -> RefreshOutcome:
        async with self.pool.acquire() as conn, conn.transaction():
            # FOR UPDATE: two concurrent uses of one token serialize; the second sees it used.
            r = await conn.fetchrow(
                "SELECT t.family_id, t.user_id, t.expires_at_ms, t.used_at_ms, f.revoked_at_ms"
                " FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id"
                " WHERE t.token_hash = $1 FOR UPDATE",
                old_hash,
            )
            if r is None:
                return RefreshOutcome("unknown")
            if r["revoked_at_ms"] is not None:
                return RefreshOutcome("revoked")
            if r["used_at_ms"] is not None:
                await conn.execute(
                    "UPDATE refresh_families SET revoked_at_ms = $1 WHERE id = $2",
                    now_ms,
                    r["family_id"],
                )
                return RefreshOutcome("reused", r["user_id"], r["family_id"])
            if r["expires_at_ms"] <= now_ms:
                return RefreshOutcome("expired")
            await conn.execute(
                "UPDATE refresh_tokens SET used_at_ms = $1 WHERE token_hash = $2", now_ms, old_hash
            )
            await conn.execute(
                "UPDATE refresh_families SET last_used_at_ms = $1 WHERE id = $2",
                now_ms,
                r["family_id"],
            )
            await conn.execute(
                "INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at_ms,"
                " expires_at_ms) VALUES ($1, $2, $3, $4, $5)",
                new_hash,
                r["family_id"],
                r["user_id"],
                now_ms,
                expires_at_ms,
            )
            return RefreshOutcome("ok", r["user_id"], r["family_id"])

    async def revoke_refresh_family(self, token_hash: bytes, now_ms: int) -> bool:
        result: str = await self.pool.execute(
            "UPDATE refresh_families SET revoked_at_ms = $1 WHERE revoked_at_ms IS NULL AND id ="
            " (SELECT family_id FROM refresh_tokens WHERE token_hash = $2)",
            now_ms,
            token_hash,
        )
        return result != "UPDATE 0"

    async def refresh_family(self, token_hash: bytes) -> tuple[int, str] | None:
        r = await self.pool.fetchrow(
            "SELECT user_id, family_id FROM refresh_tokens WHERE token_hash = $1", token_hash
        )
        return None if r is None else (r["user_id"], r["family_id"])

    async def list_sessions(self, user_id: int, now_ms: int) -> list[SessionInfo]:
        rows = await self.pool.fetch(
            "SELECT f.id, f.created_at_ms, f.last_used_at_ms, f.client FROM refresh_families f"
            " WHERE f.user_id = $1 AND f.revoked_at_ms IS NULL AND EXISTS (SELECT 1 FROM"
            " refresh_tokens t WHERE t.family_id = f.id AND t.used_at_ms IS NULL"
            " AND t.expires_at_ms > $2) ORDER BY f.created_at_ms DESC, f.id",
            user_id,
            now_ms,
        )
        return [
            SessionInfo(r["id"], r["created_at_ms"], r["last_used_at_ms"], r["client"])
            for r in rows
        ]

    async def revoke_session(self, user_id: int, family_id: str, now_ms: int) -> bool:
        result: str = await self.pool.execute(
            "UPDATE refresh_families SET revoked_at_ms = $3"
            " WHERE id = $2 AND user_id = $1 AND revoked_at_ms IS NULL",
            user_id,
            family_id,
            now_ms,
        )
        return result != "UPDATE 0"

    async def revoke_all_sessions(self, user_id: int, now_ms: int) -> list[str]:
        rows = await self.pool.fetch(
            "UPDATE refresh_families SET revoked_at_ms = $2"
            " WHERE user_id = $1 AND revoked_at_ms IS NULL RETURNING id",
            user_id,
            now_ms,
        )
        return [r["id"] for r in rows]

    # --- rooms and members -----------------------------------------------------------------------
    async def _append(
        self,
        conn: Any,
        room_id: int,
        type_: str,
        build: Any,
        now_ms: int,
        trace: dict[str, str] | None = None,
        *,
        membership: bool = False,
    ) -> RoomEvent:
        """Take the room's next seq (row lock until commit) and store the event.
        ``membership``: a MEMBER_JOIN/LEAVE, which makes an encrypted room's rotation due."""
        due = (
            ", key_rotation_due = (key_rotation_due OR encrypted),"
            " key_changes = key_changes + (CASE WHEN encrypted THEN 1 ELSE 0 END)"
            if membership
            else ""
        )
        seq = await conn.fetchval(
            f"UPDATE rooms SET last_seq = last_seq + 1{due} WHERE id = $1 RETURNING last_seq",
            room_id,
        )
        if seq is None:
            raise LookupError(f"room {room_id} vanished")
        data: dict[str, Any] = build(seq)
        await conn.execute(
            "INSERT INTO room_events (room_id, seq, type, data, created_at_ms, trace)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            room_id,
            seq,
            type_,
            _json(data),
            now_ms,
            trace_to_column(trace),
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
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._create_room(
                conn,
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
        conn: Any,
        room_id: int,
        name: str,
        created_at_ms: int,
        member_ids: Sequence[int],
        *,
        public: bool,
        direct: bool,
        encrypted: bool = False,
    ) -> tuple[Room, list[RoomEvent]]:
        members = list(dict.fromkeys(member_ids))
        n = len(members)
        events = [
            RoomEvent(room_id, i + 1, "MEMBER_JOIN", ev.member(room_id, i + 1, u), created_at_ms)
            for i, u in enumerate(members)
        ]
        # A new room: nobody else can write to it yet, so its seqs are simply 1..n.
        await conn.execute(
            "INSERT INTO rooms (id, name, last_seq, created_at_ms, is_public, is_direct,"
            " encrypted, key_rotation_due) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            room_id,
            name,
            n,
            created_at_ms,
            public,
            direct,
            encrypted,
        )
        # A group room's first member owns it; the two of a direct room are equals.
        await conn.execute(
            "INSERT INTO room_members (room_id, user_id, joined_at_ms, role)"
            " SELECT $1, u, $3, CASE WHEN i = 1 AND NOT $4 THEN 'owner' ELSE 'member' END"
            " FROM unnest($2::bigint[]) WITH ORDINALITY AS m(u, i)",
            room_id,
            members,
            created_at_ms,
            direct,
        )
        await self._insert_events(conn, events)
        return Room(
            room_id, name, n, created_at_ms, public, direct, encrypted, 0, encrypted
        ), events

    async def open_direct_room(
        self, room_id: int, user_a: int, user_b: int, name: str, now_ms: int
    ) -> tuple[Room, list[RoomEvent]]:
        lo, hi = sorted((user_a, user_b))
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                # A concurrent opener of the same pair blocks on the pair's key until we commit,
                # then finds it taken: its new room is rolled back with the rest of its work.
                if (
                    await conn.fetchval(
                        "SELECT 1 FROM direct_rooms WHERE user_lo = $1 AND user_hi = $2", lo, hi
                    )
                    is None
                ):
                    room, events = await self._create_room(
                        conn, room_id, name, now_ms, [user_a, user_b], public=False, direct=True
                    )
                    if await conn.fetchval(
                        "INSERT INTO direct_rooms (user_lo, user_hi, room_id) VALUES ($1, $2, $3)"
                        " ON CONFLICT DO NOTHING RETURNING 1",
                        lo,
                        hi,
                        room_id,
                    ):
                        return room, events
                    raise _LostRace
        except _LostRace:
            pass
        r = await self.pool.fetchrow(
            f"SELECT {_ROOM_COLS} FROM rooms WHERE id ="
            " (SELECT room_id FROM direct_rooms WHERE user_lo = $1 AND user_hi = $2)",
            lo,
            hi,
        )
        return _room(r), []

    async def _insert_events(self, conn: Any, events: Sequence[RoomEvent]) -> None:
        if not events:
            return
        await conn.execute(
            "INSERT INTO room_events (room_id, seq, type, data, created_at_ms)"
            " SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[],"
            " $5::bigint[])",
            [e.room_id for e in events],
            [e.seq for e in events],
            [e.type for e in events],
            [_json(e.data) for e in events],
            [e.created_at_ms for e in events],
        )

    async def add_member(
        self, room_id: int, user_id: int, now_ms: int
    ) -> tuple[Room, RoomEvent | None] | None:
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                "INSERT INTO room_members (room_id, user_id, joined_at_ms)"
                " SELECT id, $2, $3 FROM rooms WHERE id = $1 ON CONFLICT DO NOTHING RETURNING 1",
                room_id,
                user_id,
                now_ms,
            )
            await conn.execute(
                "DELETE FROM room_invitations WHERE room_id = $1 AND user_id = $2", room_id, user_id
            )
            event = None
            if inserted is not None:
                event = await self._append(
                    conn,
                    room_id,
                    "MEMBER_JOIN",
                    lambda s: ev.member(room_id, s, user_id),
                    now_ms,
                    membership=True,
                )
            r = await conn.fetchrow(f"SELECT {_ROOM_COLS} FROM rooms WHERE id = $1", room_id)
        return None if r is None else (_room(r), event)

    async def remove_member(
        self, room_id: int, user_id: int, now_ms: int, removed_by: int | None = None
    ) -> RoomEvent | None:
        async with self.pool.acquire() as conn, conn.transaction():
            role = await conn.fetchval(
                "DELETE FROM room_members WHERE room_id = $1 AND user_id = $2 RETURNING role",
                room_id,
                user_id,
            )
            if role is None:
                return None
            if role == "owner":  # the longest-standing admin, else member, takes over
                await conn.execute(
                    "UPDATE room_members SET role = 'owner' WHERE (room_id, user_id) = (SELECT"
                    " room_id, user_id FROM room_members WHERE room_id = $1 ORDER BY"
                    " role <> 'admin', joined_at_ms, user_id LIMIT 1)",
                    room_id,
                )
            return await self._append(
                conn,
                room_id,
                "MEMBER_LEAVE",
                lambda s: ev.member(room_id, s, user_id, removed_by),
                now_ms,
                membership=True,
            )

    async def member_role(self, room_id: int, user_id: int) -> str | None:
        role: str | None = await self.pool.fetchval(
            "SELECT role FROM room_members WHERE room_id = $1 AND user_id = $2", room_id, user_id
        )
        return role

    async def member_roles(self, room_id: int) -> list[tuple[int, str]]:
        rows = await self.pool.fetch(
            "SELECT user_id, role FROM room_members WHERE room_id = $1"
            " ORDER BY joined_at_ms, user_id",
            room_id,
        )
        return [(r["user_id"], r["role"]) for r in rows]

    async def set_member_role(self, room_id: int, user_id: int, role: str) -> bool:
        result: str = await self.pool.execute(
            "UPDATE room_members SET role = $3 WHERE room_id = $1 AND user_id = $2",
            room_id,
            user_id,
            role,
        )
        return result != "UPDATE 0"

    async def public_rooms(self, after: int | None, limit: int) -> list[Room]:
        rows = await self.pool.fetch(
            f"SELECT {_ROOM_COLS} FROM rooms WHERE is_public AND id > $1 ORDER BY id LIMIT $2",
            after or 0,
            limit,
        )
        return [_room(r) for r in rows]

    async def shared_with(self, viewer: int, user_ids: Sequence[int]) -> set[int]:
        if not user_ids:
            return set()
        rows = await self.pool.fetch(
            "SELECT DISTINCT o.user_id FROM room_members v JOIN room_members o"
            " ON o.room_id = v.room_id WHERE v.user_id = $1 AND o.user_id = ANY($2::bigint[])",
            viewer,
            list(user_ids),
        )
        return {r["user_id"] for r in rows}

    # --- invitations -----------------------------------------------------------------------------
    async def create_invitations(
        self, room_id: int, inviter_id: int, user_ids: Sequence[int], now_ms: int
    ) -> list[int]:
        rows = await self.pool.fetch(
            "INSERT INTO room_invitations (room_id, user_id, inviter_id, created_at_ms)"
            " SELECT $1, u, $2, $4 FROM unnest($3::bigint[]) AS u WHERE NOT EXISTS"
            " (SELECT 1 FROM room_members m WHERE m.room_id = $1 AND m.user_id = u)"
            " ON CONFLICT DO NOTHING RETURNING user_id",
            room_id,
            inviter_id,
            list(dict.fromkeys(user_ids)),
            now_ms,
        )
        return [r["user_id"] for r in rows]

    async def invitations_of(self, user_id: int) -> list[Invitation]:
        rows = await self.pool.fetch(
            "SELECT i.room_id, r.name, i.user_id, i.inviter_id, i.created_at_ms"
            " FROM room_invitations i JOIN rooms r ON r.id = i.room_id"
            " WHERE i.user_id = $1 ORDER BY i.created_at_ms, i.room_id",
            user_id,
        )
        return [Invitation(*r) for r in rows]

    async def has_invitation(self, room_id: int, user_id: int) -> bool:
        r = await self.pool.fetchval(
            "SELECT 1 FROM room_invitations WHERE room_id = $1 AND user_id = $2", room_id, user_id
        )
        return r is not None

    async def delete_invitation(self, room_id: int, user_id: int) -> bool:
        r = await self.pool.fetchval(
            "DELETE FROM room_invitations WHERE room_id = $1 AND user_id = $2 RETURNING 1",
            room_id,
            user_id,
        )
        return r is not None

    async def get_room(self, room_id: int) -> Room | None:
        r = await self.pool.fetchrow(f"SELECT {_ROOM_COLS} FROM rooms WHERE id = $1", room_id)
        return None if r is None else _room(r)

    async def rooms_of(self, user_id: int) -> list[Room]:
        rows = await self.pool.fetch(
            f"SELECT {_ROOM_COLS} FROM rooms WHERE id IN"
            " (SELECT room_id FROM room_members WHERE user_id = $1) ORDER BY id",
            user_id,
        )
        return [_room(r) for r in rows]

    async def members_of(self, room_id: int) -> list[int]:
        rows = await self.pool.fetch(
            "SELECT user_id FROM room_members WHERE room_id = $1 ORDER BY joined_at_ms, user_id",
            room_id,
        )
        return [r["user_id"] for r in rows]

    async def is_member(self, room_id: int, user_id: int) -> bool:
        r = await self.pool.fetchval(
            "SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2", room_id, user_id
        )
        return r is not None

    # --- read state ------------------------------------------------------------------------------
    async def mark_read(self, user_id: int, room_id: int, seq: int) -> int:
        stored: int = await self.pool.fetchval(
            "INSERT INTO read_states (user_id, room_id, last_read_seq) VALUES ($1, $2, $3)"
            " ON CONFLICT (user_id, room_id) DO UPDATE SET last_read_seq ="
            " GREATEST(read_states.last_read_seq, excluded.last_read_seq)"
            " RETURNING last_read_seq",
            user_id,
            room_id,
            seq,
        )
        return stored

    async def set_muted(self, user_id: int, room_id: int, muted: bool) -> None:
        await self.pool.execute(
            "INSERT INTO read_states (user_id, room_id, muted) VALUES ($1, $2, $3)"
            " ON CONFLICT (user_id, room_id) DO UPDATE SET muted = excluded.muted",
            user_id,
            room_id,
            muted,
        )

    async def read_states(
        self, user_id: int, room_ids: Sequence[int], cap: int
    ) -> dict[int, ReadState]:
        if not room_ids:
            return {}
        # The counts walk room_events (key room_id, seq) and message_mentions (key user_id,
        # room_id, seq) from the read position, and stop at the cap.
        rows = await self.pool.fetch(
            "SELECT m.room_id, COALESCE(r.last_read_seq, 0) AS last_read,"
            " COALESCE(r.muted, false) AS muted,"
            " (SELECT count(*) FROM (SELECT 1 FROM room_events e WHERE e.room_id = m.room_id"
            "   AND e.seq > COALESCE(r.last_read_seq, 0) AND e.type = 'MESSAGE_CREATE'"
            "   AND e.created_at_ms >= m.joined_at_ms AND e.data::json ->> 'author_id' <> $4"
            "   LIMIT $3) u) AS unread,"
            " (SELECT count(*) FROM (SELECT 1 FROM message_mentions x WHERE x.user_id = $1"
            "   AND x.room_id = m.room_id AND x.seq > COALESCE(r.last_read_seq, 0)"
            "   LIMIT $3) n) AS mentioned"
            " FROM room_members m LEFT JOIN read_states r"
            " ON r.user_id = m.user_id AND r.room_id = m.room_id"
            " WHERE m.user_id = $1 AND m.room_id = ANY($2::bigint[])",
            user_id,
            list(room_ids),
            cap,
            str(user_id),
        )
        return {
            r["room_id"]: ReadState(
                r["room_id"], r["last_read"], r["unread"], r["mentioned"], r["muted"]
            )
            for r in rows
        }

    async def mentions_of(self, message_ids: Sequence[int]) -> dict[int, tuple[int, ...]]:
        if not message_ids:
            return {}
        rows = await self.pool.fetch(
            "SELECT message_id, user_id FROM message_mentions"
            " WHERE message_id = ANY($1::bigint[]) ORDER BY message_id, user_id",
            list(message_ids),
        )
        out: dict[int, list[int]] = {}
        for r in rows:
            out.setdefault(r["message_id"], []).append(r["user_id"])
        return {k: tuple(v) for k, v in out.items()}

    # --- messages --------------------------------------------------------------------------------
    async def insert_messages(self, rows: Sequence[NewMessage]) -> list[SendOutcome]:
        """One statement for a batch of one room without mentions or attachments
        (``_insert_one_room``), else (several rooms, mentions, attachments, or that statement
        lost a race) the general path in one transaction (``_insert_rooms``)."""
        if not rows:
            return []
        # Same (author, nonce) twice in one batch: the first is the one, later ones copy it.
        first: dict[tuple[int, str], int] = {}
        for i, r in enumerate(rows):
            first.setdefault((r.author_id, r.nonce), i)
        unique = [r for i, r in enumerate(rows) if first[(r.author_id, r.nonce)] == i]
        by_room: dict[int, list[NewMessage]] = {}
        for r in unique:
            by_room.setdefault(r.room_id, []).append(r)
        # Mentions and attachments take statements of their own: the general path.
        plain = not any(r.mentions or r.attachments for r in unique)
        if not plain or len(by_room) > _ONE_STATEMENT_ROOMS:
            by_id = await self._insert_rooms(unique)
        else:
            # One statement per room, concurrently (each its own transaction: no outcome
            # depends on another room's); a room whose statement gave up takes the general path.
            parts = await asyncio.gather(*(self._insert_one_room(rs) for rs in by_room.values()))
            by_id = {}
            left: list[NewMessage] = []
            for rs, part in zip(by_room.values(), parts, strict=True):
                if part is None:
                    left += rs
                else:
                    by_id.update(part)
            if left:
                by_id.update(await self._insert_rooms(left))
        out: list[SendOutcome] = []
        for r in rows:
            owner = rows[first[(r.author_id, r.nonce)]]
            outcome = by_id[owner.id]
            if owner is not r and outcome.status == "created":
                outcome = SendOutcome("duplicate", outcome.message)  # one event, one owner
            out.append(outcome)
        return out

    async def _insert_one_room(self, unique: Sequence[NewMessage]) -> dict[int, SendOutcome] | None:
        """Rows of one room in one statement (``_ONE_ROOM_INSERT``); None when it lost a race
        with a concurrent insert of the same (author, nonce), or deadlocked: nothing was
        written, the general path decides."""
        room_id = unique[0].room_id
        split = [
            _around_seq(
                ev.message_create(
                    Message(r.id, room_id, 0, r.author_id, r.content, r.nonce, r.created_at_ms),
                    0,
                )
            )
            for r in unique
        ]
        async with self.pool.acquire() as conn:
            try:
                numbered = await conn.fetch(
                    _ONE_ROOM_INSERT,
                    room_id,
                    [r.id for r in unique],
                    [r.author_id for r in unique],
                    [r.content for r in unique],
                    [r.nonce for r in unique],
                    [r.created_at_ms for r in unique],
                    [h for h, _ in split],
                    [t for _, t in split],
                    [trace_to_column(r.trace) for r in unique],
                )
            except (asyncpg.DivisionByZeroError, asyncpg.DeadlockDetectedError):
                return None
            by_id: dict[int, SendOutcome] = {}
            seqs = {rec["id"]: rec["seq"] for rec in numbered}
            for r in unique:
                seq = seqs.get(r.id)
                if seq is None:
                    continue
                msg = Message(r.id, room_id, seq, r.author_id, r.content, r.nonce, r.created_at_ms)
                event = RoomEvent(
                    room_id,
                    seq,
                    "MESSAGE_CREATE",
                    ev.message_create(msg, seq),
                    r.created_at_ms,
                    r.trace,
                )
                by_id[r.id] = SendOutcome("created", msg, event)
            missing = [r for r in unique if r.id not in seqs]
            if missing:
                await self._explain_missing(conn, missing, by_id)
        return by_id

    async def _insert_rooms(self, unique: Sequence[NewMessage]) -> dict[int, SendOutcome]:
        """The general path, four set-based statements per batch whatever its size:

        1. insert every row whose author is a member, seq 0 for now, skipping (author, nonce)
           conflicts; a conflict with an uncommitted concurrent insert waits for it, so what is
           skipped is exactly what exists;
        2. lock the rooms that got rows, in id order;
        3. bump each room's last_seq by its count of inserted rows: the seqs are ours;
        4. set the rows' seqs and insert their events.
        Seqs are taken only for rows really inserted, so a skipped row leaves no gap.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetch(
                "INSERT INTO messages (id, room_id, seq, author_id, content, nonce, created_at_ms)"
                " SELECT i.id, i.room_id, 0, i.author_id, i.content, i.nonce, i.created_at_ms"
                " FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],"
                " $6::bigint[]) WITH ORDINALITY AS i(id, room_id, author_id, content, nonce,"
                " created_at_ms, ord)"
                " WHERE EXISTS (SELECT 1 FROM room_members m"
                " WHERE m.room_id = i.room_id AND m.user_id = i.author_id)"
                # encryption is fixed at creation: no lock is needed to read it
                " AND NOT EXISTS (SELECT 1 FROM rooms e WHERE e.id = i.room_id AND e.encrypted)"
                " ORDER BY i.ord"
                " ON CONFLICT (author_id, nonce) DO NOTHING RETURNING id",
                [r.id for r in unique],
                [r.room_id for r in unique],
                [r.author_id for r in unique],
                [r.content for r in unique],
                [r.nonce for r in unique],
                [r.created_at_ms for r in unique],
            )
            got = {rec["id"] for rec in inserted}
            created = [r for r in unique if r.id in got]  # batch order = seq order per room

            counts: dict[int, int] = {}
            for r in created:
                counts[r.room_id] = counts.get(r.room_id, 0) + 1
            next_seq: dict[int, int] = {}
            if counts:
                room_ids = sorted(counts)
                await conn.execute(
                    "SELECT 1 FROM rooms WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
                    room_ids,
                )
                bumped = await conn.fetch(
                    "UPDATE rooms SET last_seq = rooms.last_seq + c.n"
                    " FROM unnest($1::bigint[], $2::bigint[]) AS c(id, n)"
                    " WHERE rooms.id = c.id RETURNING rooms.id, rooms.last_seq",
                    room_ids,
                    [counts[k] for k in room_ids],
                )
                for b in bumped:
                    next_seq[b["id"]] = b["last_seq"] - counts[b["id"]] + 1

            seqs: dict[int, int] = {}
            for r in created:
                seqs[r.id] = next_seq[r.room_id]
                next_seq[r.room_id] += 1
            mentions = await self._insert_mentions(conn, created, seqs)

            by_id: dict[int, SendOutcome] = {}
            events: list[RoomEvent] = []
            for r in created:
                seq = seqs[r.id]
                msg = Message(
                    r.id,
                    r.room_id,
                    seq,
                    r.author_id,
                    r.content,
                    r.nonce,
                    r.created_at_ms,
                    mentions=mentions.get(r.id, ()),
                    attachments=r.attachments,
                )
                event = RoomEvent(
                    r.room_id,
                    seq,
                    "MESSAGE_CREATE",
                    ev.message_create(msg, seq),
                    r.created_at_ms,
                    r.trace,
                )
                events.append(event)
                by_id[r.id] = SendOutcome("created", msg, event)
            if events:
                await conn.execute(
                    "WITH s AS (UPDATE messages SET seq = v.seq"
                    " FROM unnest($1::bigint[], $2::bigint[]) AS v(id, seq)"
                    " WHERE messages.id = v.id)"
                    " INSERT INTO room_events (room_id, seq, type, data, created_at_ms, trace)"
                    " SELECT room_id, seq, 'MESSAGE_CREATE', data, created_at_ms, trace"
                    " FROM unnest($3::bigint[], $2::bigint[], $4::text[], $5::bigint[],"
                    " $6::text[]) AS e(room_id, seq, data, created_at_ms, trace)",
                    [r.id for r in created],
                    [e.seq for e in events],
                    [e.room_id for e in events],
                    [_json(e.data) for e in events],
                    [e.created_at_ms for e in events],
                    # NULL elements when tracing is off: the array costs a few bytes per row.
                    [trace_to_column(e.trace) for e in events],
                )

            await self._attach(conn, created)
            missing = [r for r in unique if r.id not in got]
            if missing:
                await self._explain_missing(conn, missing, by_id)
        return by_id

    async def _insert_mentions(
        self, conn: Any, created: Sequence[NewMessage], seqs: dict[int, int]
    ) -> dict[int, tuple[int, ...]]:
        """Mention rows for the members each created message mentions (one statement, only
        when some message mentions anyone); message id -> those members."""
        rows = [(u, r.room_id, seqs[r.id], r.id) for r in created for u in r.mentions]
        if not rows:
            return {}
        stored = await conn.fetch(
            "INSERT INTO message_mentions (user_id, room_id, seq, message_id)"
            " SELECT u.user_id, u.room_id, u.seq, u.message_id FROM unnest($1::bigint[],"
            " $2::bigint[], $3::bigint[], $4::bigint[]) AS u(user_id, room_id, seq, message_id)"
            " WHERE EXISTS (SELECT 1 FROM room_members m"
            " WHERE m.room_id = u.room_id AND m.user_id = u.user_id)"
            " ON CONFLICT DO NOTHING RETURNING message_id, user_id",
            *(list(col) for col in zip(*rows, strict=True)),
        )
        out: dict[int, list[int]] = {}
        for rec in stored:
            out.setdefault(rec["message_id"], []).append(rec["user_id"])
        return {k: tuple(sorted(v)) for k, v in out.items()}

    async def _attach(self, conn: Any, created: Sequence[NewMessage]) -> None:
        """Attach the new messages' files, all or none (AttachConflict rolls the batch back)."""
        rows = [(a.id, r, pos) for r in created for pos, a in enumerate(r.attachments)]
        if not rows:
            return
        attached = await conn.fetch(
            "UPDATE uploads u SET message_id = a.message_id, position = a.position"
            " FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::int[],"
            " $6::bigint[]) AS a(id, message_id, owner_id, room_id, position, now_ms)"
            " WHERE u.id = a.id AND u.owner_id = a.owner_id AND u.room_id = a.room_id"
            " AND u.state = 'ready' AND u.message_id IS NULL AND u.deleted_at_ms IS NULL"
            " AND u.expires_at_ms > a.now_ms RETURNING u.id",
            [upload_id for upload_id, _, _ in rows],
            [r.id for _, r, _ in rows],
            [r.author_id for _, r, _ in rows],
            [r.room_id for _, r, _ in rows],
            [pos for _, _, pos in rows],
            [r.created_at_ms for _, r, _ in rows],
        )
        if len(attached) != len(rows):
            done = {rec["id"] for rec in attached}
            refused = [upload_id for upload_id, _, _ in rows if upload_id not in done]
            raise AttachConflict(f"uploads {refused} can't be attached")

    async def _explain_missing(
        self, conn: Any, missing: Sequence[NewMessage], by_id: dict[int, SendOutcome]
    ) -> None:
        """Rows not inserted: an existing (author, nonce), else no room, else not a member,
        else an encrypted room."""
        found = await conn.fetch(
            f"SELECT {_MSG_COLS} FROM messages WHERE (author_id, nonce) IN"
            " (SELECT * FROM unnest($1::bigint[], $2::text[]))",
            [r.author_id for r in missing],
            [r.nonce for r in missing],
        )
        existing = {(f["author_id"], f["nonce"]): _message(f) for f in found}
        rooms = {
            (rec["room_id"], rec["author_id"]): rec["member"]
            for rec in await conn.fetch(
                "SELECT i.room_id, i.author_id, EXISTS (SELECT 1 FROM room_members m"
                " WHERE m.room_id = i.room_id AND m.user_id = i.author_id) AS member"
                " FROM unnest($1::bigint[], $2::bigint[]) AS i(room_id, author_id)"
                " JOIN rooms r ON r.id = i.room_id",
                [r.room_id for r in missing],
                [r.author_id for r in missing],
            )
        }
        for r in missing:
            msg = existing.get((r.author_id, r.nonce))
            member = rooms.get((r.room_id, r.author_id))
            if msg is not None:
                by_id[r.id] = SendOutcome("duplicate", msg)
            elif member is None:
                by_id[r.id] = SendOutcome("no_room")
            elif not member:
                by_id[r.id] = SendOutcome("not_member")
            else:
                by_id[r.id] = SendOutcome("encrypted_room")

    async def insert_encrypted_message(self, row: NewMessage) -> SendOutcome:
        """The room row is locked first: its epoch, due flag and membership are read as of the
        lock, so a MEMBER_LEAVE committed before is seen and one after comes after us."""
        if row.encrypted is None:
            raise ValueError("insert_encrypted_message needs row.encrypted")
        async with self.pool.acquire() as conn, conn.transaction():
            room = await conn.fetchrow(
                "SELECT encrypted, key_epoch, key_rotation_due,"
                " EXISTS (SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2)"
                " AS member FROM rooms WHERE id = $1 FOR UPDATE",
                row.room_id,
                row.author_id,
            )
            existing = await self._by_nonce(conn, row.author_id, row.nonce)
            if existing is not None:
                return SendOutcome("duplicate", existing)
            if room is None:
                return SendOutcome("no_room")
            if not room["member"]:
                return SendOutcome("not_member")
            refused = epoch_refusal(
                room["encrypted"], room["key_epoch"], room["key_rotation_due"], row.encrypted
            )
            if refused is not None:
                return SendOutcome(refused)
            inserted = await conn.fetchval(
                "INSERT INTO messages (id, room_id, seq, author_id, content, nonce,"
                " created_at_ms, e2e) VALUES ($1, $2, 0, $3, '', $4, $5, $6)"
                " ON CONFLICT (author_id, nonce) DO NOTHING RETURNING id",
                row.id,
                row.room_id,
                row.author_id,
                row.nonce,
                row.created_at_ms,
                e2e_to_column(row.encrypted),
            )
            if inserted is None:  # a concurrent send of the same nonce committed first
                first = await self._by_nonce(conn, row.author_id, row.nonce)
                return SendOutcome("duplicate", first)
            msg = Message(
                row.id,
                row.room_id,
                0,
                row.author_id,
                "",
                row.nonce,
                row.created_at_ms,
                encrypted=row.encrypted,
            )
            event = await self._append(
                conn,
                row.room_id,
                "MESSAGE_CREATE",
                lambda s: ev.message_create(msg, s),
                row.created_at_ms,
                row.trace,
            )
            await conn.execute("UPDATE messages SET seq = $2 WHERE id = $1", row.id, event.seq)
        return SendOutcome("created", msgspec.structs.replace(msg, seq=event.seq), event)

    async def _by_nonce(self, conn: Any, author_id: int, nonce: str) -> Message | None:
        r = await conn.fetchrow(
            f"SELECT {_MSG_COLS} FROM messages WHERE author_id = $1 AND nonce = $2",
            author_id,
            nonce,
        )
        return None if r is None else _message(r)

    async def edit_encrypted_message(
        self, message_id: int, encrypted: dict[str, Any], edited_at_ms: int
    ) -> EncryptedEdit:
        async with self.pool.acquire() as conn, conn.transaction():
            room = await conn.fetchrow(
                "SELECT encrypted, key_epoch, key_rotation_due FROM rooms WHERE id ="
                " (SELECT room_id FROM messages WHERE id = $1 AND NOT deleted) FOR UPDATE",
                message_id,
            )
            if room is None:
                return EncryptedEdit("no_room")
            refused = epoch_refusal(
                room["encrypted"], room["key_epoch"], room["key_rotation_due"], encrypted
            )
            if refused is not None:
                return EncryptedEdit(refused)
            r = await conn.fetchrow(
                "UPDATE messages SET e2e = $2, edited_at_ms = $3 WHERE id = $1 AND NOT deleted"
                f" RETURNING {_MSG_COLS}",
                message_id,
                e2e_to_column(encrypted),
                edited_at_ms,
            )
            if r is None:
                return EncryptedEdit("no_room")
            msg = _message(r)
            event = await self._append(
                conn,
                msg.room_id,
                "MESSAGE_UPDATE",
                lambda s: ev.message_update(
                    msg.room_id, s, message_id, "", edited_at_ms, encrypted
                ),
                edited_at_ms,
            )
        return EncryptedEdit("ok", msg, event)

    async def get_message(self, message_id: int) -> Message | None:
        r = await self.pool.fetchrow(f"SELECT {_MSG_COLS} FROM messages WHERE id = $1", message_id)
        return None if r is None else _message(r)

    async def edit_message(
        self, message_id: int, content: str, edited_at_ms: int
    ) -> tuple[Message, RoomEvent] | None:
        async with self.pool.acquire() as conn, conn.transaction():
            r = await conn.fetchrow(
                "UPDATE messages SET content = $2, edited_at_ms = $3 WHERE id = $1 AND NOT deleted"
                f" RETURNING {_MSG_COLS}",
                message_id,
                content,
                edited_at_ms,
            )
            if r is None:
                return None
            msg = _message(r)
            event = await self._append(
                conn,
                msg.room_id,
                "MESSAGE_UPDATE",
                lambda s: ev.message_update(msg.room_id, s, message_id, content, edited_at_ms),
                edited_at_ms,
            )
        return msg, event

    async def delete_message(self, message_id: int, now_ms: int) -> RoomEvent | None:
        async with self.pool.acquire() as conn, conn.transaction():
            room_id = await conn.fetchval(
                "UPDATE messages SET content = '', e2e = NULL, deleted = true"
                " WHERE id = $1 AND NOT deleted"
                " RETURNING room_id",
                message_id,
            )
            if room_id is None:
                return None
            # A tombstone keeps no reactions: they would describe content that is gone.
            await conn.execute("DELETE FROM reactions WHERE message_id = $1", message_id)
            # Nor files: the sweeper removes their objects.
            await conn.execute(
                "UPDATE uploads SET deleted_at_ms = $2 WHERE message_id = $1"
                " AND deleted_at_ms IS NULL",
                message_id,
                now_ms,
            )
            return await self._append(
                conn,
                room_id,
                "MESSAGE_DELETE",
                lambda s: ev.message_delete(room_id, s, message_id),
                now_ms,
            )

    async def add_reaction(
        self, message_id: int, user_id: int, emoji: str, now_ms: int
    ) -> RoomEvent | None:
        async with self.pool.acquire() as conn, conn.transaction():
            # FOR SHARE: a concurrent delete waits for us (or we for it), so no reaction is ever
            # added to a tombstone.
            room_id = await conn.fetchval(
                "SELECT room_id FROM messages WHERE id = $1 AND NOT deleted FOR SHARE", message_id
            )
            if room_id is None:
                return None
            added = await conn.fetchval(
                "INSERT INTO reactions (message_id, emoji, user_id, created_at_ms)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
                message_id,
                emoji,
                user_id,
                now_ms,
            )
            if added is None:
                return None
            return await self._append(
                conn,
                room_id,
                "REACTION_ADD",
                lambda s: ev.reaction(room_id, s, message_id, user_id, emoji),
                now_ms,
            )

    async def remove_reaction(
        self, message_id: int, user_id: int, emoji: str, now_ms: int
    ) -> RoomEvent | None:
        async with self.pool.acquire() as conn, conn.transaction():
            room_id = await conn.fetchval(
                "DELETE FROM reactions r USING messages m"
                " WHERE r.message_id = $1 AND r.emoji = $2 AND r.user_id = $3 AND m.id = $1"
                " RETURNING m.room_id",
                message_id,
                emoji,
                user_id,
            )
            if room_id is None:
                return None
            return await self._append(
                conn,
                room_id,
                "REACTION_REMOVE",
                lambda s: ev.reaction(room_id, s, message_id, user_id, emoji),
                now_ms,
            )

    async def list_messages(
        self, room_id: int, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        base = f"SELECT {_MSG_COLS} FROM messages WHERE room_id = $1"
        if after is not None:
            rows = await self.pool.fetch(
                base + " AND id > $2 ORDER BY id LIMIT $3", room_id, after, limit
            )
        elif before is not None:
            rows = await self.pool.fetch(
                base + " AND id < $2 ORDER BY id DESC LIMIT $3", room_id, before, limit
            )
        else:
            rows = await self.pool.fetch(base + " ORDER BY id DESC LIMIT $2", room_id, limit)
        return [_message(r) for r in rows]

    async def reaction_counts(
        self, message_ids: Sequence[int], viewer: int
    ) -> dict[int, tuple[ReactionCount, ...]]:
        if not message_ids:
            return {}
        rows = await self.pool.fetch(
            "SELECT message_id, emoji, count(*) AS n, bool_or(user_id = $2) AS me,"
            " min(created_at_ms) AS first FROM reactions WHERE message_id = ANY($1::bigint[])"
            " GROUP BY message_id, emoji ORDER BY message_id, first, emoji",
            list(message_ids),
            viewer,
        )
        out: dict[int, list[ReactionCount]] = {}
        for r in rows:
            out.setdefault(r["message_id"], []).append(ReactionCount(r["emoji"], r["n"], r["me"]))
        return {k: tuple(v) for k, v in out.items()}

    async def find_message(self, author_id: int, nonce: str) -> Message | None:
        r = await self.pool.fetchrow(
            f"SELECT {_MSG_COLS} FROM messages WHERE author_id = $1 AND nonce = $2",
            author_id,
            nonce,
        )
        return None if r is None else _message(r)

    async def attachments_of(self, message_ids: Sequence[int]) -> dict[int, tuple[Attachment, ...]]:
        if not message_ids:
            return {}
        rows = await self.pool.fetch(
            f"SELECT message_id, {_ATTACHMENT_COLS} FROM uploads"
            " WHERE message_id = ANY($1::bigint[]) AND deleted_at_ms IS NULL"
            " ORDER BY message_id, position",
            list(message_ids),
        )
        out: dict[int, list[Attachment]] = {}
        for r in rows:
            mid, *cols = r.values()
            out.setdefault(mid, []).append(Attachment(*cols))
        return {k: tuple(v) for k, v in out.items()}

    # --- uploads ---------------------------------------------------------------------------------
    async def create_upload(self, upload: Upload, quota_bytes: int) -> tuple[bool, int]:
        u = upload
        async with self.pool.acquire() as conn, conn.transaction():
            # One owner's uploads queue on this lock: no two of them pass the quota together.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", u.owner_id)
            used = await conn.fetchval(
                "SELECT coalesce(sum(size), 0) FROM uploads WHERE owner_id = $1"
                " AND deleted_at_ms IS NULL AND state IN ('pending', 'ready')",
                u.owner_id,
            )
            if used + u.size > quota_bytes:
                return False, int(used)
            values = upload_values(u)
            marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
            await conn.execute(f"INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES ({marks})", *values)
        return True, int(used)

    async def get_uploads(self, upload_ids: Sequence[int]) -> dict[int, Upload]:
        if not upload_ids:
            return {}
        rows = await self.pool.fetch(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ANY($1::bigint[])", list(upload_ids)
        )
        return {r["id"]: _upload(r) for r in rows}

    async def finish_upload(
        self,
        upload_id: int,
        content_type: str,
        size: int,
        width: int | None,
        height: int | None,
        thumb: ThumbState,
    ) -> bool:
        result: str = await self.pool.execute(
            "UPDATE uploads SET state = 'ready', content_type = $2, size = $3, width = $4,"
            " height = $5, thumb = $6 WHERE id = $1 AND state = 'pending'",
            upload_id,
            content_type,
            size,
            width,
            height,
            thumb,
        )
        return result != "UPDATE 0"

    async def reject_upload(self, upload_id: int, reason: str, now_ms: int) -> None:
        await self.pool.execute(
            "UPDATE uploads SET state = 'rejected', reason = $2, expires_at_ms = $3"
            " WHERE id = $1 AND state = 'pending'",
            upload_id,
            reason,
            now_ms,
        )

    async def claim_thumbnails(self, now_ms: int, lease_ms: int, limit: int) -> list[Upload]:
        rows = await self.pool.fetch(
            "UPDATE uploads SET thumb_claimed_until_ms = $1 WHERE id IN (SELECT id FROM uploads"
            " WHERE thumb = 'pending' AND state = 'ready' AND deleted_at_ms IS NULL"
            " AND thumb_claimed_until_ms < $2 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)"
            f" RETURNING {UPLOAD_COLUMNS}",
            now_ms + lease_ms,
            now_ms,
            limit,
        )
        return [_upload(r) for r in rows]

    async def finish_thumbnail(self, upload_id: int, state: ThumbState) -> None:
        await self.pool.execute(
            "UPDATE uploads SET thumb = $2 WHERE id = $1 AND thumb = 'pending'", upload_id, state
        )

    async def uploads_to_sweep(self, now_ms: int, limit: int) -> list[Upload]:
        rows = await self.pool.fetch(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE message_id IS NULL AND expires_at_ms <= $1"
            f" UNION SELECT {UPLOAD_COLUMNS} FROM uploads WHERE deleted_at_ms IS NOT NULL"
            f" UNION SELECT {UPLOAD_COLUMNS} FROM uploads WHERE message_id IS NOT NULL"
            " AND NOT staging_swept AND put_expires_at_ms <= $1"
            " ORDER BY id LIMIT $2",
            now_ms,
            limit,
        )
        return [_upload(r) for r in rows]

    async def forget_uploads(self, upload_ids: Sequence[int]) -> None:
        if upload_ids:
            await self.pool.execute(
                "DELETE FROM uploads WHERE id = ANY($1::bigint[])"
                " AND (message_id IS NULL OR deleted_at_ms IS NOT NULL)",
                list(upload_ids),
            )

    async def mark_staging_swept(self, upload_ids: Sequence[int]) -> None:
        if upload_ids:
            await self.pool.execute(
                "UPDATE uploads SET staging_swept = true WHERE id = ANY($1::bigint[])",
                list(upload_ids),
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
        async with self.pool.acquire() as conn, conn.transaction():
            # The room's lock orders us against sends, joins and leaves of the room.
            room = await conn.fetchrow(
                "SELECT encrypted, key_epoch, key_changes FROM rooms WHERE id = $1 FOR UPDATE",
                room_id,
            )
            members = {
                r["user_id"]
                for r in await conn.fetch(
                    "SELECT user_id FROM room_members WHERE room_id = $1", room_id
                )
            }
            status = rotation_status(
                None
                if room is None
                else (room["encrypted"], room["key_epoch"], room["key_changes"]),
                actor,
                members,
                epoch,
                member_ids,
                changes,
            )
            if status != "ok":
                return status
            await self._insert_keys(conn, keys, now_ms)
            await conn.execute(
                "UPDATE rooms SET key_epoch = $2, key_rotation_due = false WHERE id = $1",
                room_id,
                epoch,
            )
        return "ok"

    async def _insert_keys(self, conn: Any, keys: Sequence[SealedKey], now_ms: int) -> int:
        if not keys:
            return 0
        rows = await conn.fetch(
            f"INSERT INTO room_keys ({_KEY_COLS}, created_at_ms) SELECT *, $10::bigint FROM"
            " unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bytea[], $5::bigint[],"
            " $6::bigint[], $7::bytea[], $8::bytea[], $9::bytea[])"
            " ON CONFLICT DO NOTHING RETURNING 1",
            *_key_columns(keys),
            now_ms,
        )
        return len(rows)

    async def add_room_keys(self, keys: Sequence[SealedKey], now_ms: int) -> int:
        async with self.pool.acquire() as conn:
            return await self._insert_keys(conn, keys, now_ms)

    async def mark_key_changes(self, user_id: int) -> int:
        result: str = await self.pool.execute(
            "UPDATE rooms SET key_rotation_due = true, key_changes = key_changes + 1"
            " WHERE encrypted AND id IN (SELECT room_id FROM room_members WHERE user_id = $1)",
            user_id,
        )
        return int(result.split()[-1])

    async def room_keys(
        self, room_id: int, user_id: int, device_id: bytes, after_epoch: int, limit: int
    ) -> list[SealedKey]:
        rows = await self.pool.fetch(
            f"SELECT {_KEY_COLS} FROM room_keys WHERE room_id = $1 AND user_id = $2"
            " AND device_id = $3 AND epoch > $4 ORDER BY epoch LIMIT $5",
            room_id,
            user_id,
            device_id,
            after_epoch,
            limit,
        )
        return [_sealed_key(r) for r in rows]

    async def room_key_holders(self, room_id: int, epoch: int) -> set[tuple[int, bytes]]:
        rows = await self.pool.fetch(
            "SELECT user_id, device_id FROM room_keys WHERE room_id = $1 AND epoch = $2",
            room_id,
            epoch,
        )
        return {(r["user_id"], bytes(r["device_id"])) for r in rows}

    # --- room events and the outbox --------------------------------------------------------------
    async def events_after(self, room_id: int, after_seq: int, limit: int) -> list[RoomEvent]:
        rows = await self.pool.fetch(
            f"SELECT {_EVENT_COLS} FROM room_events WHERE room_id = $1 AND seq > $2"
            " ORDER BY seq LIMIT $3",
            room_id,
            after_seq,
            limit,
        )
        return [_event(r) for r in rows]

    async def pending_events(self, created_before_ms: int, limit: int) -> list[RoomEvent]:
        rows = await self.pool.fetch(
            f"SELECT {_EVENT_COLS} FROM room_events"
            " WHERE published_at_ms IS NULL AND created_at_ms < $1 ORDER BY room_id, seq LIMIT $2",
            created_before_ms,
            limit,
        )
        return [_event(r) for r in rows]

    async def mark_published(self, keys: Sequence[tuple[int, int]]) -> None:
        if not keys:
            return
        await self.pool.execute(
            f"UPDATE room_events e SET published_at_ms = {_DB_NOW_MS}"
            " FROM unnest($1::bigint[], $2::bigint[]) AS k(room_id, seq)"
            " WHERE e.room_id = k.room_id AND e.seq = k.seq AND e.published_at_ms IS NULL",
            [k[0] for k in keys],
            [k[1] for k in keys],
        )

    async def acquire_lease(self, name: str, owner: str, ttl_ms: int) -> bool:
        r = await self.pool.fetchval(
            "INSERT INTO leases (name, owner, expires_at_ms)"
            f" VALUES ($1, $2, {_DB_NOW_MS} + $3::bigint)"
            " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
            " expires_at_ms = excluded.expires_at_ms"
            f" WHERE leases.owner = excluded.owner OR leases.expires_at_ms <= {_DB_NOW_MS}"
            " RETURNING 1",
            name,
            owner,
            ttl_ms,
        )
        return r is not None
