"""The ``shardchat`` command: one entry point for every service, the dev mode and the tools."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from shardchat.config import Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    import uvloop

    return uvloop.run(coro)


def _cmd_dev(args: argparse.Namespace) -> int:
    if args.gateways < 1:
        print("shardchat dev: --gateways must be at least 1", file=sys.stderr)
        return 2
    if args.balancer and not args.cluster:
        print("shardchat dev: --balancer needs --cluster", file=sys.stderr)
        return 2
    if args.cluster:
        from shardchat.supervisor import run_cluster

        code: int = _run(
            run_cluster(_settings(args), args.gateways, args.config, balancer=args.balancer)
        )
        return code
    from shardchat.services import run_dev

    _run(run_dev(_settings(args), Path(args.data_dir)))
    return 0


def _cmd_gateway(args: argparse.Namespace) -> int:
    from shardchat.services import run_gateway

    _run(run_gateway(_settings(args)))
    return 0


def _cmd_edge(args: argparse.Namespace) -> int:
    from shardchat.services import run_edge

    _run(run_edge(_settings(args)))
    return 0


def _cmd_router(args: argparse.Namespace) -> int:
    from shardchat.services import run_router

    _run(run_router(_settings(args)))
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from shardchat.services import run_migrate

    applied: list[str] = _run(run_migrate(_settings(args)))
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def _cmd_drain(args: argparse.Namespace) -> int:
    from shardchat.services import drain_via_registry, drain_via_router

    settings = _settings(args)
    if args.via_registry:
        if not _run(drain_via_registry(settings, args.gateway_id)):
            print(f"gateway {args.gateway_id!r} is not live", file=sys.stderr)
            return 1
        print(f"gateway {args.gateway_id} draining")
        return 0
    router = args.router or f"http://{settings.host}:{settings.router_port}"
    try:
        status, body = _run(drain_via_router(router, args.gateway_id))
    except Exception as exc:  # httpx transport errors: say so in one line, no traceback
        print(f"router {router} unreachable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(body)
    return 0 if status == 200 else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    # loadtest needs the bench extras (hdrhistogram, matplotlib): imported only here
    from loadtest.cli import main as bench_main

    return bench_main([args.scenario, *args.rest])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardchat", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (else $SHARDCHAT_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run edge + router + gateway (embedded adapters by default)")
    dev.add_argument(
        "--cluster",
        action="store_true",
        help="start deploy/local PostgreSQL/Redis/Kafka and supervise one process per service",
    )
    dev.add_argument("--gateways", type=int, default=2, help="gateway processes with --cluster")
    dev.add_argument(
        "--balancer",
        action="store_true",
        help="with --cluster: HAProxy (deploy/local) in front, one public port for HTTP and"
        " WebSocket ($SHARDCHAT_HAPROXY_PORT, default 58080); clients are placed through it",
    )
    dev.add_argument("--data-dir", default="data", help="folder for the SQLite file and dev key")
    dev.set_defaults(func=_cmd_dev)

    sub.add_parser("gateway", help="run one gateway").set_defaults(func=_cmd_gateway)
    sub.add_parser("edge", help="run the GraphQL edge").set_defaults(func=_cmd_edge)
    sub.add_parser("router", help="run the router").set_defaults(func=_cmd_router)
    sub.add_parser("migrate", help="apply schema migrations").set_defaults(func=_cmd_migrate)

    drain = sub.add_parser("drain", help="drain a gateway: its clients move to others")
    drain.add_argument("gateway_id")
    drain.add_argument("--router", help="router base URL (default http://HOST:ROUTER_PORT)")
    drain.add_argument(
        "--via-registry",
        action="store_true",
        help="publish the drain on the registry directly instead of asking the router",
    )
    drain.set_defaults(func=_cmd_drain)

    bench = sub.add_parser("bench", help="run a load-test scenario (see loadtest/)")
    bench.add_argument("scenario")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=load_settings(args.config).log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO: noise from the drain command and the cluster's probes.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
