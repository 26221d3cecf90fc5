"""KeyDirectory on the SQLite Store's connection (its lock and ``BEGIN IMMEDIATE`` transactions:
one writer at a time, across processes sharing the file, so the version compare-and-set holds)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shardchat.keydirectory import DeviceListEntry, DeviceProposal

if TYPE_CHECKING:
    from shardchat.adapters.sqlite_store import SqliteStore

_LIST_COLS = "user_id, version, body, signature, created_at_ms"
_PROPOSAL_COLS = "user_id, device_id, body, signature, created_at_ms"


def _entry(r: Sequence[Any]) -> DeviceListEntry:
    return DeviceListEntry(int(r[0]), int(r[1]), bytes(r[2]), bytes(r[3]), int(r[4]))


class SqliteKeyDirectory:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def append_device_list(
        self, user_id: int, version: int, body: bytes, signature: bytes, now_ms: int
    ) -> bool:
        async with self._store.transaction() as db:
            async with db.execute(
                "SELECT coalesce(max(version), 0) FROM device_lists WHERE user_id = ?", (user_id,)
            ) as cur:
                row = await cur.fetchone()
            assert row is not None
            if int(row[0]) != version - 1:
                return False
            await db.execute(
                f"INSERT INTO device_lists ({_LIST_COLS}) VALUES (?, ?, ?, ?, ?)",
                (user_id, version, body, signature, now_ms),
            )
        return True

    async def device_lists(
        self, user_id: int, after_version: int = 0, limit: int = 1000
    ) -> list[DeviceListEntry]:
        rows = await self._store.fetch_all(
            f"SELECT {_LIST_COLS} FROM device_lists WHERE user_id = ? AND version > ?"
            " ORDER BY version LIMIT ?",
            (user_id, after_version, limit),
        )
        return [_entry(r) for r in rows]

    async def heads(self, user_ids: Sequence[int]) -> dict[int, DeviceListEntry]:
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = await self._store.fetch_all(
            f"SELECT {_LIST_COLS} FROM device_lists d WHERE user_id IN ({marks}) AND version ="
            " (SELECT max(version) FROM device_lists m WHERE m.user_id = d.user_id)",
            ids,
        )
        return {int(r[0]): _entry(r) for r in rows}

    async def put_proposal(
        self,
        user_id: int,
        device_id: bytes,
        body: bytes,
        signature: bytes,
        now_ms: int,
        keep: int,
    ) -> None:
        async with self._store.transaction() as db:
            await db.execute(
                f"INSERT INTO device_proposals ({_PROPOSAL_COLS}) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, device_id) DO UPDATE SET body = excluded.body,"
                " signature = excluded.signature, created_at_ms = excluded.created_at_ms",
                (user_id, device_id, body, signature, now_ms),
            )
            await db.execute(
                "DELETE FROM device_proposals WHERE user_id = ? AND device_id NOT IN"
                " (SELECT device_id FROM device_proposals WHERE user_id = ?"
                " ORDER BY created_at_ms DESC, device_id DESC LIMIT ?)",
                (user_id, user_id, keep),
            )

    async def proposals(self, user_id: int) -> list[DeviceProposal]:
        rows = await self._store.fetch_all(
            f"SELECT {_PROPOSAL_COLS} FROM device_proposals WHERE user_id = ?"
            " ORDER BY created_at_ms, device_id",
            (user_id,),
        )
        return [
            DeviceProposal(int(r[0]), bytes(r[1]), bytes(r[2]), bytes(r[3]), int(r[4]))
            for r in rows
        ]

    async def drop_proposals(self, user_id: int, device_ids: Sequence[bytes]) -> None:
        if not device_ids:
            return
        async with self._store.transaction() as db:
            await db.executemany(
                "DELETE FROM device_proposals WHERE user_id = ? AND device_id = ?",
                [(user_id, d) for d in device_ids],
            )
