"""peers: the e2e load against shardchat AND peer baselines, one after another, in one run.

Targets (``--targets``, run in the order given, identical load and client placement):
``shardchat`` (the e2e scenario itself: send -> PostgreSQL -> Kafka -> gateways -> every
member; durable), ``centrifugo`` (one Centrifugo v6 process on the Redis engine, history and
recovery on, publishes through its HTTP API: loadtest/peers/centrifugo.py), ``socketio-node``
(one Node.js socket.io 4 process, loadtest/peers/node) and ``python-socketio`` (one
python-socketio AsyncServer process on uvicorn + uvloop); the two Socket.IO peers broadcast in
memory and persist nothing. Same measure everywhere: latency = receive time -
send time at every member of the room, the sender included; lost/duplicated per receiver
against every acknowledged message. Writes ``<out>/<name>.json`` (default peers.json: a wrapper
with one summary row and one BenchResult per target, see loadtest/peers/compare.py) and a PNG
comparing the latency distributions. Exits 1 when any target lost or duplicated a message.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
import traceback
from pathlib import Path

from loadtest.peers import compare
from loadtest.peers.runner import (
    CENTRIFUGO,
    PYTHON_SOCKETIO,
    SHARDCHAT,
    SOCKETIO_NODE,
    Outcome,
    run_peer,
    run_shardchat,
)
from loadtest.report import machine_info, now_iso, write_json
from loadtest.scenarios import e2e
from loadtest.scenarios.common import params_of

ALL_TARGETS = (SHARDCHAT, CENTRIFUGO, SOCKETIO_NODE, PYTHON_SOCKETIO)


def _targets(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in ALL_TARGETS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"targets are a comma-separated subset of {','.join(ALL_TARGETS)}"
        )
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    e2e.add_arguments(p)  # exactly the e2e options: the shardchat target is e2e.run on them
    p.add_argument(
        "--targets",
        type=_targets,
        default=list(ALL_TARGETS),
        help="comma-separated, run in this order: " + ",".join(ALL_TARGETS),
    )
    p.add_argument(
        "--idle-window",
        type=float,
        default=5.0,
        help="seconds of the engines' idle CPU measured before each target (0 = skip)",
    )
    p.add_argument(
        "--pause",
        type=float,
        default=3.0,
        help="seconds of rest between targets (sockets in TIME_WAIT, CPU back to idle)",
    )


def run(args: argparse.Namespace) -> compare.PeersResult:
    started = now_iso()
    targets: list[str] = list(args.targets)
    sizes = e2e.sizes_of(args)
    run_id = secrets.token_hex(4)
    rows: list[dict[str, object]] = []
    entries: list[Outcome] = []
    failures: list[str] = []
    for i, name in enumerate(targets):
        if i:
            time.sleep(args.pause)
        print(f"peers: target {name} ({i + 1}/{len(targets)})", file=sys.stderr)
        try:
            outcome = (
                run_shardchat(args) if name == SHARDCHAT else run_peer(name, args, sizes, run_id)
            )
        except Exception as exc:  # one failed target must not cost the others' figures
            traceback.print_exc()
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            rows.append({"target": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        if outcome.latency is not None:
            outcome.result.extra["latency_hdr"] = outcome.latency.encode().decode("ascii")
        entries.append(outcome)
        rows.append(compare.summary_row(outcome.result))
        _print_row(rows[-1])
    params = params_of(args) | {"targets": targets}
    params.pop("pause", None)
    params.pop("idle_window", None)
    result = compare.PeersResult(
        started_at=started,
        params=params,
        machine=machine_info(),
        targets_requested=targets,
        counters=compare.totals(rows),
        summary=rows,
        results=[o.result for o in entries],
    )
    name = args.name or "peers"
    out = Path(args.out)
    path = write_json(result, out / f"{name}.json")
    compare.write_plot([(o.result, o.latency) for o in entries], out / f"{name}.png")
    print(f"peers: wrote {path} and {name}.png", file=sys.stderr)
    if failures:
        raise RuntimeError("peers: target(s) failed: " + "; ".join(failures))
    return result


def _print_row(row: dict[str, object]) -> None:
    lat = row.get("latency_ms") or {}
    assert isinstance(lat, dict)
    print(
        f"peers: {row['target']} durable={row['durable']} delivered={row['delivered']}"
        f" ({row['delivered_per_s']}/s) lost={row['lost']} dup={row['duplicated']}"
        f" p50={lat.get('p50')} p90={lat.get('p90')} p99={lat.get('p99')}"
        f" p99.9={lat.get('p99_9')} max={lat.get('max')} ms cpu={row.get('cpu')}",
        file=sys.stderr,
    )
