"""Fan-out benchmark: frames delivered per gateway CPU-second, gateway fan-out vs ``broadcast()``.

One process: N real websockets clients on loopback read everything; only the server's send
path is timed (``time.process_time`` around fan-out + flush, or around ``broadcast``), so the
clients' own CPU is not charged to the gateway. Prints JSON.

    python -m loadtest.fanout --members 10 100 1000 --events 200

Writes the JSON to ``loadtest/results/fanout.json`` as well (``--out`` to change).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, broadcast, serve

from chat_core.models import RoomEvent
from gateway.fanout import fanout
from gateway.outbound import Flusher, Outbound
from gateway.session import Session
from protocol.codec import Encoding

PAYLOAD = "x" * 60  # about a 120-byte event once enveloped


def _event(seq: int) -> RoomEvent:
    data = {"room_id": "1", "seq": seq, "id": str(seq), "author_id": "2", "content": PAYLOAD}
    return RoomEvent(1, seq, "MESSAGE_CREATE", data, int(time.time() * 1000))


async def _run(members: int, events: int, per_tick: int) -> dict[str, Any]:
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
        result: dict[str, Any] = {"members": members, "events": events}

        # --- gateway fan-out: template once, per-session s, coalesced write per tick --------
        flusher = Flusher()
        sessions = [
            Session(
                str(i),
                i,
                Encoding.JSON,
                Outbound(ws.transport, flusher, text=True, limit=1 << 30, on_overflow=lambda: None),
            )
            for i, ws in enumerate(conns)
        ]
        expected, got = members * events, 0
        done.clear()
        cpu = 0.0
        seq = 0
        while seq < events:
            t0 = time.process_time()
            for _ in range(min(per_tick, events - seq)):
                seq += 1
                fanout(_event(seq), sessions, flusher)
            flusher.flush()
            cpu += time.process_time() - t0
            for s in sessions:
                s.ack(s.s)  # the client acknowledges: keeps the benchmark's memory flat
            await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 60)
        result["gateway_frames_per_cpu_s"] = round(members * events / cpu)

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
        for ws in conns:
            await ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
    return result


async def _main(args: argparse.Namespace) -> str:
    out = [await _run(m, args.events, args.per_tick) for m in args.members]
    report = {
        "benchmark": "fanout",
        "events_per_tick": args.per_tick,
        "python": platform.python_version(),
        "runs": out,
    }
    return json.dumps(report, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument(
        "--per-tick",
        type=int,
        default=10,
        help="room events fanned out per loop tick (coalesced per write)",
    )
    parser.add_argument(
        "--out",
        default="loadtest/results/fanout.json",
        help="where to write the JSON too ('' = stdout only)",
    )
    args = parser.parse_args()
    try:
        import uvloop

        text = uvloop.run(_main(args))
    except ImportError:  # pragma: no cover
        text = asyncio.run(_main(args))
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
