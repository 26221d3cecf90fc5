"""ObjectStore on local files: the embedded default of ``shardchat dev``.

Objects live in ``ROOT/objects/KEY`` with their Content-Type in ``ROOT/meta/KEY``; a PUT
writes a temporary file and renames it into place, so readers see the old or the new bytes,
never a part. The presigned URLs are served by the edge (``routes()``, mounted at
``/objects``) under the same rules as S3's presigned URLs: an HMAC-SHA256 over the method, the
key, the deadline and, for a PUT, the Content-Type and Content-Length the uploader must send
(for a GET, the Content-Type and Content-Disposition to answer with). A wrong signature or a
passed deadline is 403 and stores nothing. URLs are relative to the edge (``/objects/...``)
unless ``base_url`` is given.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from shardchat.objectstore import (
    ObjectInfo,
    ObjectStoreUnavailable,
    ObjectTooLarge,
    PresignedPut,
    check_key,
)

PREFIX = "/objects"
P = ParamSpec("P")
T = TypeVar("T")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class FsObjectStore:
    def __init__(self, root: Path, signing_key: bytes, base_url: str = "") -> None:
        self.root = root
        self._key = signing_key
        self.base_url = base_url.rstrip("/")
        self._data = root / "objects"
        self._meta = root / "meta"
        self._tmp = root / "tmp"

    # --- life cycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        for folder in (self._data, self._meta, self._tmp):
            folder.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        if not os.access(self._data, os.W_OK):
            raise ObjectStoreUnavailable(f"{self._data} is not writable")

    # --- signing ----------------------------------------------------------------------------------
    def _sign(self, method: str, key: str, expires_ms: int, a: str, b: str) -> str:
        text = "\n".join((method, key, str(expires_ms), a, b)).encode()
        digest = hmac.new(self._key, text, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def _url(self, key: str, query: dict[str, str]) -> str:
        return f"{self.base_url}{PREFIX}/{key}?{urlencode(query)}"

    async def presign_put(self, key: str, content_type: str, size: int, ttl_s: int) -> PresignedPut:
        expires = _now_ms() + ttl_s * 1000
        sig = self._sign("PUT", check_key(key), expires, content_type, str(size))
        url = self._url(key, {"expires": str(expires), "signature": sig})
        return PresignedPut(url, {"Content-Type": content_type}, expires)

    async def presign_get(self, key: str, ttl_s: int, content_type: str, disposition: str) -> str:
        expires = _now_ms() + ttl_s * 1000
        sig = self._sign("GET", check_key(key), expires, content_type, disposition)
        query = {"expires": str(expires), "ct": content_type, "cd": disposition, "signature": sig}
        return self._url(key, query)

    def _signed(self, request: Request, key: str, a: str, b: str) -> str | None:
        """Why the request is refused (None: its signature holds and its deadline is ahead)."""
        q = request.query_params
        expires = q.get("expires", "")
        if not expires.isdigit():
            return "missing or bad expires"
        want = self._sign(request.method, key, int(expires), a, b)
        if not hmac.compare_digest(want, q.get("signature", "")):
            return "SignatureDoesNotMatch"
        if _now_ms() > int(expires):
            return "Request has expired"
        return None

    # --- files ------------------------------------------------------------------------------------
    def _paths(self, key: str) -> tuple[Path, Path]:
        check_key(key)
        return self._data / key, self._meta / key

    def _write_meta(self, meta: Path, content_type: str) -> None:
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(content_type)

    def _commit(self, tmp: Path, key: str, content_type: str) -> None:
        """Make ``tmp`` the object ``key``: durable first, then renamed into place."""
        data, meta = self._paths(key)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        self._write_meta(meta, content_type)
        data.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, data)

    def _new_tmp(self) -> Path:
        return self._tmp / secrets.token_hex(12)

    async def _io(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking file work in a thread; a failing disk is an unavailable store."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except OSError as exc:
            raise ObjectStoreUnavailable(f"{self.root}: {exc}") from exc

    def _head_sync(self, key: str) -> ObjectInfo | None:
        data, meta = self._paths(key)
        try:
            size = data.stat().st_size
        except FileNotFoundError:
            return None
        try:
            content_type = meta.read_text()
        except FileNotFoundError:
            content_type = "application/octet-stream"
        return ObjectInfo(size, content_type)

    def _get_sync(self, key: str, max_bytes: int) -> bytes | None:
        data, _ = self._paths(key)
        try:
            with data.open("rb") as f:
                if os.fstat(f.fileno()).st_size > max_bytes:
                    raise ObjectTooLarge(f"{key} is over {max_bytes} bytes")
                return f.read()
        except FileNotFoundError:
            return None

    def _put_sync(self, key: str, body: bytes, content_type: str) -> None:
        tmp = self._new_tmp()
        tmp.write_bytes(body)
        self._commit(tmp, key, content_type)

    def _delete_sync(self, keys: Sequence[str]) -> None:
        for key in keys:
            for path in self._paths(key):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    async def head(self, key: str) -> ObjectInfo | None:
        return await self._io(self._head_sync, key)

    async def get(self, key: str, max_bytes: int) -> bytes | None:
        return await self._io(self._get_sync, key, max_bytes)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await self._io(self._put_sync, key, data, content_type)

    async def delete(self, keys: Sequence[str]) -> None:
        await self._io(self._delete_sync, list(keys))

    # --- the HTTP side of the presigned URLs (mounted by the edge) --------------------------------
    def routes(self) -> list[BaseRoute]:
        return [Route(PREFIX + "/{key:path}", self._serve, methods=["GET", "PUT"])]

    async def _serve(self, request: Request) -> Response:
        key = request.path_params["key"]
        try:
            data, _ = self._paths(key)
        except ValueError:
            return _refuse(400, "bad key")
        if request.method == "PUT":
            return await self._receive(request, key)
        q = request.query_params
        content_type, disposition = q.get("ct", ""), q.get("cd", "")
        why = self._signed(request, key, content_type, disposition)
        if why is not None:
            return _refuse(403, why)
        if not data.is_file():
            return _refuse(404, "NoSuchKey")
        left_s = max(0, (int(q["expires"]) - _now_ms()) // 1000)
        return FileResponse(
            data,
            media_type=content_type,
            headers={
                "Content-Disposition": disposition,
                # Served from the app's own origin: the browser must never treat it as a page.
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "sandbox; default-src 'none'",
                "Cache-Control": f"private, max-age={left_s}",
            },
        )

    async def _receive(self, request: Request, key: str) -> Response:
        declared = request.headers.get("content-length", "")
        if not declared.isdigit():
            return _refuse(411, "Content-Length is required")
        content_type = request.headers.get("content-type", "")
        why = self._signed(request, key, content_type, declared)
        if why is not None:
            return _refuse(403, why)
        size = int(declared)
        tmp = self._new_tmp()
        received = 0
        try:
            with tmp.open("wb") as f:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > size:
                        break
                    f.write(chunk)
            if received != size:
                tmp.unlink()
                return _refuse(400, "IncompleteBody: the body does not match Content-Length")
            await asyncio.to_thread(self._commit, tmp, key, content_type)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return Response(status_code=200)


def _refuse(status: int, message: str) -> Response:
    return PlainTextResponse(message, status)
