"""Versioned schema migrations: ``shardchat/migrations/<dialect>/NNNN_name.sql``.

Each file is applied once, in name order, in its own transaction, and recorded in the
``schema_migrations`` table (``version`` = the file name without ``.sql``). Applied files are
never edited: a change is a new file. Run by ``shardchat migrate`` and at dev start-up.
"""

from __future__ import annotations

import re
from importlib import resources

from shardchat.store import Dialect, Store

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def load_migrations(dialect: Dialect) -> list[tuple[str, str]]:
    """``(version, sql)`` pairs of the package's migration files, in order."""
    folder = resources.files("shardchat") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        if _NAME.match(entry.name):
            found.append((entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    found.sort()
    numbers = [v[:4] for v, _ in found]
    if len(set(numbers)) != len(numbers):  # two files with one number would apply in name order
        raise RuntimeError(f"duplicate migration numbers in {dialect}: {numbers}")
    return found


async def migrate(store: Store) -> list[str]:
    """Bring the store's schema up to date; returns the versions applied now (maybe none)."""
    return await store.apply_migrations(load_migrations(store.dialect))
