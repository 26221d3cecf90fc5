"""A file's real type from its first bytes (magic numbers), and whether it may be stored as the
type its uploader declared. Pure: bytes in, a verdict out.

The rule (``verdict``): an executable program is refused whatever it claims to be; a declared
type with a signature must match what the bytes are (a PNG must be a PNG); ``text/plain`` must
be UTF-8 text; ``application/octet-stream`` ("some file") takes the detected type when that is
one of the accepted ones, else stays ``application/octet-stream``.
"""

from __future__ import annotations

from collections.abc import Collection

OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain"
EXECUTABLE = "application/x-executable"  # never stored: the marker of a refusal

#: How many leading bytes ``sniff`` looks at (text is judged on these).
HEAD_BYTES = 4096

_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"PK\x05\x06", "application/zip"),  # an empty archive
    (b"\x1f\x8b", "application/gzip"),
    (b"ID3", "audio/mpeg"),
    # programs: Linux/BSD ELF, Windows PE ("MZ"), macOS Mach-O (both byte orders, 32/64 bit,
    # universal; 0xCAFEBABE is also a Java class file: a program too), WebAssembly
    (b"\x7fELF", EXECUTABLE),
    (b"MZ", EXECUTABLE),
    (b"\xfe\xed\xfa\xce", EXECUTABLE),
    (b"\xfe\xed\xfa\xcf", EXECUTABLE),
    (b"\xce\xfa\xed\xfe", EXECUTABLE),
    (b"\xcf\xfa\xed\xfe", EXECUTABLE),
    (b"\xca\xfe\xba\xbe", EXECUTABLE),
    (b"\x00asm", EXECUTABLE),
)

#: Types whose bytes say what they are: a declared one must be what ``sniff`` finds.
SIGNED_TYPES = frozenset(t for _, t in _PREFIXES if t != EXECUTABLE) | {"image/webp", "video/mp4"}

_READABLE_CONTROLS = frozenset(b"\t\n\r\f\x1b")


def sniff(head: bytes) -> str:
    """The type the bytes are: a MIME type, ``EXECUTABLE``, ``TEXT`` or ``OCTET_STREAM``."""
    for prefix, kind in _PREFIXES:
        if head.startswith(prefix):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE6 == 0xE2:
        return "audio/mpeg"  # an MP3 frame (sync bits, layer III) without an ID3 tag
    return TEXT if _is_text(head[:HEAD_BYTES]) else OCTET_STREAM


def _is_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The head may end inside a multi-byte character: only a cut at the very end is fine.
        if exc.reason != "unexpected end of data" or exc.start < len(head) - 3:
            return False
    controls = sum(1 for b in head if b < 0x20 and b not in _READABLE_CONTROLS)
    return controls * 100 <= len(head)  # at most 1 % odd control bytes


class Refused(Exception):
    """The file can't be stored; the message says why, for the user."""


def verdict(declared: str, head: bytes, accepted: Collection[str]) -> str:
    """The content type to store the file as, or ``Refused``."""
    found = sniff(head)
    if found == EXECUTABLE:
        raise Refused("the file is an executable program")
    if declared == OCTET_STREAM:
        return found if found in accepted else OCTET_STREAM
    if declared in SIGNED_TYPES or declared == TEXT:
        if found != declared:
            raise Refused(f"the file is not {declared} (its content looks like {found})")
        return declared
    # An accepted type without a signature we know: the bytes can't contradict it.
    return declared
