"""Prometheus metrics of files and images (chat_core runs in the edge and in the gateway).

Names, types and labels are EXACTLY those of ``deploy/grafana/METRICS.md`` ("Files"); the edge
dashboard queries them. Every labelled child is bound here at import so each outcome is
exported from the start at 0.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Histogram

UPLOAD_URLS: Final = Counter(
    "shardchat_files_upload_urls", "createUpload answered with an upload URL"
)
UPLOADS: Final = Counter(
    "shardchat_files_uploads",
    "Uploads checked by the server at their first send, by outcome: ok, refused (size,"
    " checksum, type or image), missing (not uploaded yet), unavailable (object store down)",
    ["outcome"],
)
UPLOADED_BYTES: Final = Counter(
    "shardchat_files_uploaded_bytes", "Bytes of the uploads verified and stored"
)
DOWNLOADS: Final = Counter(
    "shardchat_files_downloads", "Download URLs handed to members, by kind", ["kind"]
)
THUMBNAILS: Final = Counter(
    "shardchat_files_thumbnails", "Thumbnails made (ok) or given up (failed)", ["outcome"]
)
THUMBNAIL_SECONDS: Final = Histogram(
    "shardchat_files_thumbnail_seconds",
    "One thumbnail: read the image, decode, resize, encode, store",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SWEPT: Final = Counter(
    "shardchat_files_swept_objects",
    "Objects removed by the sweeper, by reason: expired (never attached), deleted (their"
    " message was deleted), staging (an upload URL's object after the send)",
    ["reason"],
)

UPLOAD_OK: Final = UPLOADS.labels("ok")
UPLOAD_REFUSED: Final = UPLOADS.labels("refused")
UPLOAD_MISSING: Final = UPLOADS.labels("missing")
UPLOAD_UNAVAILABLE: Final = UPLOADS.labels("unavailable")
DOWNLOAD_FILE: Final = DOWNLOADS.labels("file")
DOWNLOAD_THUMBNAIL: Final = DOWNLOADS.labels("thumbnail")
THUMBNAIL_OK: Final = THUMBNAILS.labels("ok")
THUMBNAIL_FAILED: Final = THUMBNAILS.labels("failed")
SWEPT_EXPIRED: Final = SWEPT.labels("expired")
SWEPT_DELETED: Final = SWEPT.labels("deleted")
SWEPT_STAGING: Final = SWEPT.labels("staging")
