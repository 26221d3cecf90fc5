"""The end-to-end scheme of docs/e2e.md: byte layouts, signatures, sealing, AEAD, safety numbers.

Pure computation on libsodium (PyNaCl): no I/O, no clock, no randomness except where a caller
asks for fresh keys or nonces (each such function takes them as arguments too, for the
known-answer vectors). Used by the client (``shardchat.e2e.client``) and by the server, which
checks device lists and sealed-key signatures before storing them (clients check again).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec
import nacl.bindings as sodium
import nacl.exceptions
import nacl.utils

TAG_DEVICE_LIST = b"shardchat/e2e/v1/device-list\0"
TAG_PROPOSAL = b"shardchat/e2e/v1/device\0"
TAG_ROOM_KEY = b"shardchat/e2e/v1/room-key\0"
TAG_MESSAGE = b"shardchat/e2e/v1/message\0"
TAG_SAFETY = b"shardchat/e2e/v1/safety\0"

DEVICE_ID_BYTES = 16
KEY_BYTES = 32
SIGNATURE_BYTES = 64
SEALED_KEY_BYTES = KEY_BYTES + sodium.crypto_box_SEALBYTES  # 80
AEAD_NONCE_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
AEAD_TAG_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
MAX_DEVICES = 32
MAX_SEND_NONCE_BYTES = 32
FLAG_RESET = 0x01
KIND_CREATE = 1
KIND_EDIT = 2
SAFETY_ITERATIONS = 5200
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1
_DEVICE_ENTRY = struct.Struct(">16s32s32sI")  # 84 bytes
_LIST_HEAD = struct.Struct(">QI32sB16sQH")  # after the tag

Status = Literal["ok", "unknown_device", "bad_signature", "no_key", "tampered"]


class SchemeError(ValueError):
    """Bytes that do not follow docs/e2e.md (a malformed or inconsistent structure)."""


# --- encodings ----------------------------------------------------------------------------------


def b64e(raw: bytes) -> str:
    """base64url without padding (libsodium.js ``to_base64`` default)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64d(text: str, size: int | None = None, what: str = "value") -> bytes:
    """Strict base64url without padding: canonical only (re-encoding gives the same text)."""
    if not isinstance(text, str) or not text.isascii() or "=" in text:
        raise SchemeError(f"{what} is not base64url without padding")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise SchemeError(f"{what} is not base64url without padding") from None
    if b64e(raw) != text:
        raise SchemeError(f"{what} is not canonical base64url")
    if size is not None and len(raw) != size:
        raise SchemeError(f"{what} must be {size} bytes")
    return raw


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --- keys ---------------------------------------------------------------------------------------


class DeviceSecrets(msgspec.Struct, frozen=True):
    """A device's private keys: the Ed25519 seed and the X25519 secret of each key_version."""

    device_id: bytes
    signing_seed: bytes
    encryption_secrets: dict[int, bytes]

    @property
    def signing_key(self) -> bytes:
        return signing_public(self.signing_seed)

    @property
    def key_version(self) -> int:
        return max(self.encryption_secrets)

    def encryption_key(self, version: int | None = None) -> bytes:
        return sodium.crypto_scalarmult_base(self.encryption_secrets[version or self.key_version])


def signing_public(seed: bytes) -> bytes:
    pk, _ = sodium.crypto_sign_seed_keypair(seed)
    return bytes(pk)


def new_device(device_id: bytes | None = None) -> DeviceSecrets:
    return DeviceSecrets(
        device_id or nacl.utils.random(DEVICE_ID_BYTES),
        nacl.utils.random(KEY_BYTES),
        {1: nacl.utils.random(KEY_BYTES)},
    )


def sign(seed: bytes, message: bytes) -> bytes:
    _, sk = sodium.crypto_sign_seed_keypair(seed)
    return bytes(sodium.crypto_sign(message, sk)[:SIGNATURE_BYTES])


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(signature) != SIGNATURE_BYTES or len(public_key) != KEY_BYTES:
        return False
    try:
        sodium.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True


# --- device lists (docs/e2e.md section 4.1) -----------------------------------------------------


class Device(msgspec.Struct, frozen=True, order=True):
    device_id: bytes
    signing_key: bytes
    encryption_key: bytes
    key_version: int


class DeviceList(msgspec.Struct, frozen=True):
    user_id: int
    version: int
    prev_hash: bytes
    reset: bool
    signer_device: bytes
    issued_at_ms: int
    devices: tuple[Device, ...]

    def device(self, device_id: bytes) -> Device | None:
        for d in self.devices:
            if d.device_id == device_id:
                return d
        return None


