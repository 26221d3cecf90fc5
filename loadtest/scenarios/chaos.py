"""chaos: faults injected from a seed while members chat; nothing acknowledged may be lost.

A cluster of ``--gateways`` gateways, the edge and the router (separate processes) on the local
PostgreSQL, Kafka and Redis, every service reaching every engine through a TCP fault proxy
(loadtest/chaos/proxy.py). Members (``--users``, each in ``--rooms-per-user`` of ``--rooms``
rooms) in client processes behave as real clients (loadtest/chaos/client.py) and send
``--rate`` messages per second over SEND and ``sendMessage``, retried with the same nonce until
acknowledged. The nemesis (loadtest/chaos/nemesis.py) carries out the plan drawn from
``--seed`` (loadtest/chaos/schedule.py) for about ``--duration`` seconds; then every fault is
healed, sending stops, and every member has ``--bound`` seconds to hold every acknowledged
message of its rooms. The checker (loadtest/chaos/checker.py) compares what each member
received with what was acknowledged and what the Store holds, per fault kind. A run is replayed
with the same arguments and ``--seed``; the engines must be this checkout's
(``deploy/local/engines.sh``), since the nemesis kills and restarts them.
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from loadtest.chaos import schedule
from loadtest.chaos.checker import Report, check, markdown
from loadtest.chaos.client import ChaosPlan, MemberSpec
from loadtest.chaos.fleet import Fleet
from loadtest.chaos.nemesis import EngineControl, Nemesis
from loadtest.chaos.proxy import LinkSpec, ProxyProcess
from loadtest.chaos.records import StoredEvent
from loadtest.cluster import Cluster
from loadtest.population import Population, populate_rooms
from loadtest.report import BenchResult, Latency, Progress, build_result, now_iso, write_json
from loadtest.scenarios.common import add_run_options, params_of, run_async, settings_overrides
from shardchat.config import Settings, load_settings
from shardchat.store import open_store
from shardchat.supervisor import engines_env, engines_script

CALM_S = 5.0  # sending goes on this long after the last heal, before it stops
SEND_DRAIN_S = 60.0  # then pending sends have this long to be acknowledged


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=1800, help="seconds of faults (about)")
    p.add_argument("--seed", type=int, default=None, help="fault plan seed (default: random)")
    p.add_argument("--gateways", type=int, default=2)
    p.add_argument("--users", type=int, default=24, help="members, each its own connection")
    p.add_argument("--rooms", type=int, default=6)
    p.add_argument("--rooms-per-user", type=int, default=3)
    p.add_argument("--rate", type=float, default=10, help="small messages per second, total")
    p.add_argument("--workers", type=int, default=2, help="client processes")
    p.add_argument("--heartbeat-ms", type=int, default=5000, help="gateway heartbeat interval")
    p.add_argument(
        "--profile",
        choices=sorted(schedule.PROFILES),
        default="",
        help="fault holds and pacing (default: short under 600 s, else long)",
    )
    p.add_argument(
        "--only",
        default="",
        metavar="KIND,...",
        help="keep only these fault kinds of the seed's plan (replay one kind)",
    )
    p.add_argument(
        "--bound",
        type=float,
        default=90,
        help="seconds after sending stopped within which every member must hold everything",
    )
    add_run_options(p)


def command_of(args: argparse.Namespace, seed: int) -> str:
    """The command line that replays this run."""
    parts = [
        "shardchat bench chaos",
        f"--duration {args.duration:g}",
        f"--seed {seed}",
        f"--gateways {args.gateways}",
        f"--users {args.users}",
        f"--rooms {args.rooms}",
        f"--rooms-per-user {args.rooms_per_user}",
        f"--rate {args.rate:g}",
        f"--workers {args.workers}",
        f"--heartbeat-ms {args.heartbeat_ms}",
        f"--bound {args.bound:g}",
        *([f"--profile {args.profile}"] if args.profile else []),
        *([f"--only {args.only}"] if args.only else []),
        *(f"--set {item}" for item in args.set),
    ]
    return " ".join(parts)


def memberships(seed: int, users: int, rooms: int, per_user: int) -> list[list[int]]:
    """Member indexes of each room: every user in ``per_user`` random rooms, drawn from the
    seed; a room never has fewer than schedule.MIN_MEMBERS_LEFT + 2 members."""
    if not 1 <= per_user <= rooms:
        raise SystemExit("--rooms-per-user must be between 1 and --rooms")
    if users * per_user < rooms * (schedule.MIN_MEMBERS_LEFT + 2):
        raise SystemExit("too few users for that many rooms")
    rng = random.Random(seed)
    members: list[list[int]] = [[] for _ in range(rooms)]
    for u in range(users):
        for r in rng.sample(range(rooms), per_user):
            members[r].append(u)
    need = schedule.MIN_MEMBERS_LEFT + 2
    for r in range(rooms):  # top up the small rooms from the largest
        while len(members[r]) < need:
            big = max(range(rooms), key=lambda k: len(members[k]))
            movable = [u for u in members[big] if u not in members[r]]
            u = movable[-1]
            members[big].remove(u)
            members[r].append(u)
    return [sorted(m) for m in members]


def _via(url: str, port: int) -> str:
    """``url`` (a DSN or redis URL) with its port replaced: the same engine, through the proxy."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def read_truth(settings: Settings, rooms: list[int]) -> dict[int, list[StoredEvent]]:
    """Every event of the run's rooms, as the Store holds them."""
    store = open_store(settings)
    await store.start()
    try:
        truth: dict[int, list[StoredEvent]] = {}
        for room in rooms:
            events: list[StoredEvent] = []
            after = 0
            while page := await store.events_after(room, after, 1000):
                for ev in page:
                    d = ev.data
                    events.append(
                        StoredEvent(
                            ev.seq,
                            ev.type,
                            int(d["author_id"]) if "author_id" in d else None,
                            d.get("nonce"),
                            int(d["user_id"]) if "user_id" in d else None,
                        )
                    )
                after = page[-1].seq
            truth[room] = events
        return truth
    finally:
        await store.close()


