"""A client worker process for the Socket.IO peers: thousands of connections on one loop.

The counterpart of loadtest/worker.py on the same base (loadtest/clientproc.py: the parent
protocol of loadtest/plan.py, so the parent side is loadtest/harness.py's Harness), speaking
Engine.IO v4 / Socket.IO v5 directly over raw ``websockets`` connections (``compression=None``,
one reader task per connection, ONE sender task per process; codec in loadtest/peers/eio.py):

    -> GET /socket.io/?EIO=4&transport=websocket      <- 0{"sid":..,"pingInterval":..}
    -> 40                                             <- 40{"sid":..}
    -> 420["join","<room>"]                           <- 430[true]        (ready)
    -> 42<id>["send",{"room","content","nonce"}]      <- 42["message",{...}] at every member
                                                      <- 43<id>[{"ok":true,..}] at the sender
    <- 2 (server ping)                                -> 3

Accounting as in the shardchat worker: the content starts with the send time
(``time.monotonic_ns()``), latency = receive time - send time at every member, the sender
included; a message is identified by (room, nonce) (nonce = worker index << 40 | request id),
and lost / duplicated are counted per receiver against every ACKNOWLEDGED nonce of its room.
There is no resume in Socket.IO: a dropped connection reconnects and joins again, and what
its room received meanwhile shows up as lost. Sends not acknowledged are counted ``unacked``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from multiprocessing.connection import Connection

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from loadtest import clientproc
from loadtest.peers import eio
from loadtest.plan import ClientSpec, WorkerPlan

JOIN_ACK = 0  # the ack id of a connection's "join"; sends use ids from 1
NONCE_SHIFT = 40  # nonce = worker index << 40 | request id: unique over the run


class ConnectRefused(Exception):
    """The server answered CONNECT with CONNECT_ERROR, or closed during the handshake."""


class Client(clientproc.Client):
    __slots__ = ("joined_once",)

    def __init__(self, spec: ClientSpec) -> None:
        super().__init__(spec)
        self.joined_once = False


class PeerWorker(clientproc.ClientProcess[Client]):
    SESSION_ERRORS = (*clientproc.ClientProcess.SESSION_ERRORS, ConnectRefused, eio.ProtocolError)

    def __init__(self, plan: WorkerPlan, pipe: Connection) -> None:
        super().__init__(plan, pipe, [Client(spec) for spec in plan.clients])
        self.urls = [eio.socketio_url(u) for u in plan.urls]

    def _identified(self, c: Client) -> bool:
        return c.joined_once

    def _is_reconnect(self, c: Client, first: bool) -> bool:
        return c.joined_once

    def _nonce(self, req: int) -> int:
        return (self.plan.index << NONCE_SHIFT) | req

    # --- one connection: connect, CONNECT, join, read ---------------------------------------
    async def _session(self, c: Client) -> None:
        async with self.sem:
            t0 = time.monotonic()
            ws = await self._connect(self.urls[c.url_idx], c)  # server pings: see _handle
            c.ws = ws
            async with asyncio.timeout(self.plan.open_timeout_s):
                eio.handshake(eio.decode(await ws.recv()))
                await ws.send(eio.encode_connect())
                while True:
                    p = eio.decode(await ws.recv())
                    if p.eio == eio.EIO_PING:
                        await ws.send(eio.PONG)
                    elif p.sio == eio.SIO_CONNECT:
                        break
                    elif p.sio == eio.SIO_CONNECT_ERROR or p.eio == eio.EIO_CLOSE:
                        raise ConnectRefused(repr(p.data))
                await ws.send(eio.encode_event("join", str(c.spec.room_id), ack_id=JOIN_ACK))
                while not c.ready:
                    await self._handle(c, ws, await ws.recv())
            c.attempts = 0
            c.joined_once = True
            self.connect_latency.record_ms((time.monotonic() - t0) * 1000)
        try:
            async for msg in ws:
                await self._handle(c, ws, msg)
        finally:
            c.ws = None
            if not self.closing:  # why connections dropped: 1000 server close, 1006 lost, ...
                self.count(f"close_{ws.close_code}")

    async def _handle(self, c: Client, ws: ClientConnection, raw: str | bytes) -> None:
        if raw == eio.PING:  # the hot control path: no decode
            with contextlib.suppress(ConnectionClosed):
                await ws.send(eio.PONG)
            return
        p = eio.decode(raw)
        sio = p.sio
        if sio == eio.SIO_EVENT:
            if p.data[0] == "message" and len(p.data) > 1:
                d = p.data[1]
                self._delivered(c, int(d["room"]), int(d["nonce"]), d["content"])
            else:
                self.count(f"event_{p.data[0]}")
        elif sio == eio.SIO_ACK:
            if p.ack_id == JOIN_ACK:
                c.ready = True
            else:
                self._ack(p)
        elif sio == eio.SIO_DISCONNECT or p.eio == eio.EIO_CLOSE:
            self.count("server_disconnects")
            await ws.close(1000, "server disconnect")
        elif sio == eio.SIO_CONNECT_ERROR:
            raise ConnectRefused(repr(p.data))

    def _ack(self, p: eio.Packet) -> None:
        req = p.ack_id
        if req is None or (entry := self.inflight.pop(req, None)) is None:
            self.count("stray_acks")
            return
        c, t0 = entry
        d = p.data[0] if p.data else None
        if isinstance(d, dict) and d.get("ok"):
            self.acked.setdefault(c.spec.room_id, []).append(self._nonce(req))
            self.count("acked")
            self.ack_latency.record_ms((time.monotonic() - t0) * 1000)
        else:
            self.count("errors")

    # --- the run phase's sends --------------------------------------------------------------
    async def _send(self, c: Client, ws: ClientConnection) -> None:
        req = next(self.ids)
        nonce = self._nonce(req)
        room = c.spec.room_id
        now_ns = time.monotonic_ns()
        raw = eio.encode_event(
            "send",
            {"room": str(room), "content": f"{now_ns} {self.pad}", "nonce": nonce},
            ack_id=req,
        )
        self.inflight[req] = (c, now_ns / 1e9)
        self.count("sent")
        self.timeline.sent()
        try:
            await ws.send(raw)
        except ConnectionClosed:
            self.count("send_failed")  # no resume in Socket.IO: it stays unacknowledged


def worker_main(plan: WorkerPlan, pipe: Connection) -> None:
    """The spawned process's entry point."""
    clientproc.run_process(PeerWorker, plan, pipe)