class SignedDeviceList(msgspec.Struct, frozen=True):
    body: bytes
    signature: bytes

    @property
    def hash(self) -> bytes:
        return sha256(self.body + self.signature)


def encode_device_list(dl: DeviceList) -> bytes:
    devices = sorted(dl.devices)
    if not 1 <= len(devices) <= MAX_DEVICES:
        raise SchemeError(f"a device list holds 1 to {MAX_DEVICES} devices")
    head = _LIST_HEAD.pack(
        dl.user_id,
        dl.version,
        dl.prev_hash,
        FLAG_RESET if dl.reset else 0,
        dl.signer_device,
        dl.issued_at_ms,
        len(devices),
    )
    return TAG_DEVICE_LIST + head + b"".join(_DEVICE_ENTRY.pack(*_fields(d)) for d in devices)


def _fields(d: Device) -> tuple[bytes, bytes, bytes, int]:
    return d.device_id, d.signing_key, d.encryption_key, d.key_version


def decode_device_list(body: bytes) -> DeviceList:
    if not body.startswith(TAG_DEVICE_LIST):
        raise SchemeError("not a device list")
    at = len(TAG_DEVICE_LIST)
    if len(body) < at + _LIST_HEAD.size:
        raise SchemeError("device list too short")
    user_id, version, prev, flags, signer, issued, count = _LIST_HEAD.unpack_from(body, at)
    at += _LIST_HEAD.size
    if flags & ~FLAG_RESET:
        raise SchemeError("unknown device list flags")
    if not 1 <= count <= MAX_DEVICES or len(body) != at + count * _DEVICE_ENTRY.size:
        raise SchemeError("device list size does not match its count")
    devices = tuple(
        Device(*_DEVICE_ENTRY.unpack_from(body, at + i * _DEVICE_ENTRY.size)) for i in range(count)
    )
    ids = [d.device_id for d in devices]
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise SchemeError("devices must be in strictly ascending device_id order")
    if version < 1 or any(d.key_version < 1 for d in devices):
        raise SchemeError("versions start at 1")
    return DeviceList(user_id, version, prev, bool(flags & FLAG_RESET), signer, issued, devices)


def sign_device_list(dl: DeviceList, signer: DeviceSecrets) -> SignedDeviceList:
    body = encode_device_list(dl)
    return SignedDeviceList(body, sign(signer.signing_seed, body))


class VerifiedChain(msgspec.Struct, frozen=True):
    """The outcome of checking a chain: its head list and hash, and the anchor key."""

    head: DeviceList
    head_hash: bytes
    anchor: bytes
    anchor_version: int  # the version whose reset set the anchor


def check_next(entry: SignedDeviceList, user_id: int, prev: VerifiedChain | None) -> VerifiedChain:
    """Check one entry on top of the verified chain so far (None: it must be version 1)."""
    dl = decode_device_list(entry.body)
    if dl.user_id != user_id:
        raise SchemeError("device list of another user")
    want_version = 1 if prev is None else prev.head.version + 1
    if dl.version != want_version:
        raise SchemeError(f"device list version {dl.version}, expected {want_version}")
    want_prev = bytes(32) if prev is None else prev.head_hash
    if dl.prev_hash != want_prev:
        raise SchemeError("device list prev_hash does not match the previous version")
    if prev is None and not dl.reset:
        raise SchemeError("version 1 of a device list must be a reset")
    if dl.reset:
        signer = dl.device(dl.signer_device)
        if signer is None:
            raise SchemeError("a reset must be signed by a device it lists")
    else:
        assert prev is not None
        signer = prev.head.device(dl.signer_device)
        if signer is None:
            raise SchemeError("signed by a device not in the previous version")
        for d in dl.devices:
            old = prev.head.device(d.device_id)
            if old is None:
                continue
            if old.signing_key != d.signing_key:
                raise SchemeError("a device's signing key changed")
            if d.key_version < old.key_version or (
                d.key_version == old.key_version and d.encryption_key != old.encryption_key
            ):
                raise SchemeError("a device's encryption key went back or changed in place")
    if not verify(signer.signing_key, entry.body, entry.signature):
        raise SchemeError("device list signature does not verify")
    if dl.reset or prev is None:
        return VerifiedChain(dl, entry.hash, signer.signing_key, dl.version)
    return VerifiedChain(dl, entry.hash, prev.anchor, prev.anchor_version)


def verify_chain(
    entries: Sequence[SignedDeviceList], user_id: int, start: VerifiedChain | None = None
) -> VerifiedChain:
    """Check entries (oldest first) on top of ``start``; raises SchemeError on any fault."""
    state = start
    for entry in entries:
        state = check_next(entry, user_id, state)
    if state is None:
        raise SchemeError("empty device list chain")
    return state


