"""The ``shardchat`` command: one entry point for every service, the dev mode and the tools."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shardchat.config import Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _not_yet(name: str) -> int:
    print(f"shardchat {name}: not implemented yet", file=sys.stderr)
    return 2


def _cmd_dev(args: argparse.Namespace) -> int:
    return _not_yet("dev")


def _cmd_gateway(args: argparse.Namespace) -> int:
    return _not_yet("gateway")


def _cmd_edge(args: argparse.Namespace) -> int:
    return _not_yet("edge")


def _cmd_router(args: argparse.Namespace) -> int:
    return _not_yet("router")


def _cmd_migrate(args: argparse.Namespace) -> int:
    return _not_yet("migrate")


def _cmd_bench(args: argparse.Namespace) -> int:
    return _not_yet("bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardchat", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (else $SHARDCHAT_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run edge + router + gateway (embedded adapters by default)")
    dev.add_argument("--cluster", action="store_true", help="use deploy/local Kafka/Redis/PG")
    dev.add_argument("--gateways", type=int, default=2, help="gateway processes with --cluster")
    dev.add_argument("--data-dir", default="data", help="folder for the SQLite file")
    dev.set_defaults(func=_cmd_dev)

    sub.add_parser("gateway", help="run one gateway").set_defaults(func=_cmd_gateway)
    sub.add_parser("edge", help="run the GraphQL edge").set_defaults(func=_cmd_edge)
    sub.add_parser("router", help="run the router").set_defaults(func=_cmd_router)
    sub.add_parser("migrate", help="apply schema migrations").set_defaults(func=_cmd_migrate)

    bench = sub.add_parser("bench", help="run a load-test scenario (see loadtest/)")
    bench.add_argument("scenario")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