def run(args: argparse.Namespace) -> BenchResult:
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    command = command_of(args, seed)
    print(f"chaos: seed {seed}; replay with: {command}", file=sys.stderr, flush=True)
    script = engines_script()
    if script is None:
        raise SystemExit("chaos needs deploy/local/engines.sh (a checkout, not an install)")
    rooms_members = memberships(seed, args.users, args.rooms, args.rooms_per_user)
    plan = _plan(args, seed, rooms_members)
    started = now_iso()
    run_id = secrets.token_hex(4)
    log_dir = Path(args.log_dir) / f"chaos-{run_id}"
    engines_vars = run_async(engines_env(script))
    direct = load_settings(env=engines_vars)
    engines = EngineControl(script, direct.redis_url)
    engines.up()  # the nemesis needs them all, the Kafka proxy listener included
    proxy: ProxyProcess | None = None
    cluster: Cluster | None = None
    fleet: Fleet | None = None
    nemesis: Nemesis | None = None
    try:
        kafka_proxy = int(engines_vars["SHARDCHAT_KAFKA_PROXY_PORT"])
        kafka_proxied = int(engines_vars["SHARDCHAT_KAFKA_PROXIED_BOOTSTRAP"].rsplit(":", 1)[1])
        proxy = ProxyProcess(
            [
                LinkSpec("pg", urlsplit(direct.postgres_dsn).port or 5432),
                LinkSpec("redis", urlsplit(direct.redis_url).port or 6379),
                LinkSpec("kafka", kafka_proxied, listen_port=kafka_proxy),
            ]
        )
        cluster = Cluster.on_engines(
            run_id, args.gateways, log_dir, _service_settings(args), base=direct
        )
        cluster.env |= {  # every service reaches every engine through the proxy
            "SHARDCHAT_POSTGRES_DSN": _via(
                cluster.env["SHARDCHAT_POSTGRES_DSN"], proxy.ports["pg"]
            ),
            "SHARDCHAT_REDIS_URL": _via(direct.redis_url, proxy.ports["redis"]),
            "SHARDCHAT_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_proxy}",
        }
        cluster.migrate()
        population = run_async(
            populate_rooms(cluster.settings(), args.users, rooms_members, run_id)
        )
        users = list(population.tokens)  # member index -> user id
        room_ids = [room_id for room_id, _ in population.rooms]
        cluster.start_router()
        cluster.start_edge()
        cluster.start_gateways()
        fleet = Fleet(
            _client_plans(args, seed, cluster, population), Progress("chaos", not args.no_progress)
        )
        fleet.start()
        fleet.wait_ready(120)
        nemesis = Nemesis(plan, cluster, proxy, engines, fleet, users, room_ids)
        t0 = time.monotonic()
        fleet.start_sending(args.rate)
        nemesis.start(t0)
        next_status = t0
        while not nemesis.finished:
            fleet.pump(0.2)
            nemesis.poll()
            fleet.show(faults=len(nemesis.windows))
            if time.monotonic() >= next_status:
                nemesis.say(" ".join(f"{k}={v}" for k, v in fleet.status().items()))
                next_status += 30
        nemesis.heal_all()
        t_healed = time.monotonic()
        nemesis.say("every fault healed")
        while time.monotonic() < t_healed + CALM_S:
            fleet.pump(0.2)
        sends, _ = fleet.stop_sending(SEND_DRAIN_S)
        acked: dict[int, list[int]] = {}
        for s in sends:
            if s.seq is not None:
                acked.setdefault(s.room, []).append(s.seq)
        nemesis.say(f"sending stopped: {len(sends)} sends; waiting for every member")
        members, client_counters = fleet.settle(acked, args.bound)
        t_settled = time.monotonic()
        truth = run_async(read_truth(_direct(cluster, direct), room_ids))
        windows = nemesis.windows + [w for m in members for w in m.windows]
        report = check(members, sends, truth, windows, t_start=t0, kinds=schedule.KINDS)
        extra = {
            "seed": seed,
            "command": command,
            "faults": report.table(),
            "totals": report.totals,
            "examples": report.examples,
            "settled_s": round(t_settled - t_healed, 3),
            "nemesis_errors": nemesis.errors,
            "clients": client_counters,
            "members": {str(m.user_id): m.counters for m in members},
            "proxy": proxy.command("stats"),
            "plan": plan.describe(),
            "windows": [
                {
                    "kind": w.kind,
                    "target": w.target,
                    "t0": round(w.t0 - t0, 3),
                    "t1": round(w.t1 - t0, 3),
                }
                for w in sorted(windows, key=lambda w: w.t0)
            ],
            "logs": str(log_dir),
        }
        return _finish(args, report, started, t_settled - t0, extra)
    finally:
        if fleet is not None:
            fleet.close()
        if nemesis is not None:  # also after Ctrl-C: the fault in progress is healed first
            nemesis.stop()
            nemesis.heal_all()
        if cluster is not None:
            cluster.stop()
        if proxy is not None:
            proxy.close()
        engines.up()


