"""Stop and start the real local engines from tests (durability and failover tests).

Every call runs ``deploy/local/engines.sh down|up NAME``: ``up`` returns only once the engine
answers again, and data survives (same state folder). Engines stopped here and never started
again are started at the end of the test session by ``tests/conftest.py`` so one failing test
cannot leave the others without their engine.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent
ENGINES_SH = ROOT / "deploy" / "local" / "engines.sh"

EngineName = Literal["pg", "redis", "kafka", "nats", "kafka3", "redis-cluster", "s3"]
ENGINE_NAMES: tuple[EngineName, ...] = (
    "pg",
    "redis",
    "kafka",
    "nats",
    "kafka3",
    "redis-cluster",
    "s3",
)

_stopped: set[str] = set()


class EngineControlError(RuntimeError):
    """engines.sh exited non-zero; the message carries its output."""


async def _run(action: str, name: str, within: float, *extra: str) -> str:
    if name not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {name!r}; one of {ENGINE_NAMES}")
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(ENGINES_SH),
        action,
        name,
        *extra,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise EngineControlError(f"engines.sh {action} {name} took over {within}s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise EngineControlError(f"engines.sh {action} {name} failed ({proc.returncode}):\n{text}")
    return text


async def stop(name: EngineName, within: float = 90.0) -> None:
    """Stop engine ``name`` cleanly (PostgreSQL fast shutdown, Redis SHUTDOWN, Kafka and
    s3proxy SIGTERM)."""
    _stopped.add(name)
    await _run("down", name, within)


async def kill(name: EngineName, node: int | None = None, within: float = 30.0) -> None:
    """``kill -9`` one process of an engine: ``nats``, or node N of ``kafka3`` / ``redis-cluster``
    (``start`` brings it back)."""
    _stopped.add(name)
    await _run("kill", name, within, *([] if node is None else [str(node)]))


async def start(name: EngineName, within: float = 120.0) -> None:
    """Start engine ``name`` and wait until it serves requests again."""
    await _run("up", name, within)
    _stopped.discard(name)


async def restart(name: EngineName, within: float = 180.0) -> None:
    await stop(name, within)
    await start(name, within)


def _run_sync(action: str, name: str, within: float) -> None:
    done = subprocess.run(
        ["bash", str(ENGINES_SH), action, name],
        timeout=within,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    if done.returncode != 0:
        out = done.stdout.decode(errors="replace")
        raise EngineControlError(f"engines.sh {action} {name} failed ({done.returncode}):\n{out}")


def start_sync(name: EngineName, within: float = 180.0) -> None:
    """``start`` for synchronous fixtures (an engine that only some tests use)."""
    _run_sync("up", name, within)
    _stopped.discard(name)


def stop_sync(name: EngineName, within: float = 120.0) -> None:
    """Stop an engine started for some tests only (not restarted at the end of the session)."""
    _run_sync("down", name, within)
    _stopped.discard(name)


def start_stopped_sync(within: float = 180.0) -> list[str]:
    """Start every engine this process stopped and did not start again; returns their names."""
    started: list[str] = []
    for name in sorted(_stopped):
        _run_sync("up", name, within)
        started.append(name)
    _stopped.clear()
    return started
