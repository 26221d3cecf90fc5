"""Run one target of the peers comparison under the e2e load; one BenchResult per target.

- ``socketio-node``, ``python-socketio`` and ``centrifugo``: start the server process (one
  each), spawn the client workers (loadtest/peers/worker.py for Socket.IO,
  loadtest/peers/centrifugo_worker.py for Centrifugo) through loadtest/harness.py's Harness
  (same planning: every room's members spread over every worker, senders round robin, same
  source addresses), run the send phase and the accounting exactly as the e2e scenario does.
- ``shardchat``: loadtest.scenarios.e2e.run itself, on the same arguments (so PostgreSQL +
  Kafka on the local engines, ``--gateways`` gateway processes), through its two hooks: the
  send phase's CPU window (``around_send``) and the merged latency histogram (``on_merged``);
  its own JSON/PNG go to a scratch folder (peers.json is the output).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loadtest.harness import Harness, plan_clients
from loadtest.peers import centrifugo, cpu
from loadtest.peers import centrifugo_worker as cf_worker
from loadtest.peers.node_deps import NODE_DIR, ensure_node_deps, node_binary
from loadtest.peers.worker import worker_main
from loadtest.plan import WorkerPlan
from loadtest.population import Population
from loadtest.report import BenchResult, Latency, now_iso
from loadtest.scenarios import e2e
from loadtest.scenarios.common import counters_of, harness_options, merged_result, params_of

ROOT = Path(__file__).resolve().parents[2]
ENGINE_STATE = ROOT / "deploy" / "local" / "state"
_LISTENING = re.compile(r"listening on (ws://\S+)")
_GC_LINE = re.compile(r"^gc: generation (\d) ([\d.]+) ms collected \d+ at ([\d.]+)$", re.M)

SHARDCHAT = "shardchat"
SOCKETIO_NODE = "socketio-node"
PYTHON_SOCKETIO = "python-socketio"
CENTRIFUGO = "centrifugo"


@dataclass(frozen=True)
class Target:
    name: str
    server: str  # what serves the connections
    durable: bool
    persistence: str


def target_info(name: str, args: argparse.Namespace) -> Target:
    if name == SHARDCHAT:
        if args.embedded:
            return Target(
                name,
                "1 shardchat gateway (--embedded)",
                False,
                "SQLite + in-memory event log (embedded mode: not the durable path)",
            )
        return Target(
            name,
            f"{args.gateways} shardchat gateway processes",
            True,
            "acknowledged after the PostgreSQL commit (message + outbox row); "
            "delivered through Kafka (acks=all)",
        )
    if name == SOCKETIO_NODE:
        return Target(
            name,
            "1 Node.js process, socket.io (websocket transport only)",
            False,
            "none: in-memory io.to(room).emit",
        )
    if name == PYTHON_SOCKETIO:
        return Target(
            name,
            "1 Python process, python-socketio AsyncServer on uvicorn + uvloop",
            False,
            "none: in-memory AsyncServer.emit(room=...)",
        )
    if name == CENTRIFUGO:
        return Target(
            name,
            f"1 Centrifugo {centrifugo.VERSION} process (Go), Redis engine",
            False,  # an ack is in Redis memory + its AOF (fsync'd every second), not on disk
            f"acknowledged once in the channel's Redis history stream ({centrifugo.HISTORY_SIZE}"
            f" publications, {centrifugo.HISTORY_TTL}; Redis appendfsync everysec); recovery "
            "and positioning forced",
        )
    raise ValueError(f"unknown target {name!r}")


@dataclass
class Outcome:
    result: BenchResult
    latency: Latency | None


# --- the peer servers ---------------------------------------------------------------------------
@dataclass
class ServerProc:
    name: str
    cmd: list[str]
    log_dir: Path
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    banner: str = ""
    env: dict[str, str] = field(default_factory=dict)
    #: Ready when this answers 200 (then ``url`` is set already), instead of a banner line.
    ready_url: str = ""

    @property
    def out(self) -> Path:
        return self.log_dir / f"{self.name}.out"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, ready_timeout_s: float = 60.0) -> str:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.out.open("wb") as out, (self.log_dir / f"{self.name}.err").open("wb") as err:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=self.cwd,
                env=os.environ | self.env,
                stdout=out,
                stderr=err,
                start_new_session=True,  # our signals only, not the tty's
            )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; "
                    f"see {self.log_dir}/{self.name}.err"
                )
            if self.ready_url:
                if _answers(self.ready_url):
                    return self.url
                time.sleep(0.1)
                continue
            text = self.out.read_text(errors="replace")
            found = _LISTENING.search(text)
            if found:
                self.url = found.group(1)
                self.banner = text[found.start() :].splitlines()[0]
                return self.url
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.name} not listening after {ready_timeout_s} s")

    def stop(self, grace_s: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (for servers that can't bind an ephemeral one and report it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def gc_pauses(text: str, t0: float, t1: float) -> dict[str, Any]:
    """The ``gc:`` lines of loadtest/peers/pysio_server.py (collections >= 20 ms, stamped with
    CLOCK_MONOTONIC, the harness's clock) that fell in [t0, t1]: count, max and total ms."""
    pauses = [(int(g), float(ms)) for g, ms, at in _GC_LINE.findall(text) if t0 <= float(at) <= t1]
    return {
        "threshold_ms": 20,
        "count": len(pauses),
        "full_collections": sum(1 for g, _ in pauses if g == 2),
        "max_ms": max((ms for _, ms in pauses), default=0.0),
        "total_ms": round(sum(ms for _, ms in pauses), 1),
    }


@dataclass
class PeerSetup:
    """What a peer target needs besides its server: the client entry point, extra plan
    settings, connection tokens per user, and the engines whose CPU counts for it."""

    entry: Callable[[WorkerPlan, Any], None] = worker_main
    plan_extra: dict[str, str] = field(default_factory=dict)
    tokens: Callable[[int], str] = lambda uid: ""
    engines: cpu.Selector | None = None


def centrifugo_server(log_dir: Path, run_id: str) -> tuple[ServerProc, PeerSetup]:
    """Centrifugo on a free port with the config of loadtest/peers/centrifugo.py, on the
    ``deploy/local`` Redis (keys under ``centrifugo-bench-<run>``)."""
    binary = centrifugo.ensure_centrifugo()
    port = free_port()
    token_key, api_key = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    conf = centrifugo.config(
        port=port,
        redis_url=_redis_url(),
        prefix=f"centrifugo-bench-{run_id}",
        token_key=token_key,
        api_key=api_key,
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    conf_path = log_dir / "centrifugo.json"
    conf_path.write_text(json.dumps(conf, indent=2))
    server = ServerProc(
        CENTRIFUGO,
        [str(binary), "--config", str(conf_path)],
        log_dir,
        env={"GOMAXPROCS": str(os.cpu_count() or 1)},
        url=f"ws://127.0.0.1:{port}/connection/websocket",
        banner=centrifugo.version_banner(binary),
        ready_url=f"http://127.0.0.1:{port}/health",
    )
    setup = PeerSetup(
        entry=cf_worker.worker_main,
        plan_extra={"api_url": f"http://127.0.0.1:{port}", "api_key": api_key},
        tokens=lambda uid: centrifugo.connection_token(uid, token_key),
        engines=cpu.pid_files(ENGINE_STATE / "redis" / "redis.pid"),
    )
    return server, setup


def _redis_url() -> str:
    from shardchat.config import load_settings

    return load_settings().redis_url


def server_for(name: str, log_dir: Path) -> ServerProc:
    if name == SOCKETIO_NODE:
        ensure_node_deps()
        node = node_binary()
        return ServerProc(
            name,
            [node, str(NODE_DIR / "server.js"), "0", "127.0.0.1"],
            log_dir,
            cwd=NODE_DIR,
            env={"NODE_ENV": "production"},
        )
    if name == PYTHON_SOCKETIO:
        cmd = [sys.executable, "-m", "loadtest.peers.pysio_server", "--host", "127.0.0.1"]
        return ServerProc(name, [*cmd, "--port", "0"], log_dir, cwd=ROOT)
    raise ValueError(f"no peer server named {name!r}")


# --- the clients ----------------------------------------------------------------------------------
def population_of(sizes: list[int], token: Callable[[int], str] = lambda uid: "") -> Population:
    """Rooms 1..R with members 1..N (no accounts: Socket.IO has no identify step; Centrifugo's
    connection tokens are minted here, as an application backend would)."""
    rooms: list[tuple[int, list[int]]] = []
    uid = 1
    for k, size in enumerate(sizes, start=1):
        rooms.append((k, list(range(uid, uid + size))))
        uid += size
    return Population({u: token(u) for u in range(1, uid)}, rooms)


def load_params(args: argparse.Namespace) -> dict[str, Any]:
    """The shared load's knobs (every target's ``params``): the e2e options."""
    skip = {"targets", "pause", "idle_window"}
    return {k: v for k, v in params_of(args).items() if k not in skip}


def _me_children(*needles: str) -> cpu.Selector:
    return cpu.children_matching(os.getpid(), *needles)


def idle_baseline(engines: cpu.Selector | None, seconds: float, out: dict[str, Any]) -> None:
    """The engines' CPU over ``seconds`` with nothing of the benchmark running (their idle
    cost: Kafka's and PostgreSQL's background work, Redis's timers), in ``out``."""
    if engines is None or seconds <= 0:
        return
    before = cpu.snapshot({"engines": engines})
    time.sleep(seconds)
    spent = cpu.used(before, cpu.snapshot({"engines": engines}))["engines"]
    out["engines_idle_cpu_pct"] = round(100 * spent / seconds, 2)
    out["engines_idle_window_s"] = seconds


@contextlib.contextmanager
def _cpu_window(groups: dict[str, cpu.Selector], out: dict[str, Any]) -> Iterator[None]:
    """Fill ``out`` with the CPU each group of processes spent inside the block: the window's
    length, then ``<group>_cpu_s`` and ``<group>_cpu_pct`` (100 = one core busy throughout)."""
    t0 = time.monotonic()
    before = cpu.snapshot(groups)
    try:
        yield
    finally:
        spent = cpu.used(before, cpu.snapshot(groups))
        window_s = time.monotonic() - t0
        out["window_s"] = round(window_s, 2)
        for group, secs in spent.items():
            out[f"{group}_cpu_s"] = secs
            out[f"{group}_cpu_pct"] = round(100 * secs / window_s, 1) if window_s > 0 else 0.0


def run_peer(name: str, args: argparse.Namespace, sizes: list[int], run_id: str) -> Outcome:
    """One peer server (Socket.IO or Centrifugo), its client workers, the e2e phases."""
    scenario = f"peers-{name}"
    started = now_iso()
    info = target_info(name, args)
    log_dir = Path(args.log_dir) / f"{scenario}-{run_id}"
    if name == CENTRIFUGO:
        server, setup = centrifugo_server(log_dir, run_id)
    else:
        server, setup = server_for(name, log_dir), PeerSetup()
    idle: dict[str, Any] = {}
    idle_baseline(setup.engines, args.idle_window, idle)
    load_before = cpu.loadavg()
    server.start()
    groups = {"server": cpu.pids(server.pid), "clients": _me_children("spawn_main")}
    if setup.engines is not None:
        groups["engines"] = setup.engines
    try:
        rss_idle = cpu.rss_mib([server.pid])
        opts = harness_options(args, sum(sizes))
        plans = [
            replace(p, extra=p.extra | setup.plan_extra)
            for p in plan_clients(population_of(sizes, setup.tokens), [server.url], opts)
        ]
        harness = Harness(scenario, plans, opts, entry=setup.entry, process_name="peers-worker")
        try:
            harness.start()
            identified, failed, connect_s = harness.wait_connected(args.connect_timeout)
            rss_connected = cpu.rss_mib([server.pid])
            t0 = time.monotonic()
            cpu_used: dict[str, Any] = {}
            with _cpu_window(groups, cpu_used):
                acked = harness.run(args.duration, args.rate)
            cpu_used |= idle
            if setup.engines is not None:
                cpu_used["engines_note"] = "engines = the deploy/local Redis, whoever else uses it"
            merged = harness.account(acked, args.account_wait)
            elapsed = time.monotonic() - t0
        finally:
            harness.close()
    finally:
        code = server.stop()
    counters = counters_of(merged)
    err = (log_dir / f"{name}.err").read_text(errors="replace")
    extra = e2e.room_extra(sizes, args.rate) | {
        "identified": identified,
        "connect_failed": failed,
        "connect_s": round(connect_s, 2),
        "target": name,
        "durable": info.durable,
        "persistence": info.persistence,
        "server": info.server,
        "server_banner": server.banner,
        "server_exit": code,
        "server_rss_mib": {"idle": rss_idle, "connected": rss_connected},
        "cpu": cpu_used,
        "loadavg_before": load_before,
    }
    if name == PYTHON_SOCKETIO:  # the server logs its long garbage collections
        extra["server_gc_pauses"] = gc_pauses(err, t0, t0 + elapsed)
    result = merged_result(
        scenario,
        started_at=started,
        duration_s=elapsed,
        params=load_params(args),
        counters=counters,
        merged=merged,
        extra=extra,
    )
    return Outcome(result, merged.latency)


# --- shardchat: the e2e scenario itself -------------------------------------------------------
def run_shardchat(args: argparse.Namespace) -> Outcome:
    info = target_info(SHARDCHAT, args)
    groups = {
        "server": _me_children("shardchat.cli", "gateway"),
        "clients": _me_children("spawn_main"),
    }
    if not args.embedded:
        engines = {
            "pg": ENGINE_STATE / "pg" / "data" / "postmaster.pid",
            "kafka": ENGINE_STATE / "kafka" / "kafka.pid",
            "redis": ENGINE_STATE / "redis" / "redis.pid",
            "nats": ENGINE_STATE / "nats" / "nats.pid",
        }
        groups["engines"] = cpu.pid_files(*engines.values())
        # each engine on its own too (engine_pg_cpu_s ...): which one a send costs
        groups |= {f"engine_{name}": cpu.pid_files(path) for name, path in engines.items()}
    cpu_used: dict[str, Any] = {}
    latency: list[Latency] = []
    idle_baseline(groups.get("engines"), args.idle_window, cpu_used)
    load_before = cpu.loadavg()
    with tempfile.TemporaryDirectory(prefix="peers-e2e-") as scratch:
        inner = argparse.Namespace(**vars(args))
        inner.out = scratch  # e2e's own JSON/PNG: not results of this scenario
        inner.name = ""
        for k in ("targets", "pause", "func", "idle_window"):
            if hasattr(inner, k):
                delattr(inner, k)
        result = e2e.run(
            inner,
            scenario=f"peers-{SHARDCHAT}",
            around_send=lambda: _cpu_window(groups, cpu_used),
            on_merged=lambda merged: latency.append(merged.latency),
            profile_to=(args.out, f"{args.name or 'peers'}_profile"),
        )
    extra: dict[str, Any] = {
        "target": SHARDCHAT,
        "durable": info.durable,
        "persistence": info.persistence,
        "server": info.server,
        "loadavg_before": load_before,
        "cpu": cpu_used,
    }
    if "engines" in groups:
        cpu_used["engines_note"] = (
            "engines = the whole PostgreSQL, Kafka, Redis and NATS of deploy/local, "
            "whoever else uses them"
        )
    result.extra = result.extra | extra
    result.params = load_params(args)
    return Outcome(result, latency[0])
