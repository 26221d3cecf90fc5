"""Run ``shardchat dev`` (or ``dev --cluster``) as a real subprocess for end-to-end tests.

Shared by tests/integration/test_dev_*.py and the browser tests. Ports are picked free, settings
travel by environment (the way an operator sets them), and the inherited ``SHARDCHAT_*`` variables
are dropped unless given again, so a test run's engine settings never leak into the dev process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

READY_LINE = "is up"


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on loopback (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free ports (gateways of a cluster use base + i)."""
    for _ in range(200):
        base = free_ports(1)[0]
        if base + count >= 65535:
            continue
        try:
            socks = []
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


def dev_cluster_env(
    gateways: int, *, pg_dsn: str, kafka_bootstrap: str, topic: str, partitions: int, redis_url: str
) -> dict[str, str]:
    """Settings of a ``shardchat dev --cluster --gateways N`` on the given engines: free ports
    for the edge, the router and the run of gateway ports (``SHARDCHAT_GATEWAY_PORT`` + i)."""
    gw_base = free_port_run(gateways)
    taken = range(gw_base, gw_base + gateways)
    edge_port, router_port = [p for p in free_ports(gateways + 4) if p not in taken][:2]
    return {
        "SHARDCHAT_EDGE_PORT": str(edge_port),
        "SHARDCHAT_ROUTER_PORT": str(router_port),
        "SHARDCHAT_GATEWAY_PORT": str(gw_base),
        "SHARDCHAT_POSTGRES_DSN": pg_dsn,
        "SHARDCHAT_POSTGRES_POOL_SIZE": "3",
        "SHARDCHAT_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SHARDCHAT_KAFKA_TOPIC": topic,
        "SHARDCHAT_KAFKA_PARTITIONS": str(partitions),
        "SHARDCHAT_REDIS_URL": redis_url,
        "SHARDCHAT_GATEWAY_TTL_S": "3",
    }


def shardchat_command() -> list[str]:
    """The installed console script next to this interpreter (what a user runs), else -m."""
    script = Path(sys.executable).with_name("shardchat")
    return [str(script)] if script.exists() else [sys.executable, "-m", "shardchat.cli"]


@dataclass
class DevProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    edge_url: str
    env: dict[str, str]

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, within_s: float, *, after: int = 0) -> None:
        """Until ``text`` appears in the output (past offset ``after``); fail with the output."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if text in self.output()[after:]:
                return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"shardchat exited with {self.proc.returncode} before {text!r}:\n"
                    + self.output()
                )
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {within_s}s:\n" + self.output())

    def interrupt(self, sig: int = signal.SIGINT, within_s: float = 30.0) -> tuple[int, float]:
        """Send ``sig``; (exit code, seconds it took to exit)."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(within_s)
        return code, time.monotonic() - started


async def wait_http_ok(url: str, within_s: float = 30) -> None:
    """Until ``GET url`` answers 200 (a service's /readyz, say); fail after ``within_s``."""
    async with httpx.AsyncClient(timeout=2) as http:
        for _ in range(int(within_s / 0.1)):
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} not ready within {within_s}s")


# deploy/local/engines.sh's own variables (where the engines listen) pass through: they are not
# settings, and a run on other ports needs them.
_ENGINE_VARS = {
    "SHARDCHAT_STATE_DIR",
    "SHARDCHAT_PG_PORT",
    "SHARDCHAT_REDIS_PORT",
    "SHARDCHAT_KAFKA_PORT",
    "SHARDCHAT_KAFKA_CONTROLLER_PORT",
    # the engines `engines.sh up all` also starts: without these a `dev --cluster` under test
    # would start (or find another engineer's) engines on the default ports
    "SHARDCHAT_NATS_PORT",
    "SHARDCHAT_NATS_MONITOR_PORT",
    "SHARDCHAT_KAFKA3_PORT",
    "SHARDCHAT_KAFKA3_CONTROLLER_PORT",
    "SHARDCHAT_REDIS_CLUSTER_PORT",
    "SHARDCHAT_REDIS_CLUSTER_BUS_PORT",
    "SHARDCHAT_HAPROXY_PORT",
    "SHARDCHAT_PROMETHEUS_PORT",
    "SHARDCHAT_S3_PORT",
}


def base_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SHARDCHAT_") or k in _ENGINE_VARS
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@contextlib.contextmanager
def run_dev(
    workdir: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    *,
    ready_within_s: float = 60.0,
) -> Iterator[DevProcess]:
    """Start ``shardchat dev ARGS`` in ``workdir``; yield once it printed its URLs; kill it after
    (a test that stopped it already leaves nothing to do)."""
    env = dict(env or {})
    if "SHARDCHAT_EDGE_PORT" not in env:
        edge, gateway, router = free_ports(3)
        env.update(
            SHARDCHAT_EDGE_PORT=str(edge),
            SHARDCHAT_GATEWAY_PORT=str(gateway),
            SHARDCHAT_ROUTER_PORT=str(router),
        )
    full_env = base_env(env)
    log_path = workdir / "shardchat-dev.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*shardchat_command(), "dev", *args],
            cwd=workdir,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our own group: a stray Ctrl-C of pytest is not its signal
        )
    dev = DevProcess(proc, log_path, f"http://127.0.0.1:{env['SHARDCHAT_EDGE_PORT']}", full_env)
    try:
        dev.wait_for(READY_LINE, ready_within_s)
        yield dev
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
