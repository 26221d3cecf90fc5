"""KeyDirectory on the PostgreSQL Store's pool.

The version compare-and-set is one statement: the insert happens only when the user's highest
version is ``version - 1``, and the primary key (user_id, version) makes the second of two
concurrent inserts of one version conflict (it waits for the first to commit, then does
nothing)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shardchat.keydirectory import DeviceListEntry, DeviceProposal

if TYPE_CHECKING:
    from shardchat.adapters.pg_store import PgStore

_LIST_COLS = "user_id, version, body, signature, created_at_ms"
_PROPOSAL_COLS = "user_id, device_id, body, signature, created_at_ms"


def _entry(r: Any) -> DeviceListEntry:
    return DeviceListEntry(
        r["user_id"], r["version"], bytes(r["body"]), bytes(r["signature"]), r["created_at_ms"]
    )


class PgKeyDirectory:
    def __init__(self, store: PgStore) -> None:
        self._store = store

    async def append_device_list(
        self, user_id: int, version: int, body: bytes, signature: bytes, now_ms: int
    ) -> bool:
        r = await self._store.pool.fetchval(
            f"INSERT INTO device_lists ({_LIST_COLS}) SELECT $1, $2::bigint, $3, $4, $5"
            " WHERE (SELECT coalesce(max(version), 0) FROM device_lists WHERE user_id = $1)"
            " = $2::bigint - 1 ON CONFLICT DO NOTHING RETURNING 1",
            user_id,
            version,
            body,
            signature,
            now_ms,
        )
        return r is not None

    async def device_lists(
        self, user_id: int, after_version: int = 0, limit: int = 1000
    ) -> list[DeviceListEntry]:
        rows = await self._store.pool.fetch(
            f"SELECT {_LIST_COLS} FROM device_lists WHERE user_id = $1 AND version > $2"
            " ORDER BY version LIMIT $3",
            user_id,
            after_version,
            limit,
        )
        return [_entry(r) for r in rows]

    async def heads(self, user_ids: Sequence[int]) -> dict[int, DeviceListEntry]:
        if not user_ids:
            return {}
        rows = await self._store.pool.fetch(
            f"SELECT DISTINCT ON (user_id) {_LIST_COLS} FROM device_lists"
            " WHERE user_id = ANY($1::bigint[]) ORDER BY user_id, version DESC",
            list(user_ids),
        )
        return {r["user_id"]: _entry(r) for r in rows}

    async def put_proposal(
        self,
        user_id: int,
        device_id: bytes,
        body: bytes,
        signature: bytes,
        now_ms: int,
        keep: int,
    ) -> None:
        async with self._store.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO device_proposals ({_PROPOSAL_COLS}) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (user_id, device_id) DO UPDATE SET body = excluded.body,"
                " signature = excluded.signature, created_at_ms = excluded.created_at_ms",
                user_id,
                device_id,
                body,
                signature,
                now_ms,
            )
            await conn.execute(
                "DELETE FROM device_proposals WHERE user_id = $1 AND device_id NOT IN"
                " (SELECT device_id FROM device_proposals WHERE user_id = $1"
                " ORDER BY created_at_ms DESC, device_id DESC LIMIT $2)",
                user_id,
                keep,
            )

    async def proposals(self, user_id: int) -> list[DeviceProposal]:
        rows = await self._store.pool.fetch(
            f"SELECT {_PROPOSAL_COLS} FROM device_proposals WHERE user_id = $1"
            " ORDER BY created_at_ms, device_id",
            user_id,
        )
        return [
            DeviceProposal(
                r["user_id"],
                bytes(r["device_id"]),
                bytes(r["body"]),
                bytes(r["signature"]),
                r["created_at_ms"],
            )
            for r in rows
        ]

    async def drop_proposals(self, user_id: int, device_ids: Sequence[bytes]) -> None:
        if not device_ids:
            return
        await self._store.pool.execute(
            "DELETE FROM device_proposals WHERE user_id = $1 AND device_id = ANY($2::bytea[])",
            user_id,
            list(device_ids),
        )
