"""Centrifugo (Go) as a peer target: its binary, its configuration, its connection tokens.

``ensure_centrifugo()`` builds the pinned release once with the Go toolchain
(``go install github.com/centrifugal/centrifugo/v6@v6.9.1``) into the engines' state folder
(``deploy/local/state/centrifugo/v6.9.1/centrifugo``, git-ignored) and reuses it afterwards;
a file lock serializes concurrent callers. Only the benchmark set-up calls it (the ``peers``
scenario, or ``python -m loadtest.peers.centrifugo`` from a shell): the test command never
builds it, and the integration test of this target is skipped when the binary is absent.

The configuration (``config()``) is the closest Centrifugo gets to shardchat's guarantees:

- the Redis engine (the ``deploy/local`` Redis, keys under a per-run prefix): publications go
  through Redis, where each channel keeps a history stream (``history_size`` 256, TTL 10 min);
- ``force_recovery``: a client that reconnects resubscribes with its last ``offset`` + ``epoch``
  and gets what it missed from that history; ``force_positioning``: a connected client whose
  stream position falls behind (a lost publication) is told to reconnect and recover;
- publishes through the server HTTP API (``POST /api/publish``, ``X-API-Key``), the way an
  application backend publishes; its answer (``offset``, ``epoch``) is the acknowledgement;
- connection JWTs (HS256, ``sub`` = the user), channels ``room:<id>`` that clients subscribe to.

What differs from shardchat (docs/benchmarks.md repeats it): an acknowledged publish is in
Redis memory and its append-only file (``appendfsync everysec``: up to a second of publishes
can be lost on a power cut), not committed to disk before the answer; history is bounded (256
per channel, 10 minutes), so a client away longer, or behind by more, is told ``recovered:
false`` (shardchat replays up to 10,000 events from PostgreSQL, its source of truth, and keeps
everything); nothing is stored beyond that history (no database, no message ids, no
membership check on publish); the publish carries an ``idempotency_key`` (Centrifugo keeps it
5 minutes) where shardchat's ``(author, nonce)`` is permanent.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VERSION = "v6.9.1"
MODULE = "github.com/centrifugal/centrifugo/v6"
ROOT = Path(__file__).resolve().parents[2]
STATE = ROOT / "deploy" / "local" / "state" / "centrifugo"
HISTORY_SIZE = 256
HISTORY_TTL = "600s"
NAMESPACE = "room"


class CentrifugoSetupError(RuntimeError):
    """No Go toolchain, or the build failed."""


def binary_path(state: Path = STATE) -> Path:
    return state / VERSION / "centrifugo"


def installed(state: Path = STATE) -> bool:
    return os.access(binary_path(state), os.X_OK)


def go_binary() -> str:
    """The ``go`` command: on PATH, else the official toolchain's default location."""
    found = shutil.which("go")
    if found:
        return found
    if os.access("/usr/local/go/bin/go", os.X_OK):
        return "/usr/local/go/bin/go"
    raise CentrifugoSetupError(
        "the Go toolchain (go >= 1.24) is needed to build Centrifugo: put `go` on PATH"
    )


def ensure_centrifugo(state: Path = STATE, *, timeout_s: float = 1200.0) -> Path:
    """The cached Centrifugo binary, built with ``go install`` first when missing."""
    target = binary_path(state)
    if installed(state):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (state / ".install.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait
        try:
            if installed(state):
                return target
            go = go_binary()
            cmd = [go, "install", f"{MODULE}@{VERSION}"]
            print(f"peers: {' '.join(cmd)} (once; cached in {target.parent})", file=sys.stderr)
            env = os.environ | {"GOBIN": str(target.parent), "CGO_ENABLED": "0"}
            try:
                done = subprocess.run(
                    cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise CentrifugoSetupError(f"go install timed out after {timeout_s:.0f} s") from exc
            if done.returncode != 0 or not installed(state):
                raise CentrifugoSetupError(
                    f"go install failed ({done.returncode}):\n{done.stderr[-4000:]}"
                )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def channel(room_id: int) -> str:
    return f"{NAMESPACE}:{room_id}"


def config(
    *,
    port: int,
    redis_url: str,
    prefix: str,
    token_key: str,
    api_key: str,
    host: str = "127.0.0.1",
) -> dict[str, Any]:
    """Centrifugo v6's configuration for the benchmark (see the module docstring)."""
    return {
        "http_server": {"address": host, "port": port},
        "log": {"level": "warn"},
        "engine": {"type": "redis", "redis": {"address": [redis_url], "prefix": prefix}},
        "client": {
            "token": {"hmac_secret_key": token_key},
            "allowed_origins": ["*"],
        },
        "http_api": {"key": api_key},
        "health": {"enabled": True},
        "channel": {
            "namespaces": [
                {
                    "name": NAMESPACE,
                    "allow_subscribe_for_client": True,
                    "history_size": HISTORY_SIZE,
                    "history_ttl": HISTORY_TTL,
                    "force_recovery": True,
                    "force_positioning": True,
                }
            ]
        },
    }


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


_HEADER = _b64(b'{"alg":"HS256","typ":"JWT"}')


def connection_token(user_id: int, key: str, ttl_s: int = 24 * 3600) -> str:
    """An HS256 connection JWT for ``user_id`` (what an application backend would mint)."""
    claims = json.dumps({"sub": str(user_id), "exp": int(time.time()) + ttl_s}).encode()
    signing = f"{_HEADER}.{_b64(claims)}"
    sig = hmac.new(key.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(sig)}"


def version_banner(binary: Path) -> str:
    """The pinned module version, with ``centrifugo version``'s line (a plain ``go install``
    stamps no version into the binary: it says v0.0.0 and the Go version)."""
    done = subprocess.run(
        [str(binary), "version"], capture_output=True, text=True, timeout=30, check=False
    )
    lines = (done.stdout or done.stderr).strip().splitlines()
    return f"{MODULE}@{VERSION}: " + (lines[0] if done.returncode == 0 and lines else "?")


if __name__ == "__main__":
    print(ensure_centrifugo())
