"""The server's checks of an uploaded file, in one CPU-bound call (run it in a thread).

Size and checksum against what the uploader declared, the real type by the first bytes
(``sniff.verdict``), and for images the pixel limit and the metadata strip. The result is what
gets stored and served: the server's bytes and type, never the client's word.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection

import msgspec

from chat_core.files import images
from chat_core.files.sniff import HEAD_BYTES, Refused, verdict


class Inspected(msgspec.Struct, frozen=True):
    data: bytes
    content_type: str
    width: int | None = None
    height: int | None = None

    @property
    def is_image(self) -> bool:
        return self.content_type in images.IMAGE_TYPES


def inspect_upload(
    data: bytes,
    *,
    size: int,
    sha256: str,
    declared_type: str,
    accepted: Collection[str],
    max_pixels: int,
) -> Inspected:
    """The file as it will be stored, or ``Refused`` with the reason."""
    if len(data) != size:
        raise Refused(f"the file is {len(data)} bytes, not the {size} declared")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise Refused("the file's SHA-256 does not match the one declared")
    content_type = verdict(declared_type, data[:HEAD_BYTES], accepted)
    if content_type not in images.IMAGE_TYPES:
        return Inspected(data, content_type)
    width, height = images.probe(data, content_type, max_pixels)
    return Inspected(images.strip_metadata(data, content_type), content_type, width, height)
