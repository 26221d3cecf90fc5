"""``shardchat bench SCENARIO [options]`` == ``python -m loadtest SCENARIO [options]``."""

from __future__ import annotations

import argparse
import importlib
import sys

SCENARIOS = {
    "e2e": "send -> PostgreSQL -> Kafka -> gateway -> every member; latency and lost/dup",
    "fanout": "rooms of 10/100/1000, one sender: frames per gateway CPU-second",
    "connect": "connections per second, sessions held, idle memory per session",
    "storm": "kill -9 a gateway under load; time until every session resumed; lost/dup",
    "soak": "steady load for --duration; gateway memory over time",
    "peers": "the e2e load on shardchat, Socket.IO (Node) and python-socketio in one run",
    "chaos": "faults from a seed (kills, pauses, engine restarts, network); nothing acked lost",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardchat bench", description=__doc__)
    sub = parser.add_subparsers(dest="scenario", required=True)
    for name, help_text in SCENARIOS.items():
        module = importlib.import_module(f"loadtest.scenarios.{name}")
        p = sub.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(p)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"loadtest.scenarios.{args.scenario}")
    result = module.run(args)
    c = result.counters
    # A benchmark that lost or duplicated an acknowledged message failed, whatever its speed
    # (chaos also counts reordered and leaked events, and the rest in ``failures``).
    failed = ("lost", "duplicated", "reordered", "leaked", "failures")
    return 1 if any(c.get(k, 0) for k in failed) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
