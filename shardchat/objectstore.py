"""The ObjectStore port: the bytes of attachments, in an S3-compatible store or in files on disk.

Adapters: ``shardchat.adapters.s3_objects`` (aiobotocore: s3proxy, MinIO, AWS S3) and
``shardchat.adapters.fs_objects`` (files under the data folder, the presigned URLs served by the
edge). ``open_object_store(settings)`` picks one. What may be uploaded and who may download is
decided in ``chat_core.files``; the ObjectStore only keeps bytes and signs URLs.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import msgspec

from shardchat.config import Settings

#: The keys callers may use: ASCII path segments (no ``..``, no leading ``/``).
KEY_PATTERN = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
MAX_KEY_BYTES = 512


class ObjectInfo(msgspec.Struct, frozen=True):
    size: int
    content_type: str


class PresignedPut(msgspec.Struct, frozen=True):
    """An upload URL: send ``method`` to ``url`` with exactly ``headers`` and the body."""

    url: str
    headers: dict[str, str]
    expires_at_ms: int
    method: str = "PUT"


class ObjectStoreUnavailable(Exception):
    """The store could not be reached or failed (refused connection, timeout, 5xx).

    Adapters raise only this for such failures (never their client library's own types), so a
    caller can refuse its request cleanly; the operation may or may not have taken effect."""


class ObjectTooLarge(Exception):
    """``get`` found an object larger than the caller's ``max_bytes`` (and read no more)."""


class ObjectStore(Protocol):
    """Attachment bytes by key. Every method is safe to call concurrently.

    Guarantees:
    - Keys match ``KEY_PATTERN`` and are at most ``MAX_KEY_BYTES`` long (``check_key``);
      callers choose them, adapters refuse others with ValueError.
    - ``presign_put(key, content_type, size, ttl_s)``: until ``ttl_s`` seconds pass, a PUT to
      the URL with the returned headers stores exactly that body under ``key``. A PUT with
      another Content-Type or Content-Length, or after the deadline, is refused with HTTP 403
      and stores nothing. A PUT replaces what the key held (S3 semantics). The URL carries its
      own authorization: no cookie or credential is needed, so browsers can use it.
    - ``presign_get(key, ttl_s, content_type, disposition)``: until the deadline, a GET of the URL
      answers the object's bytes with that Content-Type and Content-Disposition; after it, 403.
    - Read after write: once ``put`` (or an accepted PUT) returned, ``head``, ``get`` and GET URLs
      see the new bytes.
    - ``head`` is None and ``get`` is None for a missing key; ``get`` raises ObjectTooLarge for an
      object over ``max_bytes`` without reading it whole.
    - ``delete`` is idempotent: missing keys are not an error.
    - A store that can't be reached raises ObjectStoreUnavailable from every method that talks
      to it; presigning needs no round trip and works while the store is down.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise ObjectStoreUnavailable unless the store answers (readiness)."""
        ...

    async def presign_put(
        self, key: str, content_type: str, size: int, ttl_s: int
    ) -> PresignedPut: ...

    async def presign_get(
        self, key: str, ttl_s: int, content_type: str, disposition: str
    ) -> str: ...

    async def head(self, key: str) -> ObjectInfo | None: ...

    async def get(self, key: str, max_bytes: int) -> bytes | None: ...

    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def delete(self, keys: Sequence[str]) -> None: ...


def check_key(key: str) -> str:
    if len(key.encode()) > MAX_KEY_BYTES or not KEY_PATTERN.match(key):
        raise ValueError(f"not a valid object key: {key!r}")
    return key


def files_signing_key(settings: Settings) -> bytes:
    """The filesystem adapter's URL key: ``files_signing_key``, else derived from the JWT keys
    (every process of a deployment has those already; a different label keeps the two apart),
    else a random key, good for one process only (as for tokens without ``jwt_keys``)."""
    if settings.files_signing_key:
        return settings.files_signing_key.encode()
    jwt_secrets = "".join(settings.jwt_keys.values())
    if not jwt_secrets:
        return secrets.token_bytes(32)
    return hashlib.sha256(b"shardchat files v1\0" + jwt_secrets.encode()).digest()


def open_object_store(settings: Settings) -> ObjectStore:
    """The adapter Settings.object_store names (not started: ``await objects.start()``)."""
    if settings.object_store == "s3":
        from shardchat.adapters.s3_objects import S3ObjectStore

        return S3ObjectStore(
            settings.s3_endpoint,
            settings.s3_bucket,
            region=settings.s3_region,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            public_endpoint=settings.s3_public_endpoint,
            create_bucket=settings.s3_create_bucket,
        )
    from shardchat.adapters.fs_objects import FsObjectStore

    return FsObjectStore(Path(settings.files_dir), files_signing_key(settings))
