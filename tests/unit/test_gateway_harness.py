"""Shared pieces of the gateway tests: real SQLite store, memory log/registry, ws clients.

``StoreChat`` / ``TokenAuth`` are the thin service glue the gateway needs (ChatPort/AuthPort)
on top of the real SqliteStore + MemoryEventLog: the store transaction assigns the room seq,
then the event is appended to the log keyed by room, as the outbox publisher does.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from chat_core.models import Message, Room, RoomEvent, encode_event
from gateway.server import Gateway, serve_gateway
from shardchat.adapters.memory_log import MemoryEventLog
from shardchat.adapters.memory_registry import MemoryRegistry
from shardchat.adapters.sqlite_store import SqliteStore
from shardchat.config import Settings
from shardchat.errors import BadInput, Forbidden, NotFound, Unauthenticated
from shardchat.eventlog import room_key
from shardchat.migrate import migrate
from shardchat.store import NewMessage
from user_core.models import User

_ids = itertools.count(int(time.time() * 1000) << 8)


class TokenAuth:
    def __init__(self) -> None:
        self.tokens: dict[str, int] = {}
        self.users: dict[int, User] = {}

    def add(self, user: User) -> str:
        token = f"tok-{user.id}"
        self.tokens[token] = user.id
        self.users[user.id] = user
        return token

    def verify_access(self, token: str) -> int:
        try:
            return self.tokens[token]
        except KeyError:
            raise Unauthenticated("bad token") from None

    async def get_user(self, user_id: int) -> User | None:
        return self.users.get(user_id)


class StoreChat:
    def __init__(self, store: SqliteStore, log: MemoryEventLog) -> None:
        self.store = store
        self.log = log
        self.publish = True  # False: events are stored but not appended (a lagging publisher)

    async def _publish(self, events: list[RoomEvent]) -> None:
        if self.publish:
            for e in events:
                await self.log.append(room_key(e.room_id), encode_event(e))

    async def get_room(self, actor: int, room_id: int) -> Room:
        room = await self.store.get_room(room_id)
        if room is None:
            raise NotFound("no such room")
        if not await self.store.is_member(room_id, actor):
            raise Forbidden("not a member")
        return room

    async def list_rooms(self, actor: int) -> list[Room]:
        return await self.store.rooms_of(actor)

    async def send_message(self, actor: int, room_id: int, content: str, nonce: str) -> Message:
        if not content:
            raise BadInput("empty")
        now = int(time.time() * 1000)
        [out] = await self.store.insert_messages(
            [NewMessage(next(_ids), room_id, actor, content, nonce, now)]
        )
        if out.status == "no_room":
            raise NotFound("no such room")
        if out.status == "not_member":
            raise Forbidden("not a member")
        assert out.message is not None
        if out.event is not None:
            await self._publish([out.event])
        return out.message

    async def events_after(self, room_id: int, after_seq: int, limit: int) -> list[RoomEvent]:
        return await self.store.events_after(room_id, after_seq, limit)

    async def create_room(self, name: str, members: list[int]) -> Room:
        room, events = await self.store.create_room(next(_ids), name, int(time.time() * 1000),
                                                    members)
        await self._publish(events)
        return room


class Cluster:
    """Store + log + registry shared by any number of gateways (as on a real cluster)."""

    def __init__(self, tmp_path: Any) -> None:
        self.store = SqliteStore(str(tmp_path / "chat.sqlite3"))
        self.log = MemoryEventLog(num_partitions=8)
        self.registry = MemoryRegistry()
        self.chat = StoreChat(self.store, self.log)
        self.auth = TokenAuth()
        self.gateways: list[Gateway] = []

    async def start(self) -> None:
        await self.store.start()
        await migrate(self.store)

    async def user(self, name: str) -> tuple[User, str]:
        user = User(next(_ids), name, int(time.time() * 1000))
        await self.store.create_user(user, "x")
        return user, self.auth.add(user)

    async def gateway(self, **overrides: Any) -> Gateway:
        fields: dict[str, Any] = {"host": "127.0.0.1", "gateway_port": 0,
                                  "heartbeat_interval_ms": 5000, "gateway_ttl_s": 3.0}
        fields.update(overrides)
        settings = Settings(**fields)
        gw = await serve_gateway(settings, self.auth, self.chat, self.log, self.registry,
                                 drain_grace_s=0.5, partition_linger_s=0.2)
        self.gateways.append(gw)
        return gw

    async def close(self) -> None:
        for gw in self.gateways:
            await gw.close()
        await self.registry.close()
        await self.store.close()


class Client:
    """A JSON protocol client over a real websockets connection."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.last_s: int | None = None

    @classmethod
    async def open(cls, gw: Gateway, query: str = "?v=1&encoding=json", **kw: Any) -> Client:
        ws = await connect(f"ws://127.0.0.1:{gw.port}/ws{query}", **kw)
        return cls(ws)

    async def send(self, op: int, d: Any = None, id: int | None = None) -> None:
        await self.ws.send(msgspec.json.encode({"op": op, "d": d, "id": id}).decode())

    async def request(self, op: int, d: Any) -> int:
        self.next_id += 1
        await self.send(op, d, self.next_id)
        return self.next_id

    async def recv(self, wait_s: float = 5.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), wait_s)
        frame: dict[str, Any] = msgspec.json.decode(raw)
        if frame.get("s") is not None:
            self.last_s = frame["s"]
        return frame

    async def until(self, pred: Any, wait_s: float = 5.0) -> dict[str, Any]:
        """Skip frames until one matches ``pred``."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            left = deadline - asyncio.get_running_loop().time()
            frame = await self.recv(max(0.01, left))
            if pred(frame):
                return frame

    async def identify(self, token: str, subscribe: Any = "all") -> dict[str, Any]:
        hello = await self.recv()
        assert hello["op"] == 10
        await self.send(2, {"token": token, "subscribe": subscribe})
        ready = await self.recv()
        assert ready["t"] == "READY", ready
        return ready

    async def close_code(self, wait_s: float = 5.0) -> int | None:
        """Read until the server closes; the close code it sent."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), wait_s)
        except Exception:
            pass
        return self.ws.close_code
