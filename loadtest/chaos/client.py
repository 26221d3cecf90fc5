"""Chaos client processes: members that behave as real clients do, and senders that retry.

Each process runs some members of the run (users, each in several rooms) on one loop, every
member with its own gateway connection, speaking docs/protocol.md as a careful client would:

- discovery: ``GET /gateway?key=<user>`` on the router, then the edge; after an attempt that
  failed (a paused or dead gateway), the next gateway of the run's list instead;
- IDENTIFY ``subscribe: "all"`` once; heartbeats every interval with the last ``s``; a
  connection that answered no heartbeat AND sent no frame at all for a whole interval is a
  zombie: closed with 4000 (a member reading a long catch-up is busy, not dead);
- after a dropped connection or a 4000-4499 close: a new connection after a backoff (0.2 s
  doubling to 5 s, jittered) and RESUME with ``rooms`` (its last room seq per room);
  RECONNECT: the given url. INVALID_SESSION or a 45xx close: IDENTIFY, then SUBSCRIBE every
  room it is still in with ``after_seq`` = its last seq; a room answered with
  ``recovered: false`` is refetched over GraphQL ``messages`` (what it lacks up to the
  ROOM_SUBSCRIBED seq); a SUBSCRIBE that failed for another reason is retried by closing 4000
  (the RESUME that follows lists every room);
- every durable event is recorded as received (room, seq, time), duplicates included: the
  checker, not the client, decides what is wrong. Its position (for RESUME/after_seq) is the
  highest seq it holds.

Senders: every message has a nonce and is retried with it until acknowledged, each attempt over
the member's gateway SEND (when connected) or GraphQL ``sendMessage`` at random, so a retry
may cross paths (idempotency is per (author, nonce) whatever the path).

On command from the parent (loadtest/chaos/nemesis.py) members go offline (``resume``: the TCP
connection is dropped, the session resumed later; ``subscribe``: closed with 1000, a new session
later), stop reading (``slow``), leave a room over GraphQL ``leaveRoom`` (after their sends to
it were acknowledged), or send a burst of large messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Coroutine
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from chat_core.models import EVENT_TYPES
from loadtest import clientproc
from loadtest.chaos.records import MemberLog, RoomLog, SendLog, Window
from loadtest.chaos.schedule import LARGE_CHARS, SMALL_CHARS
from loadtest.worker import Envelope, frame

DISPATCH, HEARTBEAT, IDENTIFY, SUBSCRIBE, RESUME, RECONNECT, SEND = 0, 1, 2, 4, 6, 7, 8
INVALID_SESSION, HELLO, HEARTBEAT_ACK, REPLY = 9, 10, 11, 13
DURABLE = frozenset(EVENT_TYPES)
RETRYABLE = frozenset({"INTERNAL", "RATE_LIMITED", "UNAVAILABLE"})
GONE = frozenset({"FORBIDDEN", "NOT_FOUND"})  # a room the member is no longer in
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.2, 5.0
SEND_WINDOW = 4  # sends of one member in flight at once; the rest wait their turn, in order
SESSION_ERRORS = (OSError, TimeoutError, InvalidHandshake, ConnectionClosed, msgspec.DecodeError)

_decode = msgspec.json.Decoder(Envelope).decode
_SEND_GQL = (
    "mutation($r: ID!, $c: String!, $n: String!) "
    "{ sendMessage(roomId: $r, content: $c, nonce: $n) { id seq } }"
)
_LEAVE_GQL = "mutation($r: ID!) { leaveRoom(roomId: $r) }"
_HISTORY_GQL = (
    "query($r: ID!, $a: ID) { messages(roomId: $r, after: $a, limit: 100) "
    "{ items { id seq } hasMore } }"
)


@dataclass(frozen=True)
class MemberSpec:
    user_id: int
    token: str
    rooms: tuple[int, ...]
    gateway: int  # index of the first gateway to try when discovery is down


@dataclass(frozen=True)
class ChaosPlan:
    index: int
    seed: int
    urls: list[str]  # every gateway's ws URL
    edge: str  # http://host:port
    router: str
    members: list[MemberSpec]
    rcvbuf: int = 256 * 1024  # SO_RCVBUF of each connection: a client on a modest link
    attempt_s: float = 10.0  # one send attempt, one GraphQL call


class Retry(Exception):
    """An attempt failed in a way worth retrying (same nonce)."""


class Refused(Exception):
    """A definitive answer that ends the retries (never expected in a run)."""


class Member:
    def __init__(self, spec: MemberSpec) -> None:
        self.spec = spec
        self.uid = spec.user_id
        self.log = MemberLog(spec.user_id, {r: RoomLog() for r in spec.rooms})
        self.joined = set(spec.rooms)  # rooms it is in, as far as it knows
        self.leaving: set[int] = set()
        self.positions: dict[int, int] = {}  # room -> highest seq held
        self.have: dict[int, set[int]] = {r: set() for r in spec.rooms}
        self.session_id: str | None = None
        self.last_s: int | None = None
        self.first = True  # the first session subscribes "all"
        self.resubscribe = False  # the next READY: SUBSCRIBE with after_seq
        self.expect: set[int] | None = None
        self.sub_req: int | None = None
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ws: ClientConnection | None = None
        self.ready = False
        self.got_ready = False  # this attempt reached READY/RESUMED
        self.hb_s = 41.25
        self.next_hb = float("inf")
        self.hb_acked = True
        self.frames = 0  # frames read since the last heartbeat
        self.url: str | None = None  # from RECONNECT
        self.url_idx = spec.gateway
        self.away: Window | None = None  # offline until the parent says "online"
        self.slow: Window | None = None  # not reading until the parent says "read"
        self.wake = asyncio.Event()  # set when it comes back or reads again
        self.inflight: dict[int, int] = {}
        self.window = asyncio.Semaphore(SEND_WINDOW)
        self.refetching: set[int] = set()

    def room_log(self, room: int) -> RoomLog:
        log = self.log.rooms.get(room)
        if log is None:  # a room it was never in: kept, the checker will see it
            log = self.log.rooms[room] = RoomLog()
            self.have[room] = set()
        return log

    def hold(self, room: int, seq: int) -> None:
        if room in self.joined and seq > self.positions.get(room, -1):
            self.positions[room] = seq


class ChaosWorker:
    def __init__(self, plan: ChaosPlan, pipe: Connection) -> None:
        self.plan = plan
        self.pipe = pipe
        self.members = [Member(spec) for spec in plan.members]
        self.by_user = {m.uid: m for m in self.members}
        self.rng = random.Random(plan.seed * 1009 + plan.index)
        self.sends: list[SendLog] = []
        self.counters: dict[str, int] = {}
        self.ids = itertools.count(1)
        self.nonces = itertools.count(1)
        self.sending = False
        self.closing = False
        self.done = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.http = httpx.AsyncClient(
            timeout=plan.attempt_s,
            trust_env=False,  # loopback only: never a proxy from the environment
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    def count(self, name: str, n: int = 1, m: Member | None = None) -> None:
        """A process counter, and ``m``'s own when given (how that member fared)."""
        self.counters[name] = self.counters.get(name, 0) + n
        if m is not None:
            m.log.counters[name] = m.log.counters.get(name, 0) + n

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            name = f"task_error_{type(exc).__name__}"
            if name not in self.counters:  # the first of each kind, with its traceback
                traceback.print_exception(exc, file=sys.stderr)
            self.count(name)

    # --- the process ------------------------------------------------------------------------
    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read_commands, args=(loop,), daemon=True).start()
        for m in self.members:
            self.spawn(self._life(m))
        self.spawn(self._heartbeats())
        self.spawn(self._report())
        await self.done.wait()

    def _read_commands(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                msg = self.pipe.recv()
            except (EOFError, OSError):  # the parent is gone
                msg = ("close",)
            loop.call_soon_threadsafe(self._on_command, msg)
            if msg[0] == "close":
                return

    def _on_command(self, msg: tuple[Any, ...]) -> None:
        kind, args = msg[0], msg[1:]
        if kind == "send":
            self.spawn(self._sending(*args))
        elif kind == "burst":
            self.spawn(self._burst(*args))
        elif kind == "offline":
            self._offline(*args)
        elif kind == "online":
            self._online(*args)
        elif kind == "slow":
            self._slow(*args)
        elif kind == "read":
            self._read(*args)
        elif kind == "leave":
            self.spawn(self._leave(*args))
        elif kind == "stop_sending":
            self.spawn(self._stop_sending(*args))
        elif kind == "settle":
            self.spawn(self._settle(*args))
        elif kind == "close":
            self.spawn(self._close())

    async def _report(self) -> None:
        while not self.closing:
            ready = sum(1 for m in self.members if m.ready)
            inflight = sum(1 for s in self.sends if s.t_ack is None and not s.error)
            self.pipe.send(("progress", ready, dict(self.counters), inflight))
            await asyncio.sleep(0.5)

    # --- one member's life: sessions, again after each drop -----------------------------------
    async def _life(self, m: Member) -> None:
        backoff = BACKOFF_MIN_S
        while not self.closing:
            while m.away is not None:
                m.wake.clear()
                await m.wake.wait()
            try:
                await self._session(m, await self._next_url(m))
            except Exception as exc:  # a member never dies of its connection: it reconnects
                name = f"err_{type(exc).__name__}"
                if not isinstance(exc, SESSION_ERRORS) and name not in self.counters:
                    traceback.print_exception(exc, file=sys.stderr)  # unexpected: show once
                self.count(name, m=m)
            m.ws = None
            m.ready = False
            for fut in m.replies.values():
                if not fut.done():
                    fut.set_exception(Retry("dropped"))
                    fut.exception()  # retrieved: its sender may be gone already
            m.replies.clear()
            if self.closing:
                return
            if m.away is not None:
                continue  # away on purpose: no backoff
            if m.got_ready:
                backoff = BACKOFF_MIN_S
            await asyncio.sleep(backoff * self.rng.uniform(0.5, 1.5))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _next_url(self, m: Member) -> str:
        if m.url is not None:
            url, m.url = m.url, None
            return url
        if m.got_ready or m.first:  # discovery, unless the last attempt led nowhere
            for base in (self.plan.router, self.plan.edge):
                with contextlib.suppress(Exception):  # router or edge down: the next one
                    resp = await self.http.get(
                        f"{base}/gateway", params={"key": str(m.uid)}, timeout=2
                    )
                    if resp.status_code == 200:
                        return str(resp.json()["url"])
            self.count("discovery_failed")
        m.url_idx = (m.url_idx + 1) % len(self.plan.urls)
        return self.plan.urls[m.url_idx]

    async def _socket(self, url: str) -> socket.socket:
        parts = urlsplit(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.plan.rcvbuf)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (parts.hostname, parts.port)), 10)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _session(self, m: Member, url: str) -> None:
        m.got_ready = False
        m.next_hb = float("inf")
        sock = await self._socket(url)
        ws = await connect(
            url + "?v=1&encoding=json",
            sock=sock,
            compression=None,
            proxy=None,
            open_timeout=10,
            ping_interval=None,  # the protocol's own heartbeats
            close_timeout=2,
            max_size=1 << 23,
            max_queue=64,  # a member that stops reading stops the socket soon after
        )
        m.ws = ws
        try:
            hello = _decode(await asyncio.wait_for(ws.recv(decode=False), 10))
            if hello.op != HELLO:
                raise ConnectionClosed(None, None)
            m.hb_s = float(hello.d["heartbeat_interval_ms"]) / 1000
            m.hb_acked, m.frames = True, 0
            m.next_hb = time.monotonic() + m.hb_s * self.rng.random()
            await ws.send(self._hello_reply(m))
            while True:
                if m.away is not None:
                    await self._go_away(m, ws)
                if m.slow is not None:  # not reading: the socket fills up
                    m.wake.clear()
                    await m.wake.wait()
                    continue
                raw = await ws.recv(decode=False)
                m.frames += 1
                await self._handle(m, ws, raw)
        except ConnectionClosed:
            code = ws.close_code
            if not self.closing:
                self.count(f"close_{code}", m=m)
            if code is not None and 4500 <= code <= 4999:
                m.session_id = None  # terminal: a new session (the user would log in again)
                m.resubscribe = True
        finally:
            ws.transport.abort()

    def _hello_reply(self, m: Member) -> str:
        if m.session_id is not None:
            rooms = {str(r): seq for r, seq in m.positions.items() if r in m.joined}
            d: dict[str, Any] = {
                "token": m.spec.token,
                "session_id": m.session_id,
                "seq": m.last_s or 0,
                "rooms": rooms,
            }
            return frame(RESUME, d)
        ident: dict[str, Any] = {"token": m.spec.token, "client": {"name": "chaos", "version": "1"}}
        if m.first:
            ident["subscribe"] = "all"
        return frame(IDENTIFY, ident)

    async def _go_away(self, m: Member, ws: ClientConnection) -> None:
        if m.session_id is None:  # offline "subscribe": end the session (1000)
            await ws.close(1000, "going offline")
        ws.transport.abort()  # offline "resume": the connection just drops
        raise ConnectionClosed(None, None)

    # --- frames -------------------------------------------------------------------------------
    async def _handle(self, m: Member, ws: ClientConnection, raw: bytes | str) -> None:
        env = _decode(raw)
        op = env.op
        if op == DISPATCH:
            if env.s is not None:
                m.last_s = env.s
            t, d = env.t, env.d
            if t in DURABLE:
                self._event(m, t, d)
            elif t == "ROOM_SUBSCRIBED":
                self._subscribed(m, d)
            elif t == "READY":
                await self._on_ready(m, ws, d)
            elif t == "RESUMED":
                self.count("resumed", m=m)
                self._set_ready(m)
        elif op == HEARTBEAT_ACK:
            m.hb_acked = True
        elif op == REPLY:
            if env.id is not None and env.id == m.sub_req:
                await self._subscribe_reply(m, ws, env.d or {})
                return
            fut = m.replies.pop(env.id or 0, None)
            if fut is not None and not fut.done():
                fut.set_result(env.d or {})
        elif op == INVALID_SESSION:
            self.count("invalid_session", m=m)
            m.session_id = None
            m.last_s = None
            m.resubscribe = True
            await ws.send(self._hello_reply(m))
        elif op == RECONNECT:
            self.count("reconnect_op", m=m)
            url = (env.d or {}).get("url")
            if url:
                m.url = url
            await ws.close(4000, "reconnect")
        elif op == HEARTBEAT:
            await ws.send(frame(HEARTBEAT, m.last_s))

    def _event(self, m: Member, t: str | None, d: dict[str, Any]) -> None:
        room, seq = int(d["room_id"]), int(d["seq"])
        m.room_log(room).gw.append((seq, time.monotonic()))
        have = m.have[room]
        self.count("received" if seq not in have else "received_again")
        have.add(seq)
        m.hold(room, seq)
        if t == "MEMBER_LEAVE" and int(d["user_id"]) == m.uid:
            m.joined.discard(room)  # the gateway ends the subscription after this event
            m.positions.pop(room, None)

    def _subscribed(self, m: Member, d: dict[str, Any]) -> None:
        room, seq = int(d["room_id"]), int(d["seq"])
        log = m.room_log(room)
        if log.base is None:
            log.base = seq  # live from here: nothing before it is owed
        elif not d.get("recovered", False):
            held = m.positions.get(room, log.base)
            if seq > held:  # the gateway could not replay: the history has it
                self.spawn(self._refetch(m, room, held, seq))
        m.hold(room, seq)
        if m.expect is not None:
            m.expect.discard(room)
            if not m.expect:
                m.expect = None
                self._set_ready(m)

    async def _on_ready(self, m: Member, ws: ClientConnection, d: dict[str, Any]) -> None:
        m.session_id = str(d["session_id"])
        if m.first:
            m.first = False
            m.expect = {int(r["id"]) for r in d.get("rooms", ())}
            if not m.expect:
                m.expect = None
                self._set_ready(m)
            return
        m.resubscribe = False
        rooms = sorted(m.joined)
        if not rooms:
            self._set_ready(m)
            return
        specs = [
            {"room_id": str(r), **({"after_seq": m.positions[r]} if r in m.positions else {})}
            for r in rooms
        ]
        m.sub_req = next(self.ids)
        await ws.send(frame(SUBSCRIBE, {"rooms": specs}, id=m.sub_req))

    async def _subscribe_reply(self, m: Member, ws: ClientConnection, d: dict[str, Any]) -> None:
        m.sub_req = None
        if d.get("ok"):
            failed = d["result"].get("failed", [])
        else:
            code = (d.get("error") or {}).get("code", "INTERNAL")
            failed = [{"room_id": str(r), "code": code} for r in m.joined]
        retry = False
        for f in failed:
            room = int(f["room_id"])
            if f.get("code") in GONE:
                m.joined.discard(room)
                m.positions.pop(room, None)
            else:
                retry = True
        if retry:  # the RESUME that follows lists every room
            self.count("subscribe_retry", m=m)
            await ws.close(4000, "subscribe failed")
            return
        self._set_ready(m)

    def _set_ready(self, m: Member) -> None:
        m.ready = True
        m.got_ready = True

    async def _refetch(self, m: Member, room: int, after_seq: int, upto_seq: int) -> None:
        """What the member lacks of ``after_seq+1 .. upto_seq``, from GraphQL ``messages``."""
        self.count("history_refetch", m=m)
        m.refetching.add(room)
        log, have = m.room_log(room), m.have[room]
        cursor = "1"  # every message id is above it
        backoff = BACKOFF_MIN_S
        try:
            while not self.closing:
                try:
                    page = (await self._graphql(m, _HISTORY_GQL, {"r": str(room), "a": cursor}))[
                        "messages"
                    ]
                except Retry:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                now = time.monotonic()
                for item in page["items"]:
                    seq = int(item["seq"])
                    if after_seq < seq <= upto_seq and seq not in have:
                        have.add(seq)
                        log.hist.append((seq, now))
                if not page["hasMore"] or not page["items"]:
                    return
                cursor = page["items"][-1]["id"]
        except Refused as exc:
            self.count(f"history_refused_{exc}")
        finally:
            m.refetching.discard(room)

    # --- heartbeats ---------------------------------------------------------------------------
    async def _heartbeats(self) -> None:
        while not self.closing:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for m in self.members:
                ws = m.ws
                if ws is None or now < m.next_hb:
                    continue
                m.next_hb = now + m.hb_s
                if not m.hb_acked and m.frames == 0 and m.slow is None:
                    self.count("zombie", m=m)
                    self.spawn(ws.close(4000, "no heartbeat ACK"))
                    continue
                m.hb_acked, m.frames = False, 0
                self.spawn(self._beat(ws, m.last_s))

    async def _beat(self, ws: ClientConnection, last_s: int | None) -> None:
        """One HEARTBEAT, on a task of its own: a write to a stopped peer blocks."""
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            await asyncio.wait_for(ws.send(frame(HEARTBEAT, last_s)), 10)

    # --- sends ----------------------------------------------------------------------------------
    async def _sending(self, rate: float) -> None:
        """``rate`` small messages per second from random members to random rooms of theirs."""
        self.sending = True
        t0 = time.monotonic()
        n = 0
        while self.sending:
            for _ in range(int((time.monotonic() - t0) * rate) - n):
                n += 1
                choices = [
                    (m, r)
                    for m in self.members
                    if m.away is None
                    for r in sorted(m.joined - m.leaving)
                ]
                if not choices:
                    self.count("send_skipped")
                    continue
                m, room = self.rng.choice(choices)
                self.spawn(self._send(m, room, large=False))
            await asyncio.sleep(0.05)

    async def _burst(self, burst: int, room: int, count: int, seconds: float, exclude: int) -> None:
        """``count`` large messages into ``room`` (within ``seconds`` at most) from this
        process's other members of it, each keeping its window full: a backlog that builds as
        fast as the system acknowledges it. Reports ``burst_done``."""
        senders = [
            m
            for m in self.members
            if m.uid != exclude and room in m.joined - m.leaving and m.away is None
        ] * SEND_WINDOW
        deadline = time.monotonic() + seconds
        share = -(-count // len(senders)) if senders else 0

        async def one(m: Member) -> None:
            for i in range(share):
                if not self.sending or time.monotonic() > deadline:
                    self.count("burst_cut", share - i)
                    return
                await self._send(m, room, large=True)

        try:
            await asyncio.gather(*(one(m) for m in senders))
        finally:
            self.pipe.send(("burst_done", burst))

    def _content(self, nonce: str, large: bool) -> str:
        size = LARGE_CHARS if large else SMALL_CHARS
        head = f"{nonce} "
        return head + "x" * (size - len(head))

    async def _send(self, m: Member, room: int, *, large: bool) -> None:
        """One message. It waits for a slot of the member's window (typed while earlier ones
        are in flight); once attempted, it is retried until acknowledged. One still waiting
        when sending stops, or whose room the member is leaving, is never sent (not counted)."""
        async with m.window:
            if not self.sending or room not in m.joined - m.leaving:
                self.count("send_dropped")
                return
            nonce = f"c{self.plan.index}-{next(self.nonces)}"
            log = SendLog(nonce, m.uid, room, time.monotonic(), large)
            self.sends.append(log)
            m.inflight[room] = m.inflight.get(room, 0) + 1
            try:
                await self._attempts(m, log, self._content(nonce, large))
            finally:
                m.inflight[room] -= 1

    async def _attempts(self, m: Member, log: SendLog, content: str) -> None:
        """Attempts over SEND or sendMessage, same nonce, until acknowledged or refused."""
        backoff = BACKOFF_MIN_S
        while not self.closing:
            gw = m.ready and m.ws is not None and self.rng.random() < 0.5
            log.attempts += 1
            try:
                if gw:
                    seq = await self._send_gw(m, log.room, content, log.nonce)
                else:
                    seq = await self._send_gql(m, log.room, content, log.nonce)
            except Retry as exc:
                self.count(f"send_retry_{exc}")
                await asyncio.sleep(backoff * self.rng.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 3.0)
                continue
            except Refused as exc:
                log.error = str(exc)
                self.count(f"send_refused_{exc}")
                return
            log.t_ack, log.seq, log.path = time.monotonic(), seq, "gw" if gw else "gql"
            self.count("acked")
            return

    async def _send_gw(self, m: Member, room: int, content: str, nonce: str) -> int:
        ws = m.ws
        if ws is None:
            raise Retry("gw_down")
        rid = next(self.ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        m.replies[rid] = fut
        d = {"room_id": str(room), "content": content, "nonce": nonce}

        async def attempt() -> dict[str, Any]:
            await ws.send(frame(SEND, d, id=rid))  # blocks while the gateway does not read
            return await fut

        try:
            reply = await asyncio.wait_for(attempt(), self.plan.attempt_s)
        except (ConnectionClosed, TimeoutError) as exc:
            raise Retry("gw") from exc
        finally:
            m.replies.pop(rid, None)
        if reply.get("ok"):
            return int(reply["result"]["seq"])
        code = str((reply.get("error") or {}).get("code", "INTERNAL"))
        raise (Retry if code in RETRYABLE else Refused)(code)

    async def _send_gql(self, m: Member, room: int, content: str, nonce: str) -> int:
        data = await self._graphql(m, _SEND_GQL, {"r": str(room), "c": content, "n": nonce})
        return int(data["sendMessage"]["seq"])

    async def _graphql(self, m: Member, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = await self.http.post(
                f"{self.plan.edge}/graphql",
                json={"query": query, "variables": variables},
                headers={"Authorization": f"Bearer {m.spec.token}"},
            )
            payload = resp.json()
        except Exception as exc:  # httpx errors, a non-JSON body, and httpx's own slips
            # (an AttributeError on a socket closed under it was seen after an edge restart)
            raise Retry("http") from exc
        errors = payload.get("errors") if isinstance(payload, dict) else None
        if errors:
            code = str((errors[0].get("extensions") or {}).get("code", "INTERNAL"))
            raise (Retry if code in RETRYABLE else Refused)(code)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict):
            raise Retry(f"http_{resp.status_code}")
        return data

    # --- member faults ----------------------------------------------------------------------
    def _offline(self, uid: int, mode: str) -> None:
        """Away until ``_online``: ``resume`` drops the connection (the session stays
        resumable), ``subscribe`` closes it with 1000 (the next session is a new one)."""
        m = self.by_user[uid]
        now = time.monotonic()
        m.away = Window(f"offline_{mode}", f"user{uid}", now, now, member=uid)
        m.log.windows.append(m.away)
        if mode == "subscribe":
            m.session_id = None
            m.last_s = None
            m.resubscribe = True
        ws = m.ws
        if ws is not None:
            self.spawn(self._drop_now(m, ws))

    def _online(self, uid: int) -> None:
        m = self.by_user[uid]
        if m.away is not None:
            m.away.t1 = time.monotonic()  # the window ends as it starts coming back
            m.away = None
            m.wake.set()

    async def _drop_now(self, m: Member, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._go_away(m, ws)

    def _slow(self, uid: int) -> None:
        m = self.by_user[uid]
        now = time.monotonic()
        m.slow = Window("slow_consumer", f"user{uid}", now, now, member=uid)
        m.log.windows.append(m.slow)

    def _read(self, uid: int) -> None:
        m = self.by_user[uid]
        if m.slow is not None:
            m.slow.t1 = time.monotonic()
            m.slow = None
            m.wake.set()

    async def _leave(self, uid: int, room: int) -> None:
        """Leave over GraphQL once the member's sends to the room were acknowledged."""
        m = self.by_user[uid]
        m.leaving.add(room)
        deadline = time.monotonic() + 60
        while m.inflight.get(room, 0) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        backoff = BACKOFF_MIN_S
        while not self.closing:
            try:
                await self._graphql(m, _LEAVE_GQL, {"r": str(room)})
            except Retry:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            except Refused as exc:  # FORBIDDEN: an earlier attempt left already
                self.count(f"leave_{exc}")
            break
        m.joined.discard(room)  # the app drops the room: no RESUME or SUBSCRIBE lists it
        m.positions.pop(room, None)
        m.log.windows.append(
            Window("member_leave", f"user{uid}", t0, time.monotonic(), member=uid, room=room)
        )

    # --- the end ------------------------------------------------------------------------------
    async def _stop_sending(self, wait_s: float) -> None:
        """No new sends; wait (bounded) for the pending ones to be acknowledged."""
        self.sending = False
        t0 = time.monotonic()
        while time.monotonic() < t0 + wait_s and any(  # noqa: ASYNC110
            s.t_ack is None and not s.error for s in self.sends
        ):
            await asyncio.sleep(0.2)
        pending = [s for s in self.sends if s.t_ack is None and not s.error]
        print(
            f"[chaos-client {self.plan.index}] sends acknowledged in {time.monotonic() - t0:.1f}s,"
            f" {len(pending)} still pending {[(s.nonce, s.attempts) for s in pending[:5]]}",
            file=sys.stderr,
            flush=True,
        )
        self.pipe.send(("sent", self.sends, dict(self.counters)))

    async def _settle(self, acked: dict[int, list[int]], wait_s: float) -> None:
        """Wait (bounded) until every member holds every acknowledged seq of its rooms."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not self._caught_up(acked):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        self.pipe.send(("records", [m.log for m in self.members], dict(self.counters)))

    def _caught_up(self, acked: dict[int, list[int]]) -> bool:
        for m in self.members:
            if m.refetching:
                return False
            for room in m.joined:
                base = m.log.rooms[room].base or 0
                have = m.have[room]
                if any(seq > base and seq not in have for seq in acked.get(room, ())):
                    return False
        return True

    async def _close(self) -> None:
        self.closing = True
        self.sending = False

        async def bye(ws: ClientConnection) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(1000, "run over"), 5)

        await asyncio.gather(*(bye(m.ws) for m in self.members if m.ws is not None))
        for task in list(self.tasks):
            if task is not asyncio.current_task():
                task.cancel()
        await self.http.aclose()
        self.done.set()


def worker_main(plan: ChaosPlan, pipe: Connection) -> None:
    """The spawned process's entry point. Ctrl-C reaches the whole process group: the parent
    ends the run (and closes us), so it is ignored here."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    clientproc.run_process(ChaosWorker, plan, pipe)
