"""``shardchat dev --cluster``: the real engines plus one supervised process per service.

``Supervisor`` keeps a set of child processes running: it prefixes their output with their
name, reports a child that exits on its own and restarts it after a backoff that doubles up to
``backoff_max_s`` (and resets once the child stayed up for ``stable_s``), and on stop sends
SIGTERM to every child, then SIGKILL to those still alive after ``grace_s``.

Children run in their own session, so a terminal's Ctrl-C reaches only the supervisor, which
then stops them in order; were they in its process group, each child would see SIGINT at the
same moment and the supervisor could not tell a crash from a shutdown. On Linux each child also
asks the kernel for SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), so a SIGKILLed
supervisor leaves no orphan holding ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from shardchat.config import Settings

log = logging.getLogger("shardchat.supervisor")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn of each child: SIGTERM it when the supervisor goes away (Linux only)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str]


@dataclass
class Child:
    spec: ChildSpec
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    pids: list[int] = field(default_factory=list)  # every pid it ran as, newest last


class Supervisor:
    def __init__(
        self,
        specs: Iterable[ChildSpec],
        *,
        grace_s: float = 15.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        stable_s: float = 30.0,
        out: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = [Child(spec) for spec in specs]
        self.grace_s = grace_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_s = stable_s
        self._out = out or sys.stdout
        self._clock = clock
        self._stopping = asyncio.Event()
        # Held while a child is being spawned: stop() takes it, so no child starts after stop()
        # looked for the live ones (it would outlive the supervisor).
        self._spawn_lock = asyncio.Lock()
        self._watchers: list[asyncio.Task[None]] = []
        self._pumps: set[asyncio.Task[None]] = set()

    def say(self, text: str) -> None:
        self._out.write(f"[supervisor] {text}\n")
        self._out.flush()

    async def start(self) -> None:
        """Start every child, in order, each watched by its own task."""
        for child in self.children:
            async with self._spawn_lock:
                if self._stopping.is_set():
                    return
                await self._spawn(child)
            self._watchers.append(asyncio.create_task(self._watch(child)))

    async def stop(self) -> None:
        """SIGTERM every child, SIGKILL the ones still running after the grace period."""
        self._stopping.set()
        async with self._spawn_lock:
            live = [
                c.proc for c in self.children if c.proc is not None and c.proc.returncode is None
            ]
            for proc in live:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        if live:
            _done, pending = await asyncio.wait(
                [asyncio.ensure_future(p.wait()) for p in live], timeout=self.grace_s
            )
            for fut in pending:
                fut.cancel()
            for proc in live:
                if proc.returncode is None:
                    self.say(f"pid {proc.pid} ignored SIGTERM for {self.grace_s}s: SIGKILL")
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        for task in self._watchers:
            task.cancel()
        for task in [*self._watchers, *self._pumps]:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _spawn(self, child: Child) -> None:
        proc = await asyncio.create_subprocess_exec(
            *child.spec.argv,
            env=dict(child.spec.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        child.proc = proc
        child.started_at = self._clock()
        child.pids.append(proc.pid)
        self.say(f"started {child.spec.name} (pid {proc.pid})")
        assert proc.stdout is not None
        pump = asyncio.create_task(self._pump(child.spec.name, proc.stdout))
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self._out.write(f"[{name}] {line.decode(errors='replace')}")
            if not line.endswith(b"\n"):
                self._out.write("\n")
            self._out.flush()

    async def _watch(self, child: Child) -> None:
        backoff = self.backoff_initial_s
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            if self._stopping.is_set():
                return
            if self._clock() - child.started_at >= self.stable_s:
                backoff = self.backoff_initial_s  # it ran fine for a while: not a crash loop
            self.say(
                f"{child.spec.name} (pid {child.proc.pid}) exited with code {code}; "
                f"restarting in {backoff:.1f}s"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
                return  # asked to stop while waiting
            backoff = min(backoff * 2, self.backoff_max_s)
            async with self._spawn_lock:
                if self._stopping.is_set():
                    return
                child.restarts += 1
                await self._spawn(child)


# --- the dev cluster ------------------------------------------------------------------------------


def engines_script() -> Path | None:
    """deploy/local/engines.sh of this checkout (editable install) or of the current folder."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        script = root / "deploy" / "local" / "engines.sh"
        if script.is_file():
            return script
    return None