def _plan(args: argparse.Namespace, seed: int, rooms_members: list[list[int]]) -> schedule.Plan:
    profile = schedule.profile_for(args.duration, args.profile)
    plan = schedule.plan(
        seed, args.duration, gateways=args.gateways, rooms=rooms_members, profile=profile
    )
    if not args.only:
        return plan
    try:
        return plan.only(args.only.split(","))
    except ValueError as exc:
        raise SystemExit(f"--only: {exc}") from None


def _service_settings(args: argparse.Namespace) -> dict[str, str]:
    """What the run changes in the services' settings (the benchmark ones aside)."""
    return {
        "SHARDCHAT_HEARTBEAT_INTERVAL_MS": str(args.heartbeat_ms),
        "SHARDCHAT_ACCESS_TOKEN_TTL_S": str(int(args.duration) + 7200),
        "SHARDCHAT_OUTBOUND_BUFFER_BYTES": str(1024 * 1024),  # as shipped (bench runs lift it)
        "SHARDCHAT_GRAPHQL_MUTATION_BURST": "1000000",
        "SHARDCHAT_GRAPHQL_MUTATION_PER_S": "1000000",
    } | settings_overrides(args.set)


def _client_plans(
    args: argparse.Namespace, seed: int, cluster: Cluster, population: Population
) -> list[ChaosPlan]:
    """Members spread over ``--workers`` processes, and over the gateways for their first try."""
    assert cluster.edge is not None and cluster.router is not None
    rooms_of: dict[int, list[int]] = {}
    for room_id, members in population.rooms:
        for uid in members:
            rooms_of.setdefault(uid, []).append(room_id)
    users = list(population.tokens)
    return [
        ChaosPlan(
            w,
            seed,
            cluster.urls,
            cluster.edge.http,
            cluster.router.http,
            [
                MemberSpec(uid, population.tokens[uid], tuple(rooms_of[uid]), i % args.gateways)
                for i, uid in enumerate(users)
                if i % args.workers == w
            ],
        )
        for w in range(args.workers)
    ]


def _direct(cluster: Cluster, direct: Settings) -> Settings:
    """The run's settings with the engines reached directly (the checker's reads)."""
    return load_settings(
        env=cluster.env
        | {
            "SHARDCHAT_POSTGRES_DSN": _via(
                cluster.env["SHARDCHAT_POSTGRES_DSN"], urlsplit(direct.postgres_dsn).port or 5432
            )
        }
    )


def _finish(
    args: argparse.Namespace,
    report: Report,
    started: str,
    duration_s: float,
    extra: dict[str, Any],
) -> BenchResult:
    t = report.totals
    latency = Latency()
    for delay in report.delays_s:
        latency.record_ms(delay * 1000)
    counters = {
        "sent": t["sends"],
        "delivered": t["delivered"],
        "acked": t["acked"],
        "unacked": t["unacked"],
        "expected": t["expected"],
        "lost": t["lost"],
        "duplicated": t["duplicated"],
        "reordered": t["reordered"],
        "leaked": t["leaked"],
        "failures": report.failures,
    }
    params = params_of(args) | {"seed": extra["seed"]}
    result = build_result(
        "chaos",
        started_at=started,
        duration_s=duration_s,
        params=params,
        counters=counters,
        latency=latency,
        extra=extra,
    )
    path = write_json(result, Path(args.out) / f"{args.name or 'chaos'}.json")
    print(f"chaos: wrote {path}", file=sys.stderr)
    print(f"chaos: seed {extra['seed']}; {extra['command']}", file=sys.stderr)
    print(markdown(report), file=sys.stderr)
    print(f"chaos: totals {t}", file=sys.stderr)
    for kind, items in report.examples.items():
        print(f"chaos: {kind} e.g. {items[:3]}", file=sys.stderr)
    return result
