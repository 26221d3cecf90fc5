"""FileService: uploads of attachments, their verification at the first send, and downloads.

The bytes never pass through the edge: ``create_upload`` hands out a presigned PUT straight to
the ObjectStore, and downloads are presigned GETs. Who may do what is ChatService's rule
(``get_room``: NOT_FOUND for a room the actor may not see), so files follow whatever access
model rooms have.

Life of an upload (``chat_core.models.Upload``): ``createUpload`` checks the room, the size, the
type and the owner's quota and stores it ``pending``; the client PUTs the bytes to its staging
object. The first ``sendMessage`` naming it verifies it (``prepare``): the staging object is
read whole (at most the declared size), checked (size, SHA-256, the real type by its first
bytes, an image's pixel count; ``checks.inspect_upload``), and what passed, with image
metadata stripped, is written to the upload's final object, which is what downloads serve; then
the upload is ``ready`` and the message stores it as an attachment in its own transaction. A
file that fails a check is ``rejected`` and its object deleted: nothing of it is left. A store
that can't be reached fails the send with nothing attached (``StorageUnavailable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Sequence
from typing import Literal, NoReturn, Protocol
from urllib.parse import quote

import msgspec

from chat_core.files import metrics
from chat_core.files.checks import inspect_upload
from chat_core.files.images import IMAGE_TYPES, THUMBNAIL_TYPE
from chat_core.files.sniff import Refused
from chat_core.models import Attachment, Room, ThumbState, Upload
from chat_core.validation import snowflake
from shardchat.config import Settings
from shardchat.errors import BadInput, ChatError, NotFound
from shardchat.ids import IdGenerator
from shardchat.objectstore import (
    ObjectStore,
    ObjectStoreUnavailable,
    ObjectTooLarge,
    PresignedPut,
)
from shardchat.store import Store

MAX_FILENAME_BYTES = 255
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def staging_key(upload_id: int) -> str:
    """Where the client's PUT lands (the presigned URL's object)."""
    return f"uploads/{upload_id}"


def file_key(upload_id: int) -> str:
    """The verified file that downloads serve."""
    return f"files/{upload_id}"


def thumb_key(upload_id: int) -> str:
    return f"thumbnails/{upload_id}"


class StorageUnavailable(ChatError):
    """The object store can't be reached: the request did nothing; try again later."""

    code = "INTERNAL"


class ThumbnailPending(NotFound):
    """The image's thumbnail is being made (off the request path): ask again in a moment."""


class RoomAccess(Protocol):
    """ChatService's rule for rooms: the room, or a ChatError (NotFound) for this actor."""

    async def get_room(self, actor: int, room_id: int) -> Room: ...


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}".replace(".0 ", " ")
    return f"{n} bytes"