# --- device proposals (section 4.2) -------------------------------------------------------------

_PROPOSAL = struct.Struct(">Q16s32s32sIQ")


def encode_proposal(user_id: int, device: Device, created_at_ms: int) -> bytes:
    return TAG_PROPOSAL + _PROPOSAL.pack(user_id, *_fields(device), created_at_ms)


def decode_proposal(body: bytes) -> tuple[int, Device, int]:
    if not body.startswith(TAG_PROPOSAL) or len(body) != len(TAG_PROPOSAL) + _PROPOSAL.size:
        raise SchemeError("not a device proposal")
    user_id, did, skey, ekey, kv, created = _PROPOSAL.unpack_from(body, len(TAG_PROPOSAL))
    if kv < 1:
        raise SchemeError("versions start at 1")
    return user_id, Device(did, skey, ekey, kv), created


def check_proposal(body: bytes, signature: bytes, user_id: int) -> Device:
    owner, device, _ = decode_proposal(body)
    if owner != user_id:
        raise SchemeError("proposal of another user")
    if not verify(device.signing_key, body, signature):
        raise SchemeError("proposal signature does not verify")
    return device


# --- sealed room keys (section 5) ---------------------------------------------------------------

_ROOM_KEY = struct.Struct(">QIQ16sIQ16s80s")


class KeyStatement(msgspec.Struct, frozen=True):
    room_id: int
    epoch: int
    recipient_user: int
    recipient_device: bytes
    recipient_key_version: int
    sender_user: int
    sender_device: bytes
    sealed: bytes

    def encode(self) -> bytes:
        if not 1 <= self.epoch <= _U32_MAX:
            raise SchemeError("epoch out of range")
        return TAG_ROOM_KEY + _ROOM_KEY.pack(
            self.room_id,
            self.epoch,
            self.recipient_user,
            self.recipient_device,
            self.recipient_key_version,
            self.sender_user,
            self.sender_device,
            self.sealed,
        )


def seal_room_key(room_key: bytes, recipient_encryption_key: bytes) -> bytes:
    return bytes(sodium.crypto_box_seal(room_key, recipient_encryption_key))


def open_room_key(sealed: bytes, encryption_secret: bytes) -> bytes | None:
    public = sodium.crypto_scalarmult_base(encryption_secret)
    try:
        key = bytes(sodium.crypto_box_seal_open(sealed, public, encryption_secret))
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return None
    return key if len(key) == KEY_BYTES else None


# --- messages (section 6.2) ---------------------------------------------------------------------


class MessageContext(msgspec.Struct, frozen=True):
    """What a message's associated data binds: where, under which key, by whom, and which send
    (kind 1 with the send nonce) or which message it edits (kind 2 with the message id)."""

    room_id: int
    epoch: int
    author_id: int
    sender_device: bytes
    kind: int
    ref: bytes

    @staticmethod
    def create(
        room_id: int, epoch: int, author_id: int, device: bytes, send_nonce: str
    ) -> MessageContext:
        return MessageContext(room_id, epoch, author_id, device, KIND_CREATE, send_nonce.encode())

    @staticmethod
    def edit(
        room_id: int, epoch: int, author_id: int, device: bytes, message_id: int
    ) -> MessageContext:
        ref = struct.pack(">Q", message_id)
        return MessageContext(room_id, epoch, author_id, device, KIND_EDIT, ref)

    def aad(self) -> bytes:
        if not 1 <= len(self.ref) <= MAX_SEND_NONCE_BYTES:
            raise SchemeError("message reference must be 1 to 32 bytes")
        if len(self.sender_device) != DEVICE_ID_BYTES or not 1 <= self.epoch <= _U32_MAX:
            raise SchemeError("bad sender device or epoch")
        head = struct.pack(">QIQ", self.room_id, self.epoch, self.author_id)
        tail = struct.pack(">BB", self.kind, len(self.ref))
        return TAG_MESSAGE + head + self.sender_device + tail + self.ref


class Envelope(msgspec.Struct, frozen=True):
    """The ``encrypted`` payload of a message, binary (``wire()`` gives the base64url form)."""

    ciphertext: bytes
    nonce: bytes
    epoch: int
    sender_device: bytes
    signature: bytes

    def wire(self) -> dict[str, str | int]:
        return {
            "ciphertext": b64e(self.ciphertext),
            "nonce": b64e(self.nonce),
            "epoch": self.epoch,
            "sender_device": b64e(self.sender_device),
            "signature": b64e(self.signature),
        }


