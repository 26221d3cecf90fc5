"""The router app (GET /gateway, /healthz, /readyz, /metrics, POST /drain) over a real Redis
registry, driven through httpx's ASGI transport; plus two gateways seen through Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from router.app import create_app
from shardchat.adapters.redis_registry import RedisRegistry
from shardchat.config import Settings
from shardchat.registry import DRAIN_MESSAGE, GatewayRecord, gateway_control_channel

pytestmark = pytest.mark.integration


@pytest.fixture
async def registry(redis_url: str) -> AsyncIterator[RedisRegistry]:
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    reg = RedisRegistry(redis_url, prefix=prefix)
    await reg.start()
    yield reg
    await reg.close()
    raw = aioredis.Redis.from_url(redis_url)
    with contextlib.suppress(aioredis.RedisError):
        keys = [k async for k in raw.scan_iter(match=f"{prefix}*")]
        if keys:
            await raw.delete(*keys)
    await raw.aclose()


@pytest.fixture
async def client(registry: RedisRegistry) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(registry, Settings(registry="redis"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:
        yield http


async def fresh(client: httpx.AsyncClient) -> None:
    """Let the app's placement snapshot (0.5 s) expire."""
    await asyncio.sleep(0.55)


async def test_gateway_503_when_none_is_live(client: httpx.AsyncClient) -> None:
    response = await client.get("/gateway", params={"key": "u1"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "NO_GATEWAY"


async def test_gateway_placement_is_sticky_per_key(
    client: httpx.AsyncClient, registry: RedisRegistry
) -> None:
    for name in ("a", "b", "c"):
        await registry.heartbeat_gateway(GatewayRecord(name, f"ws://{name}/ws", 10), 30)
    first = (await client.get("/gateway", params={"key": "user:7"})).json()
    assert first["url"] == f"ws://{first['gateway_id']}/ws"
    again = (await client.get("/gateway", params={"key": "user:7"})).json()
    assert again == first
    keyless = await client.get("/gateway")
    assert keyless.status_code == 200 and keyless.json()["gateway_id"] in {"a", "b", "c"}
    too_long = await client.get("/gateway", params={"key": "x" * 300})
    assert too_long.status_code == 400


async def test_drain_marks_publishes_and_stops_placement(
    client: httpx.AsyncClient, registry: RedisRegistry
) -> None:
    await registry.heartbeat_gateway(GatewayRecord("a", "ws://a/ws"), 30)
    await registry.heartbeat_gateway(GatewayRecord("b", "ws://b/ws"), 30)
    async with registry.subscribe(gateway_control_channel("a")) as control:
        response = await client.post("/drain/a")
        assert response.status_code == 200
        assert await asyncio.wait_for(control.__anext__(), 2) == DRAIN_MESSAGE
    assert [g.draining for g in await registry.live_gateways()] == [True, False]
    for i in range(20):
        body = (await client.get("/gateway", params={"key": f"k{i}"})).json()
        assert body["gateway_id"] == "b"
    assert (await client.post("/drain/nobody")).status_code == 404


async def test_health_ready_and_metrics(client: httpx.AsyncClient, registry: RedisRegistry) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    await registry.heartbeat_gateway(GatewayRecord("a", "ws://a/ws"), 30)
    await fresh(client)
    await client.get("/gateway", params={"key": "k"})
    text = (await client.get("/metrics")).text
    assert 'shardchat_router_live_gateways{state="serving"} 1.0' in text
    assert 'shardchat_router_placements_total{keyed="true",outcome="ok"}' in text


async def test_readyz_503_when_redis_is_unreachable() -> None:
    dead = RedisRegistry("redis://127.0.0.1:1/0", socket_timeout_s=0.5)
    app = create_app(dead, Settings(registry="redis"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:
        response = await http.get("/readyz")
        assert response.status_code == 503
        placed = await http.get("/gateway", params={"key": "k"})
        assert placed.status_code == 503
        assert placed.json()["error"]["code"] == "REGISTRY_UNAVAILABLE"
    await dead.close()


async def test_two_gateways_share_the_maps_through_redis(
    registry: RedisRegistry, redis_url: str
) -> None:
    """What one gateway publishes another process reads: maps, sessions, control messages."""
    other = RedisRegistry(redis_url, prefix=registry._prefix)
    await other.start()
    try:
        await registry.heartbeat_gateway(GatewayRecord("a", "ws://a/ws"), 30)
        await other.heartbeat_gateway(GatewayRecord("b", "ws://b/ws"), 30)
        await registry.add_rooms("a", [1], 30)
        await other.add_rooms("b", [1], 30)
        assert await registry.gateways_for_room(1) == {"a", "b"}
        assert await registry.save_session_if("s", b"blob", 0, 30)
        assert await other.load_session("s") == b"blob"
    finally:
        await other.close()
