"""Edge-local settings: GraphQL limits and switches that ``shardchat.config.Settings`` lacks.

``EdgeSettings.from_settings`` reads the same names (prefixed ``graphql_``) from the cluster
Settings when they exist there, so moving them into shardchat/config.py needs no change here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

STATIC_DIR = Path(__file__).with_name("static")


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    max_depth: int = 8
    max_cost: int = 1000
    #: multiplier for a list field whose size no ``limit`` argument bounds (members, reactions)
    default_list_size: int = 10
    max_body_bytes: int = 64 * 1024
    max_batch: int = 10  # operations in one batched POST (Apollo BatchHttpLink's default batchMax)
    max_tokens: int = 5000  # parser token cap: a huge query fails before any AST is built
    enable_introspection: bool = False
    #: sha256 hex digests of the allowed query texts; None = any query (allow-listing off)
    persisted_queries: frozenset[str] | None = None
    mutation_burst: int = 20
    mutation_per_s: float = 2.0
    search_burst: int = 10  # searchUsers per user: a burst, then this many per second
    search_per_s: float = 1.0
    ws_init_timeout_s: float = 3.0  # graphql-ws default connectionInitWaitTimeout
    query_burst: int = 120  # root fields per user (per IP before login): burst ...
    query_per_s: float = 20.0  # ... and sustained rate
    max_root_fields: int = 10  # per operation, aliases included
    ws_max_operations: int = 50  # operations running at once on one graphql-ws connection
    static_dir: Path = field(default=STATIC_DIR)

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> EdgeSettings:
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f"graphql_{f.name}"
            if hasattr(settings, name):
                values[f.name] = getattr(settings, name)
        values.update(overrides)
        pq = values.get("persisted_queries")
        if pq is not None and not isinstance(pq, frozenset):
            values["persisted_queries"] = frozenset(pq)
        return cls(**values)


def query_hash(query: str) -> str:
    """The persisted-query id of a query text (Apollo APQ: sha256 hex of the UTF-8 text)."""
    return hashlib.sha256(query.encode()).hexdigest()