async def _run_quiet(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run to completion with output passed through; the exit code."""
    proc = await asyncio.create_subprocess_exec(*argv, env=None if env is None else dict(env))
    return await proc.wait()


#: The engines ``dev --cluster`` runs on (``engines.sh up all`` also starts the alternatives).
CLUSTER_ENGINES = ("pg", "redis", "kafka", "s3")  # s3: s3proxy, the object store


async def ensure_engines(script: Path, engines: Sequence[str] = CLUSTER_ENGINES) -> bool:
    """``engines.sh up`` each of ``engines``; on failure ``install`` first, then once more."""

    async def up() -> bool:
        for engine in engines:
            if await _run_quiet(["bash", str(script), "up", engine]) != 0:
                return False
        return True

    if await up():
        return True
    print("[supervisor] engines did not start: installing them", flush=True)
    if await _run_quiet(["bash", str(script), "install"]) != 0:
        return False
    return await up()


async def engines_env(script: Path) -> dict[str, str]:
    """The ``export K=V`` lines of ``engines.sh env`` as a dict."""
    proc = await asyncio.create_subprocess_exec(
        "bash", str(script), "env", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    env: dict[str, str] = {}
    for line in out.decode().splitlines():
        key, sep, value = line.removeprefix("export ").partition("=")
        if sep and key.startswith("SHARDCHAT_"):
            env[key.strip()] = value.strip().strip("'\"")
    return env


def gateway_ports(settings: Settings, count: int) -> list[int]:
    """``gateway_port`` + i, skipping the edge and router ports (the defaults 8081, 8082 would
    otherwise put gateway 1 on the router's port)."""
    taken = {settings.edge_port, settings.router_port}
    ports: list[int] = []
    port = settings.gateway_port
    while len(ports) < count:
        if port not in taken:
            ports.append(port)
        port += 1
    return ports


def cluster_env(
    settings: Settings,
    environ: Mapping[str, str],
    engines: Mapping[str, str],
    config_path: str | None,
) -> dict[str, str]:
    """The environment every child shares: the engines' addresses unless the caller set them,
    the scale-out adapters, one JWT key set for all (a token must verify on every node)."""
    env = dict(environ)
    for key, value in engines.items():
        env.setdefault(key, value)
    env.update(
        SHARDCHAT_STORE="postgres",
        SHARDCHAT_EVENT_LOG="kafka",
        SHARDCHAT_REGISTRY="redis",
        SHARDCHAT_OBJECT_STORE="s3",
        PYTHONUNBUFFERED="1",  # children's lines reach the prefixing pump as they are printed
    )
    if not settings.jwt_keys:
        env["SHARDCHAT_JWT_KEYS"] = json.dumps(
            {f"dev-{secrets.token_hex(4)}": secrets.token_urlsafe(48)}
        )
    if config_path:
        env["SHARDCHAT_CONFIG"] = str(Path(config_path).resolve())
    return env


def cluster_specs(settings: Settings, gateways: int, env: Mapping[str, str]) -> list[ChildSpec]:
    """router, N gateways, then the edge. Worker ids: 1 = edge, 2.. = gateways (unique writers)."""
    cmd = [sys.executable, "-m", "shardchat.cli"]
    run = secrets.token_hex(2)  # gateway ids unique per cluster run, kept across restarts
    specs = [ChildSpec("router", [*cmd, "router"], env)]
    for i, port in enumerate(gateway_ports(settings, gateways)):
        specs.append(
            ChildSpec(
                f"gateway-{i}",
                [*cmd, "gateway"],
                {
                    **env,
                    "SHARDCHAT_GATEWAY_PORT": str(port),
                    "SHARDCHAT_GATEWAY_ID": f"gw-{run}-{i}",
                    "SHARDCHAT_WORKER_ID": str(2 + i),
                },
            )
        )
    specs.append(ChildSpec("edge", [*cmd, "edge"], {**env, "SHARDCHAT_WORKER_ID": "1"}))
    return specs


async def _wait_http(url: str, within_s: float) -> bool:
    import httpx

    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(timeout=2.0) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url)).status_code == 200:
                    return True
            await asyncio.sleep(0.2)
    return False


