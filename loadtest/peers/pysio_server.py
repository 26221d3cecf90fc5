"""python-socketio peer baseline for the load test (loadtest/scenarios/peers.py).

``python -m loadtest.peers.pysio_server [--host H] [--port P]`` (P 0 = ephemeral).

The same events as the Socket.IO server of loadtest/peers/node/server.js: ``join`` (a room
name) enters the room, ``send`` ({room, content, nonce}) emits ``message`` to the whole room
(the sender included) and acknowledges the sender. Pure in-memory broadcast, nothing persisted.
One process: ``socketio.AsyncServer`` as an ASGI app on uvicorn (already a shardchat
dependency, so lighter than pulling in aiohttp) with uvloop and the sans-I/O ``websockets``
protocol, WebSocket transport only, no per-message deflate. Ready when it printed
``listening on ws://HOST:PORT/socket.io/``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import signal
import socket
import sys
import time
from importlib.metadata import version
from typing import Any

import socketio  # type: ignore[import-untyped]  # no stubs, no py.typed
import uvicorn


def log_gc_pauses(threshold_ms: float = 20.0) -> None:
    """Print every garbage collection that took ``threshold_ms`` or more to stderr (``gc:``
    lines, which the peers runner counts): with 10k connections a full collection of this
    process's objects is the likeliest stall, and the interpreter's defaults are kept on
    purpose, so the stalls are reported rather than tuned away."""
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000
        if ms >= threshold_ms:
            print(
                f"gc: generation {info['generation']} {ms:.1f} ms "
                f"collected {info['collected']} at {time.monotonic():.3f}",
                file=sys.stderr,
                flush=True,
            )

    gc.callbacks.append(callback)


def build_app() -> tuple[socketio.AsyncServer, socketio.ASGIApp]:
    sio = socketio.AsyncServer(
        async_mode="asgi",
        transports=["websocket"],
        cors_allowed_origins=[],  # no browser origin checks: the clients are the harness
        ping_interval=25,  # the Engine.IO v4 defaults: the server pings, the client answers
        ping_timeout=20,
        logger=False,
        engineio_logger=False,
    )

    async def join(sid: str, room: Any) -> bool:
        await sio.enter_room(sid, str(room))
        return True

    async def send(sid: str, msg: Any) -> dict[str, Any]:
        if not isinstance(msg, dict) or "room" not in msg:
            return {"ok": False}
        await sio.emit("message", msg, room=str(msg["room"]))
        return {"ok": True, "nonce": msg.get("nonce")}

    sio.on("join", join)
    sio.on("send", send)
    return sio, socketio.ASGIApp(sio, socketio_path="socket.io")


async def serve(host: str, port: int) -> None:
    _, app = build_app()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(
        app,
        loop="none",  # the running loop (uvloop, below)
        ws="websockets-sansio",
        ws_ping_interval=None,  # Engine.IO pings on its own
        ws_per_message_deflate=False,
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn's flag
        await asyncio.sleep(0.02)
    bound = sock.getsockname()[1]
    print(
        f"listening on ws://{host}:{bound}/socket.io/ python-socketio {version('python-socketio')}",
        flush=True,
    )
    await task


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="pysio_server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # every connection is a file descriptor
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log_gc_pauses()
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:  # pragma: no cover - uvloop is a shardchat dependency
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main(sys.argv[1:])
