"""Fan-out benchmark: frames delivered per gateway CPU-second, gateway fan-out vs ``broadcast()``.

One process: N real websockets clients on loopback read everything; only the server's send
path is timed (``time.process_time`` around fan-out + flush, or around ``broadcast``), so the
clients' own CPU is not charged to the gateway. Prints JSON.

    python -m loadtest.fanout                       # 10/100/1000 members, 10 and 1 events/tick
    python -m loadtest.fanout --memory              # idle KiB per identified session

Writes the JSON to ``loadtest/results/fanout.json`` (``--memory``: ``fanout_memory.json``) as
well (``--out`` to change, ``--out ''`` for stdout only).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, broadcast, serve

from chat_core.models import RoomEvent
from gateway.fanout import fanout
from gateway.outbound import Flusher, Outbound
from gateway.session import Session
from protocol.codec import Encoding

T = TypeVar("T")

PAYLOAD = "x" * 60  # about a 120-byte event once enveloped


def _event(seq: int) -> RoomEvent:
    data = {"room_id": "1", "seq": seq, "id": str(seq), "author_id": "2", "content": PAYLOAD}
    return RoomEvent(1, seq, "MESSAGE_CREATE", data, int(time.time() * 1000))


class _TimedFlusher(Flusher):
    """The gateway's Flusher with its coalescing window, flushing on its own schedule (as in
    the gateway); charges each flush's CPU and records how long each batch waited from its
    fan-out to its write (the latency the window adds)."""

    __slots__ = ("cpu", "queued", "waits_ms", "writes")

    def __init__(self, window_s: float) -> None:
        super().__init__(window_s=window_s)
        self.cpu = 0.0
        self.queued: list[float] = []  # perf_counter of each batch fanned out, not yet written
        self.waits_ms: list[float] = []
        self.writes = 0

    def flush(self) -> None:
        now = time.perf_counter()
        self.waits_ms += [(now - t) * 1000 for t in self.queued]
        self.queued.clear()
        self.writes += len(self._dirty)
        t0 = time.process_time()
        super().flush()
        self.cpu += time.process_time() - t0


def _ms_summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values) or [0.0]

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.5), "p99": at(0.99), "max": at(1.0)}


async def _run(members: int, events: int, per_tick: int, window_us: int = 1000) -> dict[str, Any]:
    conns: list[ServerConnection] = []
    got = 0
    done = asyncio.Event()
    expected = 0

    async def handler(ws: ServerConnection) -> None:
        conns.append(ws)
        await ws.wait_closed()

    async def reader(url: str) -> None:
        nonlocal got
        async with connect(url, compression=None, max_queue=None) as c:
            async for _ in c:
                got += 1
                if got >= expected:
                    done.set()

    async with serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        readers = [asyncio.create_task(reader(f"ws://127.0.0.1:{port}")) for _ in range(members)]
        while len(conns) < members:  # noqa: ASYNC110 - waits for handlers to register
            await asyncio.sleep(0.01)
        result: dict[str, Any] = {"members": members, "events": events, "per_tick": per_tick}
        # The clients share this process and make most of its garbage; a full collection of
        # their 100k+ objects (tens of ms) landing inside a timed section would be charged to
        # fan-out at random. Freezing the set-up heap keeps collections to young objects
        # (a long-running gateway can do the same after start-up); the collections that still
        # run inside timed sections are counted in ``gc_in_timed``.
        gc.collect()
        gc.freeze()
        gc_in_timed = 0

        # --- gateway fan-out: one pass per room batch, one coalesced write per tick ----------
        # Twice: sessions sharing one ``s`` (a chunk is built once and shared, the best case)
        # and every session at its own ``s`` (a chunk built per recipient, the worst case).
        flusher = Flusher()
        for key, s_of in (("gateway", lambda i: 0), ("gateway_distinct_s", _distinct_s)):
            sessions = [
                Session(
                    str(i),
                    i,
                    Encoding.JSON,
                    Outbound(
                        ws.transport, flusher, text=True, limit=1 << 30, on_overflow=lambda: None
                    ),
                    s=s_of(i),
                )
                for i, ws in enumerate(conns)
            ]
            # Built before timing: in the gateway they are the consumer's decoded records,
            # not fan-out work. Templates, chunks, queueing, metrics and writes are timed.
            batches = [
                [_event(seq) for seq in range(first, min(first + per_tick, events + 1))]
                for first in range(1, events + 1, per_tick)
            ]
            expected, got = members * events, 0
            done.clear()
            cpu = 0.0
            for batch in batches:
                before = _collections()
                t0 = time.process_time()
                fanout(batch, sessions, flusher)
                flusher.flush()
                cpu += time.process_time() - t0
                gc_in_timed += _collections() - before
                for s in sessions:
                    s.ack(s.s)  # the client acknowledges: keeps the benchmark's memory flat
                await asyncio.sleep(0)
            await asyncio.wait_for(done.wait(), 60)
            result[f"{key}_frames_per_cpu_s"] = round(members * events / cpu)
        # --- the same, flushed as the gateway does: coalescing window on when busy ----------
        timed = _TimedFlusher(window_us / 1e6)
        sessions = [
            Session(
                str(i),
                i,
                Encoding.JSON,
                Outbound(ws.transport, timed, text=True, limit=1 << 30, on_overflow=lambda: None),
                s=_distinct_s(i),
            )
            for i, ws in enumerate(conns)
        ]
        expected, got = members * events, 0
        done.clear()
        cpu = 0.0
        for first in range(1, events + 1, per_tick):
            batch = [_event(seq) for seq in range(first, min(first + per_tick, events + 1))]
            before = _collections()
            t0 = time.process_time()
            fanout(batch, sessions, timed)
            cpu += time.process_time() - t0
            timed.queued.append(time.perf_counter())
            gc_in_timed += _collections() - before
            for s in sessions:
                s.ack(s.s)
            await asyncio.sleep(0)  # the next batch comes in the next tick
        await asyncio.wait_for(done.wait(), 60)
        cpu += timed.cpu
        result["coalesced_window_us"] = window_us
        result["gateway_coalesced_frames_per_cpu_s"] = round(members * events / cpu)
        result["coalesced_frames_per_write"] = round(members * events / max(1, timed.writes), 2)
        result["coalesced_added_latency_ms"] = _ms_summary(timed.waits_ms)
        result["gc_in_timed"] = gc_in_timed

        # --- baseline: websockets broadcast(), one frame build + write per connection -------
        expected, got = members * events, 0
        done.clear()
        cpu = 0.0
        for seq in range(1, events + 1):
            msg = json.dumps({"op": 0, "t": "MESSAGE_CREATE", "d": _event(seq).data, "s": seq})
            t0 = time.process_time()
            broadcast(conns, msg)
            cpu += time.process_time() - t0
            if seq % per_tick == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 60)
        result["broadcast_frames_per_cpu_s"] = round(members * events / cpu)
        result["speedup"] = round(
            result["gateway_frames_per_cpu_s"] / result["broadcast_frames_per_cpu_s"], 2
        )
        result["coalesced_speedup"] = round(
            result["gateway_coalesced_frames_per_cpu_s"] / result["broadcast_frames_per_cpu_s"], 2
        )
        for ws in conns:
            await ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
    gc.unfreeze()
    return result


def _collections() -> int:
    return sum(g["collections"] for g in gc.get_stats())


def _distinct_s(i: int) -> int:
    """A different ``s`` per session, far from a digit carry (7 digits for 10k sessions)."""
    return 1_000_000 + 100 * i


# --- idle memory per identified session ------------------------------------------------------


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _memory(sessions: int, warmup: int) -> dict[str, Any]:
    """Gateway RSS growth per idle identified session (clients in a separate process).

    The gateway runs here on the embedded adapters (SQLite store, memory log and registry) via
    ``Core.open``; a child process opens ``warmup`` sessions (one-time costs: imports, caches,
    allocator arenas), then ``sessions`` more, each IDENTIFYed and subscribed to one room.
    Reported: RSS after minus RSS before the second group, over ``sessions``. The in-memory
    registry keeps each session's saved blob in this process too (Redis in production), so the
    figure slightly overstates a production gateway.
    """
    import secrets
    import sys
    import tempfile

    from gateway.server import serve_gateway
    from shardchat.config import Settings
    from shardchat.runtime import Core

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            sqlite_path=f"{tmp}/chat.sqlite3",
            jwt_keys={"k1": secrets.token_hex(32)},
            host="127.0.0.1",
            gateway_port=0,
            identify_per_window=1 << 30,  # every client comes from 127.0.0.1
            heartbeat_interval_ms=3_600_000,  # idle clients: no heartbeats while measuring
        )
        core = await Core.open(settings)
        gw = None
        try:
            tokens = await core.auth.register("memory", "correct horse battery")
            await core.chat.create_room(tokens.user.id, "idle", [])
            gw = await serve_gateway(settings, core.auth, core.chat, core.event_log, core.registry)
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "loadtest.fanout",
                "--memory-clients",
                gw.url,
                tokens.access_token,
                str(warmup),
                str(sessions),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert child.stdin is not None and child.stdout is not None
            stdout, hub = child.stdout, gw.hub

            async def group(expected: int) -> int:
                line = await asyncio.wait_for(stdout.readline(), 300)
                if not line.startswith(b"ready"):
                    raise RuntimeError(f"memory clients failed: {line!r}")
                while len(hub.sessions) < expected:  # noqa: ASYNC110 - polls a dict's size
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)  # let the first periodic saves run
                gc.collect()
                return _rss_kib()

            before = await group(warmup)
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            after = await group(warmup + sessions)
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            await child.wait()
        finally:
            if gw is not None:
                await gw.close()
            await core.close()
    return {
        "sessions": sessions,
        "warmup_sessions": warmup,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_session": round((after - before) / sessions, 2),
    }


async def _memory_clients(url: str, token: str, warmup: int, sessions: int) -> None:
    """The child of ``--memory``: identified, subscribed, then idle until told to go."""
    import sys

    ident = json.dumps({"op": 2, "d": {"token": token, "subscribe": "all"}})
    conns: list[Any] = []

    async def one() -> None:
        ws = await connect(url, compression=None, max_queue=4)
        conns.append(ws)
        await ws.recv()  # HELLO
        await ws.send(ident)
        await ws.recv()  # READY
        await ws.recv()  # ROOM_SUBSCRIBED

    loop = asyncio.get_running_loop()
    for count in (warmup, sessions):
        for first in range(0, count, 100):  # bounded concurrency: no connect storm
            await asyncio.gather(*(one() for _ in range(min(100, count - first))))
        print("ready", len(conns), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
    for ws in conns:
        await ws.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


_FIGURES = (
    "gateway_frames_per_cpu_s",
    "gateway_distinct_s_frames_per_cpu_s",
    "gateway_coalesced_frames_per_cpu_s",
    "broadcast_frames_per_cpu_s",
)


async def _main(args: argparse.Namespace) -> str:
    runs: list[dict[str, Any]] = []
    for per_tick in args.per_tick:
        for members in args.members:
            samples = [
                await _run(members, args.events, per_tick, args.window_us)
                for _ in range(args.repeat)
            ]
            # The run with the median gateway figure: its speedup is a ratio within one run.
            samples.sort(key=lambda r: r["gateway_frames_per_cpu_s"])
            median = dict(samples[len(samples) // 2])
            median["samples"] = {k: [r[k] for r in samples] for k in _FIGURES}
            runs.append(median)
    report = {
        "benchmark": "fanout",
        "method": (
            "frames delivered / CPU seconds (time.process_time) of the server's send path only: "
            "fanout() of a room's events due in one tick + Flusher.flush() (templates, chunks, "
            "queueing, metrics, one transport.write per connection per tick), vs "
            "websockets broadcast() per event; event construction (the consumer's decode) is "
            "not timed; clients read on loopback in the same process; the set-up heap is "
            "gc.freeze()d; median run of `repeat` per row, `samples` lists them all. "
            "gateway_* = every session at the same s; gateway_distinct_s_* = each at its own s. "
            "gateway_coalesced_*: each at its own s, flushed by the gateway's Flusher on its own "
            "schedule with the coalescing window (flush_window_us) instead of once per tick; "
            "coalesced_added_latency_ms = fan-out to socket write per batch."
        ),
        "repeat": args.repeat,
        "python": platform.python_version(),
        "runs": runs,
    }
    return json.dumps(report, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (median reported)")
    parser.add_argument(
        "--per-tick",
        type=int,
        nargs="+",
        default=[10, 1],
        help="room events fanned out per loop tick (coalesced per write)",
    )
    parser.add_argument(
        "--window-us",
        type=int,
        default=1000,
        help="the coalescing window of the gateway_coalesced rows (flush_window_us)",
    )
    parser.add_argument(
        "--out",
        default="loadtest/results/fanout.json",
        help="where to write the JSON too ('' = stdout only)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="measure idle memory per identified session instead (clients in a child process)",
    )
    parser.add_argument("--sessions", type=int, default=2000, help="--memory: sessions measured")
    parser.add_argument("--warmup", type=int, default=200, help="--memory: sessions before")
    parser.add_argument("--memory-clients", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_clients:
        url, token, warmup, sessions = args.memory_clients
        run(_memory_clients(url, token, int(warmup), int(sessions)))
        return
    if args.memory:
        report = {
            "benchmark": "idle_memory_per_session",
            "method": (
                "gateway process VmRSS growth / sessions; gateway in-process on SQLite + memory "
                "log/registry (Core.open), clients in a child process; each session IDENTIFYed "
                "and subscribed to one room, then idle; the memory registry's saved session "
                "blobs are in the gateway process too (Redis in production)"
            ),
            "python": platform.python_version(),
            **run(_memory(args.sessions, args.warmup)),
        }
        text = json.dumps(report, indent=2)
        out = args.out.replace("fanout.json", "fanout_memory.json") if args.out else ""
    else:
        text = run(_main(args))
        out = args.out
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
