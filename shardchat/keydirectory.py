"""The KeyDirectory port: each user's signed device list (device identity keys) and the
proposals of devices asking to be added (docs/e2e.md section 4).

Adapters: ``shardchat.adapters.sqlite_keys`` and ``shardchat.adapters.pg_keys``, opened on the
Store's own database by ``Store.key_directory()``. The directory stores bytes it is given; the
rules (what a valid next version is, who may append) are checked by ``chat_core.e2e`` before,
and again by every client after: a server that does not keep them gains nothing, since it
cannot sign a version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec


class DeviceListEntry(msgspec.Struct, frozen=True):
    """One version of a user's device list: its exact ``body`` and its ``signature``."""

    user_id: int
    version: int
    body: bytes
    signature: bytes
    created_at_ms: int


class DeviceProposal(msgspec.Struct, frozen=True):
    user_id: int
    device_id: bytes
    body: bytes
    signature: bytes
    created_at_ms: int


class KeyDirectory(Protocol):
    """Device identity keys. Every method is atomic.

    Guarantees:
    - A user's versions are 1, 2, 3 ... with no gap: ``append_device_list`` stores ``version``
      only when the user's highest stored version is ``version - 1`` (none for 1), a
      compare-and-set: of concurrent appends of one version exactly one returns True, from any
      number of processes. Stored versions are never changed or removed.
    - ``device_lists`` returns the stored entries byte for byte, oldest first.
    - ``put_proposal`` replaces a proposal of the same device and keeps only the ``keep``
      newest proposals of the user (by ``created_at_ms``, then device id).
    """

    async def append_device_list(
        self, user_id: int, version: int, body: bytes, signature: bytes, now_ms: int
    ) -> bool: ...

    async def device_lists(
        self, user_id: int, after_version: int = 0, limit: int = 1000
    ) -> list[DeviceListEntry]:
        """Versions > ``after_version``, oldest first, at most ``limit``."""
        ...

    async def heads(self, user_ids: Sequence[int]) -> dict[int, DeviceListEntry]:
        """The highest version of each user that has one."""
        ...

    async def put_proposal(
        self,
        user_id: int,
        device_id: bytes,
        body: bytes,
        signature: bytes,
        now_ms: int,
        keep: int,
    ) -> None: ...

    async def proposals(self, user_id: int) -> list[DeviceProposal]:
        """The user's proposals, oldest first."""
        ...

    async def drop_proposals(self, user_id: int, device_ids: Sequence[bytes]) -> None: ...
