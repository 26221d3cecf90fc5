"""Install the npm packages of a folder with a committed lock file when they are missing.

``ensure_node_deps()`` runs ``npm ci`` (the exact tree of the committed package-lock.json) into
``loadtest/peers/node/node_modules`` (the Socket.IO server; git-ignored) unless that folder
already holds the tree of the current lock file, recorded by a stamp (the lock's SHA-256) written
after a successful install. ``ensure_node_deps(folder, marker=package)`` does the same for
another folder (tests/node, the GraphQL client conventions), ``marker`` being a package the
install must have produced. Idempotent and safe to call from concurrent processes (a file lock
serializes them); the peers scenario and the tests call it before starting the server. ``npm ci``
runs fine as root (npm >= 7 runs no install scripts as another user, and neither socket.io nor
the client libraries have any). Where there is no npm at all and we are root on Debian, Node.js
and npm come from Debian's packages.

``python -m loadtest.peers.node_deps`` does the same from a shell.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NODE_DIR = Path(__file__).resolve().parent / "node"
STAMP = ".shardchat-lock-sha256"


class NodeSetupError(RuntimeError):
    """Node.js / npm missing, or ``npm ci`` failed."""


def _lock_digest(node_dir: Path) -> str:
    return hashlib.sha256((node_dir / "package-lock.json").read_bytes()).hexdigest()


def installed(node_dir: Path = NODE_DIR, marker: str = "socket.io") -> bool:
    """node_modules holds the tree of the current package-lock.json."""
    stamp = node_dir / "node_modules" / STAMP
    return (
        stamp.is_file()
        and stamp.read_text().strip() == _lock_digest(node_dir)
        and (node_dir / "node_modules" / marker / "package.json").is_file()
    )


def node_binary() -> str:
    """The ``node`` executable (installing Node.js from Debian's packages if root and absent)."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        _apt_install_node()
        node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        raise NodeSetupError("node not found: install Node.js >= 18 with npm")
    return node


def npm_binary() -> str:
    npm = shutil.which("npm")
    if npm is None:
        _apt_install_node()
        npm = shutil.which("npm")
    if npm is None:
        raise NodeSetupError("npm not found: install Node.js >= 18 with npm")
    return npm


def _apt_install_node() -> None:
    """Debian's nodejs + npm, only as root on a Debian-like system; silent otherwise."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "nodejs", "npm"]):
        subprocess.run(cmd, env=env, check=False, timeout=900, stdout=subprocess.DEVNULL)


def ensure_node_deps(
    node_dir: Path = NODE_DIR, *, marker: str = "socket.io", timeout_s: float = 900.0
) -> Path:
    """``npm ci`` into ``node_dir/node_modules`` unless already installed; that folder."""
    modules = node_dir / "node_modules"
    if installed(node_dir, marker):
        return modules
    key = hashlib.sha256(str(node_dir).encode()).hexdigest()[:12]
    lock_path = Path(tempfile.gettempdir()) / f"shardchat-npm-{key}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be installing: wait for it
        try:
            if installed(node_dir, marker):
                return modules
            npm = npm_binary()
            env = os.environ | {"npm_config_update_notifier": "false", "npm_config_fund": "false"}
            cmd = [npm, "ci", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"]
            print(f"{' '.join(cmd[1:])} in {node_dir}", file=sys.stderr)
            try:
                done = subprocess.run(
                    cmd,
                    cwd=node_dir,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise NodeSetupError(f"npm ci timed out after {timeout_s:.0f} s") from exc
            if done.returncode != 0:
                raise NodeSetupError(
                    f"npm ci failed ({done.returncode}) in {node_dir}:\n{done.stderr[-4000:]}"
                )
            if not (modules / marker / "package.json").is_file():
                raise NodeSetupError(f"npm ci left no {marker} in {modules}")
            (modules / STAMP).write_text(_lock_digest(node_dir) + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return modules


if __name__ == "__main__":
    print(ensure_node_deps())
