"""The Python client's local device state: one JSON file per user, readable by its owner only.

``<key_dir>/<user_id>.device.json`` holds the device's private keys (the Ed25519 seed and every
X25519 secret it had, so keys sealed to an older ``key_version`` still open), the epoch keys it
opened, and its pins of other users' device lists (docs/e2e.md sections 4.3 and 8). The folder is
created 0700 and the file 0600; it is replaced atomically (write, fsync, rename) so a crash
never leaves half a key file.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

ENV_KEY_DIR = "SHARDCHAT_E2E_KEY_DIR"


class Pin(msgspec.Struct):
    """What this device saw of a user's chain: the anchor and the highest version with its
    hash (a lower head later is a rollback, another hash at this version a fork)."""

    anchor: bytes
    version: int
    head_hash: bytes


class DeviceState(msgspec.Struct):
    user_id: int
    device_id: bytes
    signing_seed: bytes
    encryption_secrets: dict[int, bytes]  # key_version -> X25519 secret
    room_keys: dict[int, dict[int, bytes]] = {}  # room id -> epoch -> room key
    pins: dict[int, Pin] = {}  # user id -> pin


def default_key_dir() -> Path:
    return Path(os.environ.get(ENV_KEY_DIR) or Path.home() / ".shardchat" / "e2e")


class KeyFile:
    def __init__(self, key_dir: str | os.PathLike[str] | None, user_id: int) -> None:
        self.dir = Path(key_dir) if key_dir is not None else default_key_dir()
        self.path = self.dir / f"{user_id}.device.json"

    def load(self) -> DeviceState | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return msgspec.json.decode(raw, type=DeviceState)

    def save(self, state: DeviceState) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an older tmp file may have had other bits
            os.write(fd, msgspec.json.encode(state))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