#: The payload's field names on the gateway (snake_case) and in GraphQL (camelCase).
_GRAPHQL_NAMES = {
    "ciphertext": "ciphertext",
    "nonce": "nonce",
    "epoch": "epoch",
    "sender_device": "senderDevice",
    "signature": "signature",
}


def wire_to_graphql(wire: Mapping[str, Any]) -> dict[str, Any]:
    """``{ciphertext, nonce, epoch, sender_device, signature}`` -> the GraphQL form."""
    return {camel: wire[snake] for snake, camel in _GRAPHQL_NAMES.items()}


def graphql_to_wire(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The GraphQL ``EncryptedPayload(Input)`` -> the gateway/stored form."""
    return {snake: payload[camel] for snake, camel in _GRAPHQL_NAMES.items()}


def envelope_from_wire(d: Mapping[str, object], max_ciphertext: int) -> Envelope:
    """Decode and size-check a wire envelope (the server's and the client's parsing)."""
    epoch = d.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 1 <= epoch <= _U32_MAX:
        raise SchemeError("epoch must be an integer from 1 to 2^32-1")
    ct = b64d(str(d.get("ciphertext", "")), what="ciphertext")
    if not AEAD_TAG_BYTES < len(ct) <= max_ciphertext:
        raise SchemeError(f"ciphertext must be {AEAD_TAG_BYTES + 1} to {max_ciphertext} bytes")
    return Envelope(
        ct,
        b64d(str(d.get("nonce", "")), AEAD_NONCE_BYTES, "nonce"),
        epoch,
        b64d(str(d.get("sender_device", "")), DEVICE_ID_BYTES, "sender_device"),
        b64d(str(d.get("signature", "")), SIGNATURE_BYTES, "signature"),
    )


def encode_plaintext(text: str) -> bytes:
    return msgspec.json.encode({"text": text})


def encrypt_message(
    ctx: MessageContext, plaintext: bytes, room_key: bytes, signer: DeviceSecrets, nonce: bytes
) -> Envelope:
    if signer.device_id != ctx.sender_device:
        raise SchemeError("the signer is not the context's sender device")
    aad = ctx.aad()
    ct = bytes(sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, room_key))
    signature = sign(signer.signing_seed, aad + nonce + ct)
    return Envelope(ct, nonce, ctx.epoch, ctx.sender_device, signature)


def verify_message(ctx: MessageContext, env: Envelope, signing_key: bytes) -> bool:
    return verify(signing_key, ctx.aad() + env.nonce + env.ciphertext, env.signature)


def decrypt_message(ctx: MessageContext, env: Envelope, room_key: bytes) -> str | None:
    """The text, or None if the AEAD fails or the plaintext is not ``{"text": str}``."""
    try:
        raw = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            env.ciphertext, ctx.aad(), env.nonce, room_key
        )
        obj = msgspec.json.decode(raw)
    except (nacl.exceptions.CryptoError, msgspec.DecodeError, nacl.exceptions.ValueError):
        return None
    text = obj.get("text") if isinstance(obj, dict) else None
    return text if isinstance(text, str) else None


def open_message(
    ctx: MessageContext,
    env: Envelope,
    sender: Device | None,
    room_key: bytes | None,
) -> tuple[Status, str | None]:
    """The receiver's checks of docs/e2e.md section 6.2, in order."""
    if sender is None:
        return "unknown_device", None
    if not verify_message(ctx, env, sender.signing_key):
        return "bad_signature", None
    if room_key is None:
        return "no_key", None
    text = decrypt_message(ctx, env, room_key)
    return ("ok", text) if text is not None else ("tampered", None)


# --- safety numbers (section 4.4) ---------------------------------------------------------------


def fingerprint(key: bytes, user_id: int) -> str:
    """30 digits: the user's part of a safety number (``key`` = the anchor), or a device's
    fingerprint (``key`` = the device's signing key)."""
    h = hashlib.sha512(TAG_SAFETY + key + struct.pack(">Q", user_id)).digest()
    for _ in range(SAFETY_ITERATIONS):
        h = hashlib.sha512(h + key).digest()
    return "".join(f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def safety_number(user_a: int, anchor_a: bytes, user_b: int, anchor_b: bytes) -> str:
    """60 digits, the lower user id's part first: both users compute the same number."""
    (lo, ka), (hi, kb) = sorted(((user_a, anchor_a), (user_b, anchor_b)))
    return fingerprint(ka, lo) + fingerprint(kb, hi)


def grouped(digits: str) -> str:
    return " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))