def content_disposition(kind: Literal["inline", "attachment"], filename: str) -> str:
    """RFC 6266: an ASCII fallback name and the exact UTF-8 one."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _filename(value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInput("filename must not be empty")
    if len(value.encode()) > MAX_FILENAME_BYTES:
        raise BadInput(f"filename is longer than {MAX_FILENAME_BYTES} bytes")
    if any(c in "/\\" or not c.isprintable() for c in value):
        raise BadInput("filename must not contain slashes or control characters")
    return value


class FileService:
    def __init__(
        self,
        store: Store,
        objects: ObjectStore,
        rooms: RoomAccess,
        settings: Settings | None = None,
        *,
        ids: IdGenerator | None = None,
        on_image: Callable[[], None] | None = None,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.store = store
        self.objects = objects
        self.rooms = rooms
        self.settings = settings or Settings()
        self.ids = ids or IdGenerator()
        #: Called when a verified image waits for its thumbnail (wakes the FileWorker).
        self.on_image = on_image
        self._clock_ms = clock_ms
        self._verifying = asyncio.Semaphore(self.settings.verify_concurrency)

    # --- createUpload ----------------------------------------------------------------------------
    async def create_upload(
        self,
        actor: int,
        room_id: int,
        filename: str,
        content_type: str,
        size: int,
        sha256: str,
    ) -> tuple[Upload, PresignedPut]:
        """A pending upload and the URL to PUT its bytes to (valid ``upload_url_ttl_s``)."""
        s = self.settings
        snowflake(room_id, "room id")
        _filename(filename)
        kind = content_type.split(";", 1)[0].strip().lower()
        if kind not in s.upload_types:
            raise BadInput(f"files of type {kind or '(none)'} are not accepted here")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise BadInput("size must be a positive number of bytes")
        if size > s.max_upload_bytes:
            raise BadInput(f"the file is larger than {human_bytes(s.max_upload_bytes)}")
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            raise BadInput("sha256 must be the file's SHA-256 as 64 hex digits")
        await self.rooms.get_room(actor, room_id)  # a room the actor may not see: NotFound
        now = self._clock_ms()
        upload = Upload(
            id=self.ids.next_id(),
            owner_id=actor,
            room_id=room_id,
            filename=filename,
            content_type=kind,
            size=size,
            sha256=sha256.lower(),
            created_at_ms=now,
            put_expires_at_ms=now + s.upload_url_ttl_s * 1000,
            expires_at_ms=now + max(s.upload_ttl_s, s.upload_url_ttl_s) * 1000,
        )
        stored, used = await self.store.create_upload(upload, s.user_quota_bytes)
        if not stored:
            raise BadInput(
                f"storage quota exceeded: {human_bytes(used)} of {human_bytes(s.user_quota_bytes)}"
                f" in use, this file needs {human_bytes(size)}"
            )
        put = await self.objects.presign_put(staging_key(upload.id), kind, size, s.upload_url_ttl_s)
        metrics.UPLOAD_URLS.inc()
        return upload, put

    # --- the first send: verify, then attach ------------------------------------------------------
    async def prepare(
        self, actor: int, room_id: int, upload_ids: Sequence[int]
    ) -> tuple[Attachment, ...]:
        """The attachments of a message, each a ready upload of ``actor`` for ``room_id``
        (verified now if still pending). Raises before anything is attached."""
        if len(upload_ids) > self.settings.max_attachments:
            raise BadInput(f"a message has at most {self.settings.max_attachments} attachments")
        if len(set(upload_ids)) != len(upload_ids):
            raise BadInput("the same attachment is listed twice")
        for uid in upload_ids:
            snowflake(uid, "attachment id")
        uploads = await self.store.get_uploads(upload_ids)
        now = self._clock_ms()
        checked = [
            self._attachable(uploads.get(uid), uid, actor, room_id, now) for uid in upload_ids
        ]
        ready = [u if u.state == "ready" else await self._verify(u) for u in checked]
        return tuple(u.attachment() for u in ready)

    @staticmethod
    def _attachable(u: Upload | None, uid: int, actor: int, room_id: int, now: int) -> Upload:
        if u is None or u.owner_id != actor:  # another user's upload is none of the caller's
            raise NotFound(f"upload {uid} not found")
        if u.room_id != room_id:
            raise BadInput(f"upload {uid} ({u.filename}) was made for another room")
        if u.message_id is not None or u.deleted_at_ms is not None:
            raise BadInput(f"upload {uid} ({u.filename}) is already attached to a message")
        if u.state == "rejected":
            raise BadInput(f"{u.filename} was refused: {u.reason}")
        if u.expires_at_ms <= now:
            raise BadInput(f"upload {uid} ({u.filename}) expired; upload the file again")
        return u

    async def _verify(self, u: Upload) -> Upload:
        s = self.settings
        async with self._verifying:  # each verification holds its file in memory
            try:
                data = await self.objects.get(staging_key(u.id), u.size)
            except ObjectTooLarge:
                await self._refuse(u, f"the file is larger than the {u.size} bytes declared")
            except ObjectStoreUnavailable as exc:
                metrics.UPLOAD_UNAVAILABLE.inc()
                raise StorageUnavailable("file storage is unavailable; try again later") from exc
            if data is None:
                metrics.UPLOAD_MISSING.inc()
                late = self._clock_ms() > u.put_expires_at_ms
                raise BadInput(
                    f"{u.filename} has not been uploaded"
                    + ("; its upload URL expired, upload the file again" if late else " yet")
                )
            try:
                checked = await asyncio.to_thread(
                    inspect_upload,
                    data,
                    size=u.size,
                    sha256=u.sha256,
                    declared_type=u.content_type,
                    accepted=s.upload_types,
                    max_pixels=s.max_image_pixels,
                )
            except Refused as exc:
                await self._refuse(u, str(exc))
            try:
                await self.objects.put(file_key(u.id), checked.data, checked.content_type)
            except ObjectStoreUnavailable as exc:
                metrics.UPLOAD_UNAVAILABLE.inc()
                raise StorageUnavailable("file storage is unavailable; try again later") from exc
        thumb: ThumbState = "pending" if checked.is_image else "none"
        size = len(checked.data)
        if not await self.store.finish_upload(
            u.id, checked.content_type, size, checked.width, checked.height, thumb
        ):
            # Another send verified (or refused) it meanwhile: its verdict stands.
            current = (await self.store.get_uploads([u.id]))[u.id]
            return self._attachable(current, u.id, u.owner_id, u.room_id, self._clock_ms())
        await self._delete_quietly([staging_key(u.id)])
        metrics.UPLOAD_OK.inc()
        metrics.UPLOADED_BYTES.inc(size)
        if checked.is_image and self.on_image is not None:
            self.on_image()
        return msgspec.structs.replace(
            u,
            state="ready",
            content_type=checked.content_type,
            size=size,
            width=checked.width,
            height=checked.height,
            thumb=thumb,
        )

    async def _refuse(self, u: Upload, reason: str) -> NoReturn:
        """Reject the upload (its row expires now, the sweeper removes it) and drop its bytes."""
        await self.store.reject_upload(u.id, reason, self._clock_ms())
        await self._delete_quietly([staging_key(u.id)])
        metrics.UPLOAD_REFUSED.inc()
        raise BadInput(f"{u.filename} was refused: {reason}")

    async def _delete_quietly(self, keys: list[str]) -> None:
        """Best effort: what is left behind, the sweeper removes later."""
        with contextlib.suppress(ObjectStoreUnavailable):
            await self.objects.delete(keys)

    # --- downloads --------------------------------------------------------------------------------
    @property
    def download_ttl_s(self) -> int:
        return self.settings.download_url_ttl_s

    async def uploads(self, upload_ids: Sequence[int]) -> dict[int, Upload]:
        return await self.store.get_uploads(upload_ids)

    async def download_url(self, actor: int, upload_id: int, thumbnail: bool = False) -> str:
        """A presigned GET of an attached file (or its thumbnail) for a member of its room."""
        snowflake(upload_id, "attachment id")
        u = (await self.store.get_uploads([upload_id])).get(upload_id)
        if u is None or u.message_id is None or u.deleted_at_ms is not None:
            raise NotFound("file not found")
        await self.rooms.get_room(actor, u.room_id)  # a non-member (or one who left) gets nothing
        return await self.presign(u.attachment(), thumbnail, u.thumb)

    async def presign(
        self, a: Attachment, thumbnail: bool = False, thumb: ThumbState = "none"
    ) -> str:
        """The URL itself; the caller has checked that the actor may see ``a``."""
        ttl = self.settings.download_url_ttl_s
        if not thumbnail:
            kind: Literal["inline", "attachment"] = (
                "inline" if a.content_type in IMAGE_TYPES else "attachment"
            )
            url = await self.objects.presign_get(
                file_key(a.id), ttl, a.content_type, content_disposition(kind, a.filename)
            )
            metrics.DOWNLOAD_FILE.inc()
            return url
        if thumb == "pending":
            raise ThumbnailPending("the thumbnail is being made; ask again in a moment")
        if thumb != "ready":
            raise NotFound("this file has no thumbnail")
        name = f"thumbnail-{a.filename.rsplit('.', 1)[0]}.webp"
        url = await self.objects.presign_get(
            thumb_key(a.id), ttl, THUMBNAIL_TYPE, content_disposition("inline", name)
        )
        metrics.DOWNLOAD_THUMBNAIL.inc()
        return url
