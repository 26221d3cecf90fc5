"""A TCP fault proxy: one listening port per link (services -> one engine), faults on command.

Each accepted connection opens its own connection to the link's upstream and copies bytes both
ways. On command, per link:

- ``latency``: every chunk is held ``latency_ms`` (+ up to ``jitter_ms``) before it is written,
  in both directions, order kept (a chunk is never written before an earlier one);
- ``stall``: nothing is read or written while stalled (connections stay open, the peers' TCP
  buffers fill up and their writes block), everything flows again when the stall ends;
- ``reset``: every open connection is aborted with a TCP RST on both sides, and for ``for_s``
  seconds each new connection is reset as soon as it is accepted (a flapping link);
- ``clear``: back to a clean link (latency 0, no stall, no reset window).

An upstream that refuses the connection (an engine that is down) gets the client reset too, as
a real network path would. ``Proxy`` runs on the caller's loop (tests); ``ProxyProcess`` runs it
in a process of its own, commanded over a pipe, so copying bytes never competes with the
harness for a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import random
import signal
import socket
import struct
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

CHUNK = 64 * 1024
QUEUE_CHUNKS = 32  # per direction: beyond it the reader waits (TCP backpressure)


@dataclass(frozen=True)
class LinkSpec:
    name: str
    upstream_port: int
    listen_port: int = 0  # 0: any free port (see Proxy.ports)
    host: str = "127.0.0.1"


def _rst(writer: asyncio.StreamWriter) -> None:
    """Abort with a RST (SO_LINGER 0), not a FIN: what a peer sees when the path resets."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _dial(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The upstream connection (a seam for the self-connect test)."""
    return await asyncio.open_connection(host, port)


class _Conn:
    __slots__ = ("client", "tasks", "upstream")

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[bool]] = []

    def reset(self) -> None:
        for task in self.tasks:
            task.cancel()
        _rst(self.client)
        _rst(self.upstream)


class Link:
    def __init__(self, spec: LinkSpec) -> None:
        self.spec = spec
        self.latency_s = 0.0
        self.jitter_s = 0.0
        self.reset_until = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self.stats = {"accepted": 0, "refused": 0, "reset": 0, "bytes": 0}

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.spec.host, self.spec.listen_port, reuse_address=True
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.reset()
        self._conns.clear()

    # --- faults -----------------------------------------------------------------------------
    def set_latency(self, latency_ms: float, jitter_ms: float = 0.0) -> None:
        self.latency_s = latency_ms / 1000
        self.jitter_s = jitter_ms / 1000

    def stall(self, on: bool) -> None:
        if on:
            self._flowing.clear()
        else:
            self._flowing.set()

    def reset(self, for_s: float = 0.0) -> int:
        """RST every open connection; new ones are reset for ``for_s`` seconds. How many reset."""
        loop = asyncio.get_running_loop()
        self.reset_until = loop.time() + for_s
        conns = list(self._conns)
        self._conns.clear()
        for conn in conns:
            conn.reset()
        self.stats["reset"] += len(conns)
        return len(conns)

    def clear(self) -> None:
        self.set_latency(0)
        self.stall(False)
        self.reset_until = 0.0

    # --- copying ----------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self.reset_until:
            self.stats["reset"] += 1
            _rst(writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                _dial(self.spec.host, self.spec.upstream_port), 5
            )
        except (OSError, TimeoutError):
            self.stats["refused"] += 1
            _rst(writer)
            return
        sock = up_writer.get_extra_info("socket")
        if sock is not None and sock.getsockname() == sock.getpeername():
            # Connecting to a free loopback port can connect the socket to itself (the kernel
            # picked that very port as the source): it would hold the engine's port and stop
            # the engine from starting again. Dropped at once, with a RST (no TIME_WAIT).
            self.stats["refused"] += 1
            _rst(up_writer)
            _rst(writer)
            return
        self.stats["accepted"] += 1
        conn = _Conn(writer, up_writer)
        self._conns.add(conn)
        conn.tasks = [
            loop.create_task(self._pipe(reader, up_writer)),
            loop.create_task(self._pipe(up_reader, writer)),
        ]
        clean = False
        try:
            done, _ = await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
            clean = all(not t.cancelled() and t.exception() is None and t.result() for t in done)
        finally:
            for task in conn.tasks:
                task.cancel()
            if conn in self._conns:  # ended by a peer, not by reset()
                self._conns.discard(conn)
                if clean:  # an orderly close: both sides closed
                    writer.close()
                    up_writer.close()
                else:  # a peer reset (a killed process): the other side is reset too
                    conn.reset()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One direction: a reader task queues (due time, chunk), this task writes them.

        True when the source closed cleanly (EOF, passed on), False when it was reset or the
        destination failed: the caller then resets both sides, as a real path would."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | bool] = asyncio.Queue(QUEUE_CHUNKS)

        async def read() -> None:
            due = 0.0
            try:
                while True:
                    await self._flowing.wait()
                    data = await reader.read(CHUNK)
                    if not data:
                        break
                    hold = self.latency_s + random.random() * self.jitter_s
                    due = max(due, loop.time() + hold)  # jitter never reorders
                    await queue.put((due, data))
            except (ConnectionError, OSError):
                await queue.put(False)
                return
            await queue.put(True)

        reading = loop.create_task(read())
        try:
            while not isinstance(item := await queue.get(), bool):
                due, data = item
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._flowing.wait()
                writer.write(data)
                self.stats["bytes"] += len(data)
                await writer.drain()
            if item:
                writer.write_eof()
            return item
        except (ConnectionError, OSError):
            return False
        finally:
            reading.cancel()


