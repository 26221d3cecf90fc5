"""ObjectStore on the S3 API via aiobotocore: s3proxy (deploy/local), MinIO (compose), AWS S3.

Two clients: one talks to ``endpoint`` (the address this process reaches), the other only
presigns, with ``public_endpoint`` (the address browsers reach; SigV4 signs the host, so a URL
must be signed for the host it will be sent to). Presigning is local computation.

Request and response checksums are "when required" (botocore's older behaviour): newer
botocore adds flexible-checksum headers by default, which S3-compatible servers such as
s3proxy 2.6 refuse with NotImplemented. The same reason makes ``delete`` one DeleteObject per
key rather than DeleteObjects (which now needs a checksum header).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from shardchat.objectstore import (
    ObjectInfo,
    ObjectStoreUnavailable,
    ObjectTooLarge,
    PresignedPut,
    check_key,
)

T = TypeVar("T")
_MISSING = {"404", "NoSuchKey", "NotFound"}
_READ_CHUNK = 1024 * 1024


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING


class S3ObjectStore:
    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        region: str = "us-east-1",
        access_key: str,
        secret_key: str,
        public_endpoint: str = "",
        create_bucket: bool = True,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.public_endpoint = public_endpoint or endpoint
        self.bucket = bucket
        self.create_bucket = create_bucket
        self._credentials = {
            "region_name": region,
            "aws_access_key_id": access_key,
            "aws_secret_access_key": secret_key,
        }
        self._config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Fail fast when the store is down: a send waits on this, and retries are the
            # caller's (the client retries its send with the same nonce).
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
        )
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._signer: Any = None

    async def start(self) -> None:
        session = get_session()
        self._client = await self._stack.enter_async_context(
            session.create_client(
                "s3", endpoint_url=self.endpoint, config=self._config, **self._credentials
            )
        )
        self._signer = self._client
        if self.public_endpoint != self.endpoint:
            self._signer = await self._stack.enter_async_context(
                session.create_client(
                    "s3",
                    endpoint_url=self.public_endpoint,
                    config=self._config,
                    **self._credentials,
                )
            )
        if self.create_bucket:
            await self._ensure_bucket()

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = self._signer = None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("S3ObjectStore not started")
        return self._client

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except ClientError:
            raise  # an answer from the store: the caller decides what it means
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ObjectStoreUnavailable(f"object store {self.endpoint}: {exc}") from exc

    async def _ensure_bucket(self) -> None:
        try:
            await self._call(lambda: self.client.head_bucket(Bucket=self.bucket))
        except ClientError as exc:
            if not _missing(exc):
                raise ObjectStoreUnavailable(f"bucket {self.bucket}: {exc}") from exc
            try:
                await self._call(lambda: self.client.create_bucket(Bucket=self.bucket))
            except ClientError as create_exc:
                code = create_exc.response.get("Error", {}).get("Code")
                if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise ObjectStoreUnavailable(f"bucket {self.bucket}: {create_exc}") from None

    async def ping(self) -> None:
        try:
            await self._call(lambda: self.client.head_bucket(Bucket=self.bucket))
        except ClientError as exc:
            raise ObjectStoreUnavailable(f"bucket {self.bucket}: {exc}") from exc

    async def presign_put(self, key: str, content_type: str, size: int, ttl_s: int) -> PresignedPut:
        # ContentType and ContentLength become signed headers: the store refuses any other.
        url = await self._signer.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": check_key(key),
                "ContentType": content_type,
                "ContentLength": size,
            },
            ExpiresIn=ttl_s,
        )
        deadline = int(time.time() * 1000) + ttl_s * 1000
        return PresignedPut(str(url), {"Content-Type": content_type}, deadline)

    async def presign_get(self, key: str, ttl_s: int, content_type: str, disposition: str) -> str:
        url = await self._signer.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": check_key(key),
                "ResponseContentType": content_type,
                "ResponseContentDisposition": disposition,
            },
            ExpiresIn=ttl_s,
        )
        return str(url)

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = await self._call(
                lambda: self.client.head_object(Bucket=self.bucket, Key=check_key(key))
            )
        except ClientError as exc:
            if _missing(exc):
                return None
            raise ObjectStoreUnavailable(f"head {key}: {exc}") from exc
        return ObjectInfo(int(resp["ContentLength"]), str(resp.get("ContentType", "")))

    async def get(self, key: str, max_bytes: int) -> bytes | None:
        try:
            resp = await self._call(
                lambda: self.client.get_object(Bucket=self.bucket, Key=check_key(key))
            )
        except ClientError as exc:
            if _missing(exc):
                return None
            raise ObjectStoreUnavailable(f"get {key}: {exc}") from exc
        async with resp["Body"] as body:
            if int(resp["ContentLength"]) > max_bytes:
                raise ObjectTooLarge(f"{key} is {resp['ContentLength']} bytes")
            chunks: list[bytes] = []
            total = 0
            while True:
                chunk = await self._call(lambda: body.read(_READ_CHUNK))
                if not chunk:
                    return b"".join(chunks)
                total += len(chunk)
                if total > max_bytes:
                    raise ObjectTooLarge(f"{key} is over {max_bytes} bytes")
                chunks.append(chunk)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        try:
            await self._call(
                lambda: self.client.put_object(
                    Bucket=self.bucket, Key=check_key(key), Body=data, ContentType=content_type
                )
            )
        except ClientError as exc:
            raise ObjectStoreUnavailable(f"put {key}: {exc}") from exc

    async def delete(self, keys: Sequence[str]) -> None:
        async def one(key: str) -> None:
            try:
                await self._call(
                    lambda: self.client.delete_object(Bucket=self.bucket, Key=check_key(key))
                )
            except ClientError as exc:
                if not _missing(exc):
                    raise ObjectStoreUnavailable(f"delete {key}: {exc}") from exc

        await asyncio.gather(*(one(k) for k in keys))
