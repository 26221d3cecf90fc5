"""FileWorker: what happens to files off the request path, in every process that runs a Core.

- Thumbnails: images verified by a send wait with ``thumb = 'pending'``. The worker claims
  them in the Store (a lease per upload, so processes share the queue and a crashed claimant's
  work is taken over after ``THUMBNAIL_LEASE_MS``), makes each thumbnail in a thread and stores
  it beside the original. A send in this process wakes it at once; every
  ``files_sweep_interval_s`` it also looks for work left by others.
- Sweep (one process at a time, by a Store lease): objects and rows of uploads never attached
  within ``upload_ttl_s`` (or refused), of deleted messages, and the staging object of an
  attached upload once its upload URL has expired (a client could PUT again to a still-valid
  URL after the send). A store that is down leaves the rows for the next sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from chat_core.files import images, metrics
from chat_core.files.service import file_key, staging_key, thumb_key
from chat_core.files.sniff import Refused
from chat_core.models import Upload
from shardchat.config import Settings
from shardchat.objectstore import ObjectStore, ObjectStoreUnavailable
from shardchat.store import Store

log = logging.getLogger(__name__)

THUMBNAIL_LEASE_MS = 60_000
THUMBNAIL_BATCH = 8
SWEEP_LEASE = "files-sweeper"
SWEEP_BATCH = 500


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class FileWorker:
    def __init__(
        self,
        store: Store,
        objects: ObjectStore,
        settings: Settings,
        owner: str,
        *,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.store = store
        self.objects = objects
        self.settings = settings
        self.owner = owner
        self._clock_ms = clock_ms
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="file-worker")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        """New thumbnail work in this process (FileService.on_image)."""
        self._wake.set()

    async def _run(self) -> None:
        interval = self.settings.files_sweep_interval_s
        next_sweep = 0.0
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                await self.make_thumbnails()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + interval
                    await self.sweep()
            except Exception:  # the Store may be down: try again next round
                log.warning("file worker round failed", exc_info=True)

    # --- thumbnails ------------------------------------------------------------------------------
    async def make_thumbnails(self) -> int:
        """Make every thumbnail waiting now; returns how many were made."""
        made = 0
        while batch := await self.store.claim_thumbnails(
            self._clock_ms(), THUMBNAIL_LEASE_MS, THUMBNAIL_BATCH
        ):
            for upload in batch:
                if not await self._thumbnail(upload):
                    return made  # the object store is down: the claims lapse, retried later
                made += 1
        return made

    async def _thumbnail(self, u: Upload) -> bool:
        """False when the object store could not be reached (the claim is left to lapse)."""
        s = self.settings
        started = time.perf_counter()
        try:
            original = await self.objects.get(file_key(u.id), s.max_upload_bytes)
            if original is None:
                raise Refused("the original is gone")
            small = await asyncio.to_thread(
                images.thumbnail, original, u.content_type, s.thumbnail_px, s.max_image_pixels
            )
            await self.objects.put(thumb_key(u.id), small, images.THUMBNAIL_TYPE)
        except ObjectStoreUnavailable:
            log.warning("thumbnail of upload %s: object store unavailable", u.id)
            return False
        except Exception as exc:  # Refused, or Pillow failing on a file that passed the probe
            log.warning("thumbnail of upload %s failed: %s", u.id, exc)
            await self.store.finish_thumbnail(u.id, "failed")
            metrics.THUMBNAIL_FAILED.inc()
            return True
        await self.store.finish_thumbnail(u.id, "ready")
        metrics.THUMBNAIL_SECONDS.observe(time.perf_counter() - started)
        metrics.THUMBNAIL_OK.inc()
        return True

    # --- lifecycle -------------------------------------------------------------------------------
    async def sweep(self) -> int:
        """One sweep if this process holds the sweeper lease; returns the objects removed."""
        lease_ms = int(self.settings.files_sweep_interval_s * 3000)
        if not await self.store.acquire_lease(SWEEP_LEASE, self.owner, lease_ms):
            return 0
        rows = await self.store.uploads_to_sweep(self._clock_ms(), SWEEP_BATCH)
        gone = [u for u in rows if u.message_id is None or u.deleted_at_ms is not None]
        staging = [u for u in rows if u.message_id is not None and u.deleted_at_ms is None]
        keys = [k for u in gone for k in (staging_key(u.id), file_key(u.id), thumb_key(u.id))]
        keys += [staging_key(u.id) for u in staging]
        try:
            await self.objects.delete(keys)
        except ObjectStoreUnavailable:
            log.warning("files sweep: object store unavailable; %d uploads wait", len(rows))
            return 0
        await self.store.forget_uploads([u.id for u in gone])
        await self.store.mark_staging_swept([u.id for u in staging])
        for u in gone:
            (metrics.SWEPT_DELETED if u.deleted_at_ms is not None else metrics.SWEPT_EXPIRED).inc(3)
        metrics.SWEPT_STAGING.inc(len(staging))
        return len(keys)
