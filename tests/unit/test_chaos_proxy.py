"""The TCP fault proxy of loadtest/chaos against a local echo server: bytes pass through, and
each fault (latency, stall, reset, a refusing upstream) does what the nemesis relies on."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from loadtest.chaos import proxy as proxy_mod
from loadtest.chaos.proxy import LinkSpec, Proxy, ProxyProcess


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    p = Proxy([LinkSpec("echo", port)])
    await p.start()
    try:
        yield p
    finally:
        await p.close()
        server.close()


async def _open(p: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", p.ports["echo"])


async def _roundtrip(p: Proxy, payload: bytes) -> bytes:
    reader, writer = await _open(p)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 10)
    finally:
        writer.close()


async def test_bytes_pass_through_both_ways(proxy: Proxy) -> None:
    payload = bytes(range(256)) * 2000  # 512 KB: several chunks, in order
    assert await _roundtrip(proxy, payload) == payload
    assert proxy.command("stats")["echo"]["accepted"] == 1


async def test_latency_holds_every_chunk(proxy: Proxy) -> None:
    proxy.command("latency", "echo", latency_ms=150, jitter_ms=20)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await _roundtrip(proxy, b"ping") == b"ping"
    # one hold each way: a lower bound, which no load can break
    assert loop.time() - t0 >= 0.3
    proxy.command("clear", "echo")
    assert proxy.links["echo"].latency_s == 0


async def test_stall_holds_bytes_until_it_ends(proxy: Proxy) -> None:
    reader, writer = await _open(proxy)
    try:
        writer.write(b"a")
        assert await asyncio.wait_for(reader.readexactly(1), 10) == b"a"
        proxy.command("stall", "echo", on=True)
        writer.write(b"held")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(4), 0.3)
        proxy.command("stall", "echo", on=False)
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"held"
    finally:
        writer.close()


async def test_reset_aborts_open_connections_and_refuses_for_a_while(proxy: Proxy) -> None:
    reader, writer = await _open(proxy)
    writer.write(b"x")
    assert await asyncio.wait_for(reader.readexactly(1), 10) == b"x"
    assert proxy.command("reset", "echo", for_s=30) == 1
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 10)
    writer.close()
    # inside the reset window a new connection is reset at once
    reader, writer = await _open(proxy)
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 10)
    writer.close()
    proxy.command("clear", "*")
    assert await _roundtrip(proxy, b"back") == b"back"


async def test_a_client_reset_closes_the_upstream_connection() -> None:
    """A killed client's kernel resets its connections: the engine behind the proxy must see
    that connection end too (else PostgreSQL keeps the dead client's transaction and locks)."""
    closed = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        closed.set()
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    p = Proxy([LinkSpec("db", server.sockets[0].getsockname()[1])])
    await p.start()
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", p.ports["db"])
        writer.write(b"BEGIN")
        await writer.drain()
        await asyncio.sleep(0.2)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, as when the process dies with unread data
        await asyncio.wait_for(closed.wait(), 10)
    finally:
        await p.close()
        server.close()


async def test_a_refusing_upstream_resets_the_client() -> None:
    with socket.socket() as s:  # a port with nothing listening on it
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    p = Proxy([LinkSpec("dead", dead)])
    await p.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.ports["dead"])
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 10)
        writer.close()
        assert p.command("stats")["dead"]["refused"] == 1
    finally:
        await p.close()


async def test_an_upstream_connection_to_itself_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While an engine is down, a connect to its free port may be given that very port as
    source: the socket is then connected to itself and holds the port, and the engine cannot
    start again ("Address already in use", seen with Kafka). The proxy drops such a socket."""
    held: list[int] = []

    async def dial_self(host: str, port: int) -> Any:
        sock = socket.socket()
        sock.bind((host, 0))
        own = sock.getsockname()[1]
        sock.connect((host, own))  # TCP simultaneous open: connected to itself
        held.append(own)
        return await asyncio.open_connection(sock=sock)

    monkeypatch.setattr(proxy_mod, "_dial", dial_self)
    p = Proxy([LinkSpec("kafka", 1)])
    await p.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.ports["kafka"])
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 10)
        writer.close()
        assert p.command("stats")["kafka"]["refused"] == 1
        with socket.socket() as engine:  # the port is free for the engine again
            engine.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            engine.bind(("127.0.0.1", held[0]))
            engine.listen()
    finally:
        await p.close()


async def test_unknown_links_and_commands_are_refused(proxy: Proxy) -> None:
    with pytest.raises(ValueError, match="unknown link"):
        proxy.command("stall", "nope", on=True)
    with pytest.raises(ValueError, match="unknown proxy command"):
        proxy.command("explode", "echo")


def test_proxy_process_answers_commands() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        upstream = s.getsockname()[1]
    proc = ProxyProcess([LinkSpec("a", upstream), LinkSpec("b", upstream)])
    try:
        assert set(proc.ports) == {"a", "b"} and all(proc.ports.values())
        proc.command("latency", "a", latency_ms=10)
        assert proc.command("stats")["b"]["accepted"] == 0
        with pytest.raises(RuntimeError, match="unknown link"):
            proc.command("reset", "zzz")
    finally:
        proc.close()
