"""Images: size checks against decompression bombs, metadata stripped from what is served, and
thumbnails. CPU work: callers run these in a thread (``asyncio.to_thread``).

``strip_metadata`` removes what can say where and by whom a picture was taken, without
re-encoding (the pixels are untouched): JPEG APP1 (EXIF, XMP), APP3-APP13 (maker notes, IPTC)
and comments; PNG eXIf and text chunks (tEXt, zTXt, iTXt: XMP lives there) and tIME; WebP
EXIF and XMP chunks. Colour data stays (JPEG APP0/APP2/APP14, PNG iCCP). A JPEG whose EXIF
turned the picture (Orientation 2-8) gets a minimal EXIF back that holds only that tag, so
viewers still show it upright. GIF has no EXIF and is kept as is.

Bombs: ``probe`` reads only the header and refuses more than ``max_pixels`` pixels before any
decoding; ``thumbnail`` decodes only the first frame, at a reduced scale where the format
allows (JPEG draft mode).
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator

from PIL import Image, ImageOps

from chat_core.files.sniff import Refused

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}
THUMBNAIL_TYPE = "image/webp"
_ORIENTATION = 0x0112


def _open(data: bytes, content_type: str) -> Image.Image:
    fmt = IMAGE_TYPES.get(content_type)
    if fmt is None:
        raise Refused(f"{content_type} is not an image type")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Refused(f"the image has too many pixels ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise Refused(f"the image can't be read ({exc})") from None


def probe(data: bytes, content_type: str, max_pixels: int) -> tuple[int, int]:
    """(width, height) as displayed (after an EXIF orientation that turns it), from the header
    only; Refused for a broken image or one over the pixel limit."""
    with _open(data, content_type) as im:
        width, height = im.size
        turned = im.getexif().get(_ORIENTATION) in (5, 6, 7, 8)
    if width < 1 or height < 1:
        raise Refused("the image has no pixels")
    if width * height > max_pixels:
        raise Refused(
            f"the image is {width} x {height} pixels, more than the {max_pixels:,} accepted"
        )
    return (height, width) if turned else (width, height)


def thumbnail(data: bytes, content_type: str, max_px: int, max_pixels: int) -> bytes:
    """A WebP of the first frame, turned upright, fitting in ``max_px`` x ``max_px``; no
    metadata (Pillow writes none unless asked)."""
    probe(data, content_type, max_pixels)
    with _open(data, content_type) as im:
        im.draft("RGB", (max_px, max_px))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when enough
        upright = ImageOps.exif_transpose(im)
        keep_alpha = upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info
        small = upright.convert("RGBA" if keep_alpha else "RGB")
        small.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        small.save(out, "WEBP", quality=80, method=4)
        return out.getvalue()


# --- metadata stripping (lossless) ----------------------------------------------------------------


def strip_metadata(data: bytes, content_type: str) -> bytes:
    """The same image without location and authorship metadata; Refused if it can't be parsed."""
    try:
        if content_type == "image/jpeg":
            return _strip_jpeg(data, _orientation(data))
        if content_type == "image/png":
            return _strip_png(data)
        if content_type == "image/webp":
            return _strip_webp(data)
    except (IndexError, struct.error, ValueError) as exc:
        raise Refused(f"the image's structure is broken ({exc})") from None
    return data


def _orientation(data: bytes) -> int:
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
            value = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # unreadable EXIF: nothing to keep
        return 1
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each segment up to and including SOS; the scan follows."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("no JPEG start marker")
    pos = 2
    while True:
        while data[pos] == 0xFF and data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        if data[pos] != 0xFF:
            raise ValueError(f"no marker at {pos}")
        marker = data[pos + 1]
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # standalone markers carry no length
            yield marker, pos, pos + 2
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise ValueError("segment runs past the end")
        yield marker, pos, end
        if marker == 0xDA:  # start of scan: entropy-coded data until EOI
            return
        pos = end


def _drop_jpeg_marker(marker: int) -> bool:
    return marker == 0xE1 or 0xE3 <= marker <= 0xED or marker == 0xFE


def _strip_jpeg(data: bytes, orientation: int) -> bytes:
    parts = [data[:2]]
    inserted = orientation == 1
    last_end = 2
    for marker, start, end in _jpeg_segments(data):
        if not inserted and marker != 0xE0:  # after JFIF (APP0), where EXIF belongs
            exif = Image.Exif()
            exif[_ORIENTATION] = orientation
            payload = exif.tobytes()
            parts.append(b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload)
            inserted = True
        if not _drop_jpeg_marker(marker):
            parts.append(data[start:end])
        last_end = end
    parts.append(data[last_end:])
    return b"".join(parts)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_DROP = {b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"tIME"}


def _strip_png(data: bytes) -> bytes:
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("no PNG signature")
    parts = [_PNG_SIGNATURE]
    pos = len(_PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length  # length, type, data, CRC
        if end > len(data):
            raise ValueError("chunk runs past the end")
        if kind not in _PNG_DROP:
            parts.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    return b"".join(parts)


_VP8X_EXIF, _VP8X_XMP = 0x08, 0x04


def _strip_webp(data: bytes) -> bytes:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("no WebP header")
    chunks: list[bytes] = []
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        end = pos + 8 + size + (size & 1)  # chunks are padded to even sizes
        if end > len(data):
            raise ValueError("chunk runs past the end")
        chunk = data[pos:end]
        if kind == b"VP8X":  # the extended header's flags must stop announcing them
            flags = chunk[8] & ~(_VP8X_EXIF | _VP8X_XMP)
            chunk = chunk[:8] + bytes([flags]) + chunk[9:]
        if kind not in (b"EXIF", b"XMP "):
            chunks.append(chunk)
        pos = end
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body
