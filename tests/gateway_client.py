"""Test helpers for the gateway: a protocol client over real websockets, and a cluster of
in-process gateways sharing one real ``Core`` (AuthService + ChatService on a SQLite store,
memory event log and registry, the real outbox publisher).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from chat_core.models import Room
from gateway.server import Gateway, serve_gateway
from shardchat.config import Settings
from shardchat.runtime import Core
from user_core.models import User

JWT_KEYS = {"k1": "gw-test-key-Zq8vN3kT5rW1yH6mB0cX4jL7pD2fG9sA"}
_names = itertools.count(1)

Frame = dict[str, Any]


class Cluster:
    """One Core (store, log, registry, services) shared by any number of gateways."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        fields: dict[str, Any] = {
            "sqlite_path": str(tmp_path / "chat.sqlite3"),
            "jwt_keys": JWT_KEYS,
            "host": "127.0.0.1",
            "gateway_port": 0,
            "heartbeat_interval_ms": 5000,
            "gateway_ttl_s": 3.0,
            "kafka_partitions": 8,
        }
        fields.update(settings)
        self.settings = Settings(**fields)
        self.gateways: list[Gateway] = []
        self._core: Core | None = None

    @property
    def core(self) -> Core:
        assert self._core is not None, "await cluster.start() first"
        return self._core

    async def start(self) -> None:
        self._core = await Core.open(self.settings)

    async def user(self, name: str = "user") -> tuple[User, str]:
        tokens = await self.core.auth.register(f"{name}{next(_names)}", "correct horse battery")
        return tokens.user, tokens.access_token

    async def room(self, owner: User, *others: User, name: str = "room") -> Room:
        return await self.core.chat.create_room(owner.id, name, [u.id for u in others])

    async def gateway(self, **overrides: Any) -> Gateway:
        settings = msgspec.structs.replace(self.settings, **overrides)
        core = self.core
        gw = await serve_gateway(
            settings,
            core.auth,
            core.chat,
            core.event_log,
            core.registry,
            drain_grace_s=0.5,
            partition_linger_s=0.2,
        )
        self.gateways.append(gw)
        return gw

    async def close(self) -> None:
        for gw in self.gateways:
            await gw.close()
        if self._core is not None:
            await self._core.close()


class Client:
    """A JSON (or msgpack) protocol client over a real websockets connection."""

    def __init__(self, ws: ClientConnection, encoding: str = "json") -> None:
        self.ws = ws
        self.encoding = encoding
        self.next_id = 0
        self.last_s: int | None = None

    @classmethod
    async def open(
        cls, url_or_port: str | int, query: str = "?v=1&encoding=json", **kw: Any
    ) -> Client:
        base = f"ws://127.0.0.1:{url_or_port}/ws" if isinstance(url_or_port, int) else url_or_port
        ws = await connect(base + query, **kw)
        return cls(ws, "msgpack" if "msgpack" in query else "json")

    async def send(self, op: int, d: Any = None, id: int | None = None) -> None:
        if self.encoding == "json":
            await self.ws.send(msgspec.json.encode({"op": op, "d": d, "id": id}).decode())
        else:
            await self.ws.send(msgspec.msgpack.encode({"op": op, "d": d, "id": id}))

    async def request(self, op: int, d: Any) -> int:
        self.next_id += 1
        await self.send(op, d, self.next_id)
        return self.next_id

    async def recv(self, wait_s: float = 5.0) -> Frame:
        raw = await asyncio.wait_for(self.ws.recv(), wait_s)
        frame: Frame = (
            msgspec.json.decode(raw)
            if self.encoding == "json"
            else msgspec.msgpack.decode(raw if isinstance(raw, bytes) else raw.encode())
        )
        if frame.get("s") is not None:
            self.last_s = frame["s"]
        return frame

    async def until(self, pred: Callable[[Frame], bool], wait_s: float = 5.0) -> Frame:
        """Skip frames until one matches ``pred``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if pred(frame):
                return frame

    async def identify(self, token: str, subscribe: Any = "all") -> Frame:
        hello = await self.recv()
        assert hello["op"] == 10, hello
        await self.send(2, {"token": token, "subscribe": subscribe})
        ready = await self.recv()
        assert ready.get("t") == "READY", ready
        return ready

    async def resume(self, token: str, session_id: str, seq: int) -> list[Frame]:
        """HELLO, RESUME; the frames up to RESUMED (or the INVALID_SESSION frame)."""
        hello = await self.recv()
        assert hello["op"] == 10, hello
        await self.send(6, {"token": token, "session_id": session_id, "seq": seq})
        frames: list[Frame] = []
        while True:
            frame = await self.recv()
            frames.append(frame)
            if frame.get("t") == "RESUMED" or frame["op"] == 9:
                return frames

    async def close_code(self, wait_s: float = 5.0) -> int | None:
        """Read until the server closes; the close code it sent."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), wait_s)
        except Exception:
            pass
        return self.ws.close_code


def is_msg(frame: Frame) -> bool:
    return frame.get("t") == "MESSAGE_CREATE"
