"""The server's file checks, pure: real type by magic bytes, image limits, metadata stripping,
thumbnails (chat_core/files/sniff.py, images.py, checks.py)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from chat_core.files import images
from chat_core.files.checks import Inspected, inspect_upload
from chat_core.files.service import content_disposition, human_bytes
from chat_core.files.sniff import EXECUTABLE, OCTET_STREAM, Refused, sniff, verdict
from shardchat.config import DEFAULT_UPLOAD_TYPES
from tests.files_fixtures import (
    ELF,
    GPS_IFD,
    ORIENTATION,
    PE_EXE,
    exif_of,
    gif,
    has_gps,
    jpeg_with_gps,
    png_bomb,
    png_with_text,
    sha256,
    webp_with_exif,
)

ACCEPTED = DEFAULT_UPLOAD_TYPES


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (jpeg_with_gps(), "image/jpeg"),
        (png_with_text(), "image/png"),
        (webp_with_exif(), "image/webp"),
        (gif(), "image/gif"),
        (b"%PDF-1.7\n...", "application/pdf"),
        (b"PK\x03\x04zip", "application/zip"),
        (b"\x1f\x8b\x08gz", "application/gzip"),
        (b"ID3\x04mp3", "audio/mpeg"),
        (b"\xff\xfb\x90\x00frame", "audio/mpeg"),
        (b"\x00\x00\x00\x18ftypmp42", "video/mp4"),
        ("héllo wörld\n".encode(), "text/plain"),
        (PE_EXE, EXECUTABLE),
        (ELF, EXECUTABLE),
        (b"\xcf\xfa\xed\xfe\x07\x00\x00\x01", EXECUTABLE),
        (b"\x00asm\x01\x00\x00\x00", EXECUTABLE),
        (b"\x00\x01\x02\x03binary", OCTET_STREAM),
    ],
)
def test_sniff(data: bytes, kind: str) -> None:
    assert sniff(data) == kind


def test_text_cut_inside_a_character_is_still_text() -> None:
    head = ("é" * 3000).encode()[:4095]  # ends in the middle of a two-byte character
    assert sniff(head) == "text/plain"
    assert sniff(b"\xff\xfe not utf-8 \x80\x81") == OCTET_STREAM


def test_verdict() -> None:
    png = png_with_text()
    assert verdict("image/png", png, ACCEPTED) == "image/png"
    assert verdict("application/octet-stream", png, ACCEPTED) == "image/png"
    assert verdict("application/octet-stream", b"\x00\x01", ACCEPTED) == OCTET_STREAM
    assert verdict("text/plain", b"just words", ACCEPTED) == "text/plain"
    with pytest.raises(Refused, match="not image/jpeg"):
        verdict("image/jpeg", png, ACCEPTED)
    with pytest.raises(Refused, match="not text/plain"):
        verdict("text/plain", png, ACCEPTED)
    for program in (PE_EXE, ELF):  # an executable is refused whatever it claims to be
        for declared in ("image/png", "application/octet-stream", "application/zip"):
            with pytest.raises(Refused, match="executable"):
                verdict(declared, program, ACCEPTED)


def test_inspect_upload_checks_size_checksum_and_type() -> None:
    data = b"plain words\n"

    def check(body: bytes, **kw: object) -> Inspected:
        args: dict[str, object] = {
            "size": len(data),
            "sha256": sha256(data),
            "declared_type": "text/plain",
            "accepted": ACCEPTED,
            "max_pixels": 1_000_000,
        }
        args.update(kw)
        return inspect_upload(body, **args)  # type: ignore[arg-type]

    assert check(data) == Inspected(data, "text/plain")
    with pytest.raises(Refused, match="not the 11 declared"):
        check(data, size=11)
    with pytest.raises(Refused, match="SHA-256"):
        check(data, sha256=sha256(b"other"))
    with pytest.raises(Refused, match="executable"):
        check(PE_EXE, size=len(PE_EXE), sha256=sha256(PE_EXE), declared_type="image/png")


def test_probe_refuses_decompression_bombs_from_the_header() -> None:
    bomb = png_bomb()
    assert len(bomb) < 200
    with pytest.raises(Refused, match="pixels"):
        images.probe(bomb, "image/png", 40_000_000)
    with pytest.raises(Refused, match="pixels"):
        images.thumbnail(bomb, "image/png", 320, 40_000_000)
    assert images.probe(png_with_text(40, 30), "image/png", 1200) == (40, 30)
    with pytest.raises(Refused, match="1,199 accepted"):
        images.probe(png_with_text(40, 30), "image/png", 1199)
    with pytest.raises(Refused, match="can't be read"):
        images.probe(b"\x89PNG\r\n\x1a\ntruncated", "image/png", 10**6)


def test_jpeg_metadata_stripped_orientation_kept() -> None:
    original = jpeg_with_gps(orientation=6)
    assert has_gps(original) and b"alice at home" in original
    clean = images.strip_metadata(original, "image/jpeg")
    assert not has_gps(clean)
    assert b"PhoneMaker" not in clean and b"alice at home" not in clean
    assert dict(exif_of(clean)) == {ORIENTATION: 6}  # only the orientation survives
    with Image.open(io.BytesIO(clean)) as a, Image.open(io.BytesIO(original)) as b:
        assert a.tobytes() == b.tobytes()  # the pixels are untouched (no re-encoding)
    upright = jpeg_with_gps(orientation=None)
    assert dict(exif_of(images.strip_metadata(upright, "image/jpeg"))) == {}


def test_png_and_webp_metadata_stripped() -> None:
    for kind, original in (("image/png", png_with_text()), ("image/webp", webp_with_exif())):
        assert has_gps(original), kind
        clean = images.strip_metadata(original, kind)
        assert not has_gps(clean), kind
        assert b"alice" not in clean
        with Image.open(io.BytesIO(clean)) as a, Image.open(io.BytesIO(original)) as b:
            assert a.size == b.size and a.tobytes() == b.tobytes(), kind
            assert not a.getexif().get_ifd(GPS_IFD)
    assert images.strip_metadata(gif(), "image/gif") == gif()


def test_strip_refuses_broken_structure() -> None:
    broken = jpeg_with_gps()[:60]
    with pytest.raises(Refused, match="broken"):
        images.strip_metadata(broken, "image/jpeg")


def test_thumbnail_fits_is_upright_and_has_no_metadata() -> None:
    # 64 x 48 turned by orientation 6 (90 degrees clockwise) is 48 wide, 64 tall.
    small = images.thumbnail(jpeg_with_gps(64, 48, 6), "image/jpeg", 32, 10**6)
    with Image.open(io.BytesIO(small)) as im:
        assert im.format == "WEBP" and im.size == (24, 32)
        assert not im.getexif()
    transparent = images.thumbnail(png_with_text(400, 100), "image/png", 100, 10**6)
    with Image.open(io.BytesIO(transparent)) as im:
        assert im.size == (100, 25) and im.mode == "RGBA"


def test_inspect_upload_strips_images_and_measures_them() -> None:
    photo = jpeg_with_gps(64, 48)
    checked = inspect_upload(
        photo,
        size=len(photo),
        sha256=sha256(photo),
        declared_type="image/jpeg",
        accepted=ACCEPTED,
        max_pixels=10**6,
    )
    # displayed size: orientation 6 (the fixture's default) turns 64 x 48 upright
    assert (checked.content_type, checked.width, checked.height) == ("image/jpeg", 48, 64)
    assert checked.is_image and not has_gps(checked.data)


def test_helpers() -> None:
    assert human_bytes(25 * 1024 * 1024) == "25 MiB"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(7) == "7 bytes"
    assert content_disposition("attachment", 'ré"port.pdf') == (
        "attachment; filename=\"r__port.pdf\"; filename*=UTF-8''r%C3%A9%22port.pdf"
    )
