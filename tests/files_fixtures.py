"""Files for the files tests, made here (no binary fixtures in the repository)."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

from PIL import Image

GPS_IFD = 0x8825
ORIENTATION = 0x0112
# 48 deg 51' 29.5" N, 2 deg 17' 40" E: a place the tests must not leak.
GPS = {1: "N", 2: (48.0, 51.0, 29.5), 3: "E", 4: (2.0, 17.0, 40.0)}

#: The first bytes of programs, each followed by filler, dressed as any type a test likes.
PE_EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 200
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 200


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _exif(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    if orientation is not None:
        exif[ORIENTATION] = orientation
    exif.get_ifd(GPS_IFD).update(GPS)
    return exif


def jpeg_with_gps(width: int = 64, height: int = 48, orientation: int | None = 6) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(
        out, "JPEG", exif=_exif(orientation), comment=b"shot by alice at home"
    )
    return out.getvalue()


def png_with_text(width: int = 40, height: int = 30) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Author", "alice")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>GPSLatitude 48,51.5N</x:xmpmeta>")
    out = io.BytesIO()
    Image.new("RGBA", (width, height), (0, 128, 255, 128)).save(
        out, "PNG", pnginfo=info, exif=_exif()
    )
    return out.getvalue()


def webp_with_exif(width: int = 50, height: int = 20) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 10)).save(
        out, "WEBP", exif=_exif(), xmp=b"<x:xmpmeta>GPS</x:xmpmeta>"
    )
    return out.getvalue()


def gif(width: int = 16, height: int = 16) -> bytes:
    out = io.BytesIO()
    Image.new("P", (width, height), 3).save(out, "GIF")
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG that claims 10 billion pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def exif_of(data: bytes) -> Image.Exif:
    with Image.open(io.BytesIO(data)) as im:
        return im.getexif()


def has_gps(data: bytes) -> bool:
    """Whether any EXIF/XMP location survives, by Pillow and by a plain byte search."""
    if b"GPS" in data or b"48,51" in data:
        return True
    return bool(exif_of(data).get_ifd(GPS_IFD))