def balancer_env(
    settings: Settings, gateways: int, env: Mapping[str, str], port: int
) -> dict[str, str]:
    """``env`` for a cluster behind HAProxy on ``port``: clients are placed on the balancer's
    ``/ws`` (it picks a gateway), whose X-Forwarded-For the services trust; the same
    environment tells ``engines.sh up haproxy`` where the edge and the gateways listen."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return {
        **env,
        "SHARDCHAT_PUBLIC_GATEWAY_URL": f"ws://{host}:{port}/ws",
        "SHARDCHAT_TRUSTED_PROXIES": json.dumps(["127.0.0.1"]),
        "SHARDCHAT_HAPROXY_PORT": str(port),
        "SHARDCHAT_EDGE_PORT": str(settings.edge_port),
        "SHARDCHAT_ROUTER_PORT": str(settings.router_port),
        "SHARDCHAT_GATEWAY_PORT": str(settings.gateway_port),
        "SHARDCHAT_GATEWAYS": str(gateways),
    }


async def run_cluster(
    settings: Settings, gateways: int, config_path: str | None, *, balancer: bool = False
) -> int:
    """Engines up, migrate once, then supervise router + N gateways + edge until a signal;
    with ``balancer``, HAProxy in front once they run."""
    from shardchat.services import stop_event

    script = engines_script()
    if script is None:
        print("shardchat dev --cluster: deploy/local/engines.sh not found", file=sys.stderr)
        return 2
    stop = stop_event()
    if not await ensure_engines(script):
        print("shardchat dev --cluster: the engines did not start", file=sys.stderr)
        return 1
    env = cluster_env(settings, os.environ, await engines_env(script), config_path)
    public = ""
    if balancer:
        port = int(env.get("SHARDCHAT_HAPROXY_PORT") or 58080)
        env = balancer_env(settings, gateways, env, port)
        public = f"http://127.0.0.1:{port}"
    if await _run_quiet([sys.executable, "-m", "shardchat.cli", "migrate"], env) != 0:
        print("shardchat dev --cluster: migrate failed", file=sys.stderr)
        return 1
    if stop.is_set():  # Ctrl-C while the engines were starting: nothing to supervise yet
        return 0
    supervisor = Supervisor(cluster_specs(settings, gateways, env))
    await supervisor.start()
    try:
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        edge = f"http://{host}:{settings.edge_port}"
        ws = ", ".join(f"ws://{host}:{p}/ws" for p in gateway_ports(settings, gateways))
        if balancer and await _run_quiet(["bash", str(script), "up", "haproxy"], env) != 0:
            print("shardchat dev --cluster: HAProxy did not start", file=sys.stderr)
            return 1
        waiter = asyncio.create_task(_wait_http(f"{edge}/healthz", 60.0))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([waiter, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if waiter.done() and waiter.result():
            supervisor.say(
                "\n".join(
                    [
                        f"shardchat dev --cluster is up ({gateways} gateways; Ctrl-C to stop)",
                        f"  web client   {edge}/",
                        f"  GraphQL      {edge}/graphql",
                        f"  gateways     {ws}",
                        f"  router       http://{host}:{settings.router_port}/gateway",
                        f"  metrics      {edge}/metrics (and /metrics on every port)",
                        *([f"  balancer     {public}/ (HTTP and /ws, HAProxy)"] if public else []),
                    ]
                )
            )
        waiter.cancel()
        await stop.wait()
        supervisor.say("stopping children")
    finally:
        await supervisor.stop()
    return 0
