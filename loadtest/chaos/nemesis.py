"""The nemesis: carries out a fault plan (loadtest/chaos/schedule.py) on a running cluster.

Cluster faults run one after the other on a thread of their own (each inject, hold, heal blocks:
a restart waits until the process or engine is ready again) and each becomes a ``Window`` from
injection to heal. Member faults are commands to the client processes, sent from the caller's
thread by ``poll()``: a member goes offline (or stops reading) while its room's other members
send it a backlog, and comes back once its planned time is up AND the backlog is complete (at
most ``MAX_AWAY_S``): the backlog's size does not depend on how fast this box acknowledges.
The clients record their windows themselves (exact times). ``heal_all`` puts everything back,
whatever was interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from loadtest.chaos.fleet import Fleet
from loadtest.chaos.proxy import ProxyProcess
from loadtest.chaos.records import Window
from loadtest.chaos.schedule import Fault, Plan, away_limit
from loadtest.cluster import Cluster, ServiceProc

ENGINES = ("pg", "redis", "kafka")


@dataclass
class _Active:
    """A member fault in progress: ``end`` is sent once ``due`` is past and the backlog
    ``burst`` is complete, or at ``limit`` whatever the backlog."""

    uid: int
    end: tuple[object, ...]
    due: float
    limit: float
    burst: int


class EngineControl:
    """deploy/local/engines.sh (hard kills and restarts) and redis-cli (FLUSHALL)."""

    def __init__(self, script: Path, redis_url: str) -> None:
        self.script = script
        self.redis_port = urlsplit(redis_url).port or 6379
        # Kafka's restart after kill -9 (log recovery) can take minutes on a loaded box.
        self.env = os.environ | {"SHARDCHAT_READY_TIMEOUT": "300"}

    def _run(self, *args: str, timeout_s: float = 400) -> None:
        done = subprocess.run(
            ["bash", str(self.script), *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            out = done.stdout.decode(errors="replace")
            raise RuntimeError(f"engines.sh {' '.join(args)} failed ({done.returncode}):\n{out}")

    def kill(self, engine: str) -> None:
        self._run("kill", engine)

    def up(self, engine: str | None = None) -> None:
        """Start ``engine`` (default: the three a chaos run uses) and wait until it serves."""
        for name in [engine] if engine else ENGINES:
            self._run("up", name)

    def flushall(self) -> None:
        subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.redis_port), "flushall"],
            check=True,
            timeout=30,
            stdout=subprocess.DEVNULL,
        )


class Nemesis:
    def __init__(
        self,
        plan: Plan,
        cluster: Cluster,
        proxy: ProxyProcess,
        engines: EngineControl,
        fleet: Fleet,
        users: list[int],
        rooms: list[int],
    ) -> None:
        self.plan = plan
        self.cluster = cluster
        self.proxy = proxy
        self.engines = engines
        self.fleet = fleet
        self.users = users  # member index -> user id
        self.rooms = rooms  # room index -> room id
        self.windows: list[Window] = []
        self.errors: list[str] = []
        self.t0 = 0.0
        self._pending = list(plan.members)
        self._active: list[_Active] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()  # cuts a hold or gap short (the fault is still healed)

    def say(self, text: str) -> None:
        print(f"[chaos {time.monotonic() - self.t0:7.1f}s] {text}", file=sys.stderr, flush=True)

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._thread = threading.Thread(target=self._cluster_faults, name="nemesis", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 600) -> None:
        """No new cluster fault; the one in progress is healed now (waited for)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def finished(self) -> bool:
        """Every fault injected and healed (member faults: their planned end is past)."""
        thread_done = self._thread is not None and not self._thread.is_alive()
        return thread_done and not self._pending and not self._active

    # --- cluster faults, one at a time --------------------------------------------------------
    def _cluster_faults(self) -> None:
        for fault in self.plan.cluster:
            if self._stop.wait(fault.at_s):
                return
            t0 = time.monotonic()
            self.say(f"{fault.kind} {fault.target} for {fault.hold_s}s {fault.params or ''}")
            try:
                self._inject(fault)
            except Exception as exc:  # recorded, healed below; the run goes on
                self.errors.append(f"{fault.kind} {fault.target}: {exc!r}")
                traceback.print_exc()
                self.heal_all()
            t1 = time.monotonic()
            self.windows.append(Window(fault.kind, fault.target, t0, t1, dict(fault.params)))
            self.say(f"{fault.kind} {fault.target} healed after {t1 - t0:.1f}s")

    def _service(self, target: str) -> ServiceProc:
        if target.startswith("gateway"):
            return self.cluster.procs[int(target.removeprefix("gateway"))]
        svc = self.cluster.edge if target == "edge" else self.cluster.router
        assert svc is not None, target
        return svc

    def _inject(self, f: Fault) -> None:
        kind = f.kind
        if kind in ("gateway_kill", "edge_kill", "router_kill"):
            svc = self._service(f.target)
            self.cluster.signal(svc, signal.SIGKILL)
            svc.proc.wait(30)
            self._stop.wait(f.hold_s)
            self.cluster.restart(svc)
        elif kind == "gateway_pause":
            svc = self._service(f.target)
            self.cluster.signal(svc, signal.SIGSTOP)
            try:
                self._stop.wait(f.hold_s)
            finally:
                self.cluster.signal(svc, signal.SIGCONT)
        elif kind in ("kafka_kill", "pg_restart", "redis_restart"):
            self.engines.kill(f.target)
            self._stop.wait(f.hold_s)
            self.engines.up(f.target)
        elif kind == "redis_flush":
            self.engines.flushall()
        elif kind.startswith("net_"):
            if kind == "net_latency":
                self.proxy.command("latency", f.target, **f.params)
            elif kind == "net_stall":
                self.proxy.command("stall", f.target, on=True)
            else:
                self.proxy.command("reset", f.target, for_s=f.hold_s)
            try:
                self._stop.wait(f.hold_s)
            finally:
                self.proxy.command("clear", f.target)
        else:
            raise ValueError(f"unknown cluster fault {kind!r}")

    # --- member faults, from the caller's thread ------------------------------------------------
    def poll(self) -> None:
        """Start the member faults that are due; end those whose time is up and whose backlog
        is complete (or that reached their limit)."""
        now = time.monotonic()
        while self._pending and self._pending[0].at_s <= now - self.t0:
            self._start_member_fault(self._pending.pop(0), now)
        for active in list(self._active):
            if now >= active.due and (self.fleet.burst_done(active.burst) or now >= active.limit):
                self.fleet.to_member(active.uid, active.end)
                self._active.remove(active)

    def _start_member_fault(self, f: Fault, now: float) -> None:
        uid = self.users[int(f.target)]
        room = self.rooms[f.params["room"]]
        if f.kind == "member_leave":
            self.say(f"{f.kind} user {uid} room {room}")
            self.fleet.to_member(uid, ("leave", uid, room))
            return
        self.say(f"{f.kind} user {uid} room {room} for {f.hold_s}s (or until its backlog is in)")
        limit = now + away_limit(f.hold_s)
        if f.kind == "slow_consumer":
            self.fleet.to_member(uid, ("slow", uid))
            end: tuple[object, ...] = ("read", uid)
        else:
            self.fleet.to_member(uid, ("offline", uid, f.kind.removeprefix("offline_")))
            end = ("online", uid)
        burst = self.fleet.burst(room, f.params["burst_count"], limit - now, uid)
        self._active.append(_Active(uid, end, now + f.hold_s, limit, burst))

    # --- back to normal ---------------------------------------------------------------------------
    def heal_all(self) -> None:
        """No proxy fault, no paused or dead service, every engine up."""
        try:
            self.proxy.command("clear", "*")
        except Exception as exc:
            self.errors.append(f"proxy clear: {exc!r}")
        for svc in self.cluster.services:
            self.cluster.signal(svc, signal.SIGCONT)
        try:
            self.engines.up()
        except Exception as exc:
            self.errors.append(f"engines up: {exc!r}")
        for svc in self.cluster.services:
            if not svc.alive:
                self.errors.append(f"{svc.name} was down (exit {svc.proc.returncode}): restarted")
                try:
                    self.cluster.restart(svc)
                except Exception as exc:
                    self.errors.append(f"restart {svc.name}: {exc!r}")