class Proxy:
    """Every link of a run on one loop; ``command`` is the whole control surface."""

    def __init__(self, specs: list[LinkSpec]) -> None:
        self.links = {spec.name: Link(spec) for spec in specs}

    async def start(self) -> None:
        for link in self.links.values():
            await link.start()

    async def close(self) -> None:
        for link in self.links.values():
            await link.close()

    @property
    def ports(self) -> dict[str, int]:
        return {name: link.port for name, link in self.links.items()}

    def _targets(self, name: str) -> list[Link]:
        if name == "*":
            return list(self.links.values())
        if name not in self.links:
            raise ValueError(f"unknown link {name!r}; one of {sorted(self.links)}")
        return [self.links[name]]

    def command(self, op: str, link: str = "*", **kw: Any) -> Any:
        """``latency`` (latency_ms, jitter_ms), ``stall`` (on), ``reset`` (for_s), ``clear``,
        ``ports``, ``stats``."""
        if op == "ports":
            return self.ports
        if op == "stats":
            return {name: dict(ln.stats) for name, ln in self.links.items()}
        targets = self._targets(link)
        if op == "latency":
            for ln in targets:
                ln.set_latency(float(kw["latency_ms"]), float(kw.get("jitter_ms", 0)))
            return None
        if op == "stall":
            for ln in targets:
                ln.stall(bool(kw["on"]))
            return None
        if op == "reset":
            return sum(ln.reset(float(kw.get("for_s", 0))) for ln in targets)
        if op == "clear":
            for ln in targets:
                ln.clear()
            return None
        raise ValueError(f"unknown proxy command {op!r}")


# --- the proxy in a process of its own --------------------------------------------------------


def _serve(specs: list[LinkSpec], pipe: Connection) -> None:
    """The child's body: start the links, report the ports, then answer commands until EOF.

    Ctrl-C reaches the whole process group: the parent heals and closes us, so it is ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        proxy = Proxy(specs)
        try:
            await proxy.start()
        except OSError as exc:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        pipe.send(("ok", proxy.ports))
        done = asyncio.Event()

        def on_command(msg: tuple[Any, ...] | None) -> None:
            if msg is None:
                done.set()
                return
            op, link, kw = msg
            try:
                pipe.send(("ok", proxy.command(op, link, **kw)))
            except Exception as exc:  # answered to the caller, who raises it
                pipe.send(("error", f"{type(exc).__name__}: {exc}"))

        def read_commands() -> None:  # a thread: the loop never blocks on the pipe
            while True:
                try:
                    msg = pipe.recv()
                except (EOFError, OSError):
                    msg = None
                loop.call_soon_threadsafe(on_command, msg)
                if msg is None:
                    return

        threading.Thread(target=read_commands, daemon=True).start()
        await done.wait()
        await proxy.close()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(main())


class ProxyProcess:
    """``Proxy`` in a child process; every method blocks until the child answered."""

    def __init__(self, specs: list[LinkSpec]) -> None:
        ctx = mp.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve, args=(specs, child), daemon=True, name="chaos-proxy"
        )
        self._proc.start()
        child.close()
        self.ports: dict[str, int] = self._answer(30)

    def _answer(self, timeout_s: float) -> Any:
        if not self._pipe.poll(timeout_s):
            raise TimeoutError("the fault proxy did not answer")
        status, value = self._pipe.recv()
        if status != "ok":
            raise RuntimeError(f"fault proxy: {value}")
        return value

    def command(self, op: str, link: str = "*", **kw: Any) -> Any:
        self._pipe.send((op, link, kw))
        return self._answer(10)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._pipe.send(None)
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._pipe.close()
