"""The ``shardchat`` command line: parsing, dev-mode settings, cluster wiring, the supervisor."""

from __future__ import annotations

import asyncio
import io
import json
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shardchat.cli import build_parser, main
from shardchat.config import Settings
from shardchat.services import DEV_KEY_FILE, dev_jwt_keys, dev_settings
from shardchat.supervisor import (
    ChildSpec,
    Supervisor,
    cluster_env,
    cluster_specs,
    gateway_ports,
)


def test_parser_knows_every_command() -> None:
    parser = build_parser()
    args = parser.parse_args(["dev", "--cluster", "--gateways", "3", "--data-dir", "d"])
    assert (args.cluster, args.gateways, args.data_dir) == (True, 3, "d")
    assert parser.parse_args(["dev"]).data_dir == "data"
    for command in ("gateway", "edge", "router", "migrate"):
        assert parser.parse_args([command]).command == command
    drain = parser.parse_args(["drain", "gw-1", "--via-registry"])
    assert (drain.gateway_id, drain.via_registry) == ("gw-1", True)


def test_dev_rejects_zero_gateways(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dev", "--gateways", "0"]) == 2
    assert "--gateways" in capsys.readouterr().err


def test_drain_reports_an_unreachable_router(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drain", "gw-1", "--router", "http://127.0.0.1:9"]) == 1
    assert "unreachable" in capsys.readouterr().err


def test_dev_settings_force_the_embedded_adapters(tmp_path: Path) -> None:
    configured = Settings(store="postgres", event_log="kafka", registry="redis")
    s = dev_settings(configured, tmp_path / "data")
    assert (s.store, s.event_log, s.registry) == ("sqlite", "memory", "memory")
    assert s.sqlite_path == str(tmp_path / "data" / "shardchat.sqlite3")
    assert s.jwt_keys  # generated


def test_dev_jwt_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    first = dev_jwt_keys(tmp_path)
    assert first == dev_jwt_keys(tmp_path)  # a restart keeps browser tokens valid
    mode = stat.S_IMODE((tmp_path / DEV_KEY_FILE).stat().st_mode)
    assert mode == 0o600
    configured = dev_settings(Settings(jwt_keys={"k": "s"}), tmp_path)
    assert configured.jwt_keys == {"k": "s"}  # configured keys win


def test_gateway_ports_skip_the_edge_and_router_ports() -> None:
    assert gateway_ports(Settings(), 3) == [8081, 8083, 8084]
    assert gateway_ports(Settings(gateway_port=9000), 2) == [9000, 9001]


def test_cluster_env_and_specs() -> None:
    environ = {"SHARDCHAT_POSTGRES_DSN": "postgresql://mine/db", "PATH": "/bin"}
    engines = {
        "SHARDCHAT_POSTGRES_DSN": "postgresql://engines/shardchat",
        "SHARDCHAT_REDIS_URL": "redis://127.0.0.1:56379/0",
    }
    env = cluster_env(Settings(), environ, engines, None)
    assert env["SHARDCHAT_POSTGRES_DSN"] == "postgresql://mine/db"  # the caller's wins
    assert env["SHARDCHAT_REDIS_URL"] == "redis://127.0.0.1:56379/0"
    assert (env["SHARDCHAT_STORE"], env["SHARDCHAT_EVENT_LOG"], env["SHARDCHAT_REGISTRY"]) == (
        "postgres",
        "kafka",
        "redis",
    )
    keys = json.loads(env["SHARDCHAT_JWT_KEYS"])
    assert len(keys) == 1
    specs = cluster_specs(Settings(), 2, env)
    assert [s.name for s in specs] == ["router", "gateway-0", "gateway-1", "edge"]
    gws = [s for s in specs if s.name.startswith("gateway")]
    assert [s.env["SHARDCHAT_GATEWAY_PORT"] for s in gws] == ["8081", "8083"]
    assert len({s.env["SHARDCHAT_GATEWAY_ID"] for s in gws}) == 2
    writers = [s.env["SHARDCHAT_WORKER_ID"] for s in specs if s.name != "router"]
    assert len(set(writers)) == len(writers)
    assert all(s.env["SHARDCHAT_JWT_KEYS"] == env["SHARDCHAT_JWT_KEYS"] for s in specs)
    configured = cluster_env(Settings(jwt_keys={"k": "s"}), {}, {}, None)
    assert "SHARDCHAT_JWT_KEYS" not in configured  # children read the configured keys


async def _eventually(condition: Callable[[], bool], within_s: float = 10) -> None:
    for _ in range(int(within_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_supervisor_restarts_a_crashed_child_and_stops_all() -> None:
    out = io.StringIO()
    crashy = ChildSpec("crashy", _python("print('up', flush=True); raise SystemExit(3)"), {})
    steady = ChildSpec("steady", _python("import time; time.sleep(60)"), {})
    sup = Supervisor([crashy, steady], backoff_initial_s=0.05, backoff_max_s=0.1, out=out)
    await sup.start()
    await _eventually(lambda: sup.children[0].restarts >= 2)
    assert sup.children[0].restarts >= 2
    await sup.stop()
    text = out.getvalue()
    assert "crashy (pid" in text and "exited with code 3; restarting" in text
    assert "[crashy] up" in text
    assert all(c.proc is not None and c.proc.returncode is not None for c in sup.children)


async def test_supervisor_kills_a_child_that_ignores_sigterm() -> None:
    stubborn = _python(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print('ready', flush=True); time.sleep(60)"
    )
    out = io.StringIO()
    sup = Supervisor([ChildSpec("stubborn", stubborn, {})], grace_s=0.5, out=out)
    await sup.start()
    await _eventually(lambda: "[stubborn] ready" in out.getvalue())
    started = time.monotonic()
    await sup.stop()
    assert time.monotonic() - started < 5
    assert sup.children[0].proc is not None and sup.children[0].proc.returncode == -9
    assert "SIGKILL" in out.getvalue()
