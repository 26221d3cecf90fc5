"""Start and stop a cluster of shardchat service processes for one benchmark run.

``shardchat migrate`` first, then M ``shardchat gateway`` processes on ephemeral ports (and,
when a scenario asks, one ``shardchat edge`` and one ``shardchat router``), each ready when it
printed its listening line and ``/readyz`` answers 200. ``restart`` starts a process again on
the port it had (clients reconnect to the address they know). On the local engines every run
gets a fresh PostgreSQL database and a fresh Kafka topic (both deleted by ``stop()``), so runs
never see each other's rooms or offsets; the embedded mode (SQLite + memory adapters) runs ONE
gateway, since the memory log and registry live inside that process.
Stop: SIGTERM (the gateway drains), then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from shardchat.adapters.kafka_log import delete_topic
from shardchat.adapters.nats_log import NatsEventLog
from shardchat.adapters.redis_streams_log import RedisStreamsEventLog
from shardchat.config import Settings, load_settings
from shardchat.runtime import open_event_log

_PASS_THROUGH = frozenset({"SHARDCHAT_GC_TUNE", "SHARDCHAT_GC_TRACE"})
_LISTENING = re.compile(r"listening on ((?:ws|http)://\S+)")
_PORT_SETTING = {
    "gateway": "SHARDCHAT_GATEWAY_PORT",
    "edge": "SHARDCHAT_EDGE_PORT",
    "router": "SHARDCHAT_ROUTER_PORT",
}
EDGE_WORKER_ID = 99  # snowflake worker of the edge; gateways are 100 + index


@dataclass
class ServiceProc:
    kind: str  # gateway | edge | router
    index: int
    proc: subprocess.Popen[bytes]
    stdout: Path
    url: str = ""  # ws://host:port/ws for a gateway, http://host:port for the others
    starts: int = 1

    @property
    def name(self) -> str:
        return f"{self.kind}{self.index}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def http(self) -> str:
        if self.kind == "gateway":
            return self.url.replace("ws://", "http://", 1).rsplit("/", 1)[0]
        return self.url.rstrip("/")

    @property
    def port(self) -> int:
        return int(self.http.rsplit(":", 1)[1]) if self.url else 0

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Cluster:
    run_id: str
    env: dict[str, str]  # SHARDCHAT_* for every process of the run
    gateways: int
    log_dir: Path
    database: str | None = None  # created fresh (PostgreSQL), dropped by stop()
    admin_dsn: str = ""
    procs: list[ServiceProc] = field(default_factory=list)  # the gateways
    edge: ServiceProc | None = None
    router: ServiceProc | None = None

    @classmethod
    def on_engines(
        cls,
        run_id: str,
        gateways: int,
        log_dir: Path,
        overrides: dict[str, str] | None = None,
        *,
        event_log: str = "kafka",
        base: Settings | None = None,
    ) -> Cluster:
        """PostgreSQL + Redis + the event log (Kafka, Redis Streams or NATS) of deploy/local
        (or whatever SHARDCHAT_* env names, or ``base``). The run's log is a fresh topic / set
        of streams."""
        base = base or load_settings()
        database = f"bench_{run_id}"
        dsn = re.sub(r"/[^/?]*(\?|$)", f"/{database}\\1", base.postgres_dsn.split("://", 1)[1])
        env = (
            _bench_env(run_id)
            | {
                "SHARDCHAT_STORE": "postgres",
                "SHARDCHAT_POSTGRES_DSN": base.postgres_dsn.split("://", 1)[0] + "://" + dsn,
                "SHARDCHAT_EVENT_LOG": event_log,
                "SHARDCHAT_KAFKA_BOOTSTRAP": base.kafka_bootstrap,
                "SHARDCHAT_NATS_URL": base.nats_url,
                "SHARDCHAT_KAFKA_TOPIC": f"bench-{run_id}",
                "SHARDCHAT_REGISTRY": "redis",
                "SHARDCHAT_REDIS_URL": base.redis_url,
                # attachments are not what these runs measure: files beside the logs
                "SHARDCHAT_FILES_DIR": str(log_dir / f"bench-{run_id}-files"),
            }
            | (overrides or {})
        )
        return cls(run_id, env, gateways, log_dir, database=database, admin_dsn=base.postgres_dsn)

    @classmethod
    def embedded(
        cls, run_id: str, log_dir: Path, overrides: dict[str, str] | None = None
    ) -> Cluster:
        """One gateway on SQLite + in-memory log and registry (no engines needed)."""
        env = (
            _bench_env(run_id)
            | {
                "SHARDCHAT_STORE": "sqlite",
                "SHARDCHAT_SQLITE_PATH": str(log_dir / f"bench-{run_id}.sqlite3"),
                "SHARDCHAT_EVENT_LOG": "memory",
                "SHARDCHAT_REGISTRY": "memory",
                "SHARDCHAT_FILES_DIR": str(log_dir / f"bench-{run_id}-files"),
            }
            | (overrides or {})
        )
        return cls(run_id, env, 1, log_dir)

    def settings(self) -> Settings:
        """The run's Settings as seen by the harness process (for setup through Core)."""
        return load_settings(env=self.env)

    # --- lifecycle --------------------------------------------------------------------------
    def migrate(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.database:
            _psql(self.admin_dsn, f'CREATE DATABASE "{self.database}"')
        subprocess.run(
            self._cmd("migrate"),
            env=self.process_env(),
            check=True,
            timeout=120,
            stdout=subprocess.DEVNULL,
        )

    def start_gateways(self, ready_timeout_s: float = 60.0) -> list[ServiceProc]:
        for i in range(self.gateways):
            self.procs.append(self._spawn("gateway", i))
        deadline = time.monotonic() + ready_timeout_s
        for gw in self.procs:
            self._wait_ready(gw, deadline)
        return self.procs

    def start_edge(self, ready_timeout_s: float = 60.0) -> ServiceProc:
        self.edge = self._spawn("edge", 0)
        self._wait_ready(self.edge, time.monotonic() + ready_timeout_s)
        return self.edge

    def start_router(self, ready_timeout_s: float = 60.0) -> ServiceProc:
        self.router = self._spawn("router", 0)
        self._wait_ready(self.router, time.monotonic() + ready_timeout_s)
        return self.router

    def restart(self, svc: ServiceProc, ready_timeout_s: float = 60.0) -> None:
        """Start ``svc`` again (after it was killed) on the port it had, and wait until ready."""
        if svc.alive:
            raise RuntimeError(f"{svc.name} is still running")
        new = self._spawn(svc.kind, svc.index, port=svc.port, starts=svc.starts + 1)
        svc.proc, svc.stdout, svc.starts = new.proc, new.stdout, new.starts
        self._wait_ready(svc, time.monotonic() + ready_timeout_s)

    @property
    def services(self) -> list[ServiceProc]:
        return [*self.procs, *(s for s in (self.edge, self.router) if s is not None)]

    def _spawn(self, kind: str, i: int, *, port: int = 0, starts: int = 1) -> ServiceProc:
        stem = f"{kind}{i}" if starts == 1 else f"{kind}{i}.{starts}"
        out = self.log_dir / f"{stem}.out"
        env = self.process_env() | {_PORT_SETTING[kind]: str(port)}
        if kind == "gateway":
            env["SHARDCHAT_GATEWAY_ID"] = f"bench-{self.run_id}-gw{i}"
            env["SHARDCHAT_WORKER_ID"] = str(100 + i)  # snowflake workers: unique per writer
        elif kind == "edge":
            env["SHARDCHAT_WORKER_ID"] = str(EDGE_WORKER_ID)
        with out.open("wb") as stdout, (self.log_dir / f"{stem}.err").open("wb") as err:
            proc = subprocess.Popen(
                self._cmd(kind), env=env, stdout=stdout, stderr=err, start_new_session=True
            )  # our signals only, not the tty's
        return ServiceProc(kind, i, proc, out, starts=starts)

    def _wait_ready(self, svc: ServiceProc, deadline: float) -> None:
        svc.url = ""
        while time.monotonic() < deadline:
            if svc.proc.poll() is not None:
                raise RuntimeError(
                    f"{svc.name} exited with {svc.proc.returncode}; "
                    f"see {svc.stdout.with_suffix('.err')}"
                )
            found = _LISTENING.search(svc.stdout.read_text(errors="replace"))
            if found:
                svc.url = found.group(1)
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(svc.http + "/readyz", timeout=2) as resp,
                ):
                    if resp.status == 200:
                        return
            time.sleep(0.1)
        raise TimeoutError(f"{svc.name} not ready in time")

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        self.signal(self.procs[index], sig)

    @staticmethod
    def signal(svc: ServiceProc, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            svc.proc.send_signal(sig)

    def stop(self, grace_s: float = 15.0) -> None:
        for svc in self.services:
            if svc.alive:
                svc.proc.send_signal(signal.SIGCONT)  # a paused process can't hear SIGTERM
                svc.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for svc in self.services:
            try:
                svc.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                svc.proc.kill()
                svc.proc.wait(5)
        if self.database:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _psql(self.admin_dsn, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        if self.env.get("SHARDCHAT_KAFKA_TOPIC") and self.database:
            try:
                asyncio.run(_delete_event_log(self.settings()))
            except Exception as exc:  # a leftover topic is untidy, not a failed run
                print(f"[cluster] could not delete the run's event log: {exc}", file=sys.stderr)

    @property
    def pids(self) -> list[int]:
        return [gw.pid for gw in self.procs if gw.proc.poll() is None]

    @property
    def urls(self) -> list[str]:
        return [gw.url for gw in self.procs]

    def process_env(self) -> dict[str, str]:
        """The environment of a service process of this run."""
        # The GC knobs (gateway/gctune.py) are process settings, not Settings: passed through.
        keep = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SHARDCHAT_") or k in _PASS_THROUGH
        }
        return keep | self.env

    @staticmethod
    def _cmd(*args: str) -> list[str]:
        return [sys.executable, "-m", "shardchat.cli", *args]


def _bench_env(run_id: str) -> dict[str, str]:
    """Settings every benchmark cluster shares.

    The per-IP IDENTIFY limit and per-connection op limit protect a real deployment from one
    abusive client; here thousands of clients share a few source addresses, so both are lifted.
    A shared JWT key lets the harness mint tokens the gateways accept.
    """
    return {
        "SHARDCHAT_JWT_KEYS": json.dumps({f"bench-{run_id}": secrets.token_urlsafe(32)}),
        "SHARDCHAT_HOST": "127.0.0.1",
        "SHARDCHAT_GATEWAY_PORT": "0",
        "SHARDCHAT_IDENTIFY_PER_WINDOW": "1000000",
        "SHARDCHAT_OPS_PER_WINDOW": "1000000",
        "SHARDCHAT_OPS_BURST": "10000",
        "SHARDCHAT_OUTBOUND_BUFFER_BYTES": str(4 * 1024 * 1024),
        "SHARDCHAT_LOG_LEVEL": "WARNING",
    }


async def _delete_event_log(settings: Settings) -> None:
    """Delete the run's topic (Kafka) or streams (Redis Streams, NATS)."""
    if settings.event_log == "kafka":
        await delete_topic(settings.kafka_bootstrap, settings.kafka_topic)
        return
    log = open_event_log(settings)
    if isinstance(log, RedisStreamsEventLog | NatsEventLog):
        await log.start()
        try:
            await log.delete()
        finally:
            await log.close()


def _psql(dsn: str, sql: str) -> None:
    """One admin statement through the psql client: the harness stays free of DB drivers
    (only shardchat/adapters import asyncpg)."""
    subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
        check=True,
        timeout=60,
        stdout=subprocess.DEVNULL,
    )
