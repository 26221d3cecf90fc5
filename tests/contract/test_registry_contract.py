"""One contract suite for the Registry port, run against the memory adapter, a real Redis and a
real Redis Cluster (3 masters, 3 replicas).

TTLs: the memory adapter runs on a fake clock (``advance`` moves it); Redis runs on its own clock
with short TTLs (``advance`` sleeps). Every Redis test uses its own key/channel prefix so tests
running in parallel (and other suites on the same Redis) never see each other's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from shardchat.adapters.memory_registry import MemoryRegistry
from shardchat.adapters.redis_registry import RedisRegistry
from shardchat.registry import GatewayRecord, Registry, Subscription

TTL = 0.4  # seconds; long enough for a Redis round trip, short enough to wait out
PAST_TTL = TTL + 0.2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    kind: str
    registry: Registry
    advance: Callable[[float], Awaitable[None]]
    # another process's view of the same backend (memory: the same instance)
    make_peer: Callable[..., Awaitable[Registry]]
    opened: list[Registry] = field(default_factory=list)


async def _delete_prefixed(url: str, prefix: str, cluster: bool) -> None:
    """Best effort: every key the registry writes expires on its own anyway."""
    raw: Any = aioredis.RedisCluster.from_url(url) if cluster else aioredis.Redis.from_url(url)
    with contextlib.suppress(aioredis.RedisError):
        keys = [k async for k in raw.scan_iter(match=f"{prefix}*")]
        if keys:
            await raw.delete(*keys)
    await raw.aclose()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("redis-cluster", marks=pytest.mark.integration),
    ]
)
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    opened: list[Registry] = []
    if request.param == "memory":
        clock = FakeClock()

        async def advance(seconds: float) -> None:
            clock.now += seconds

        shared = MemoryRegistry(clock=clock)

        async def memory_peer(**kwargs: Any) -> Registry:
            if not kwargs:
                return shared
            reg = MemoryRegistry(clock=clock, **kwargs)
            opened.append(reg)
            return reg

        await shared.start()
        opened.append(shared)
        yield Env("memory", shared, advance, memory_peer, opened)
    else:
        cluster = request.param == "redis-cluster"
        url: str = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
        prefix = f"test:{uuid.uuid4().hex[:12]}:"

        async def redis_peer(**kwargs: Any) -> Registry:
            reg = RedisRegistry(url, prefix=prefix, cluster=cluster, **kwargs)
            await reg.start()
            opened.append(reg)
            return reg

        async def sleep(seconds: float) -> None:
            await asyncio.sleep(seconds)

        main = await redis_peer()
        yield Env(request.param, main, sleep, redis_peer, opened)
        await _delete_prefixed(url, prefix, cluster)
    for reg in opened:
        await reg.close()


def gw(gateway_id: str, sessions: int = 0, draining: bool = False) -> GatewayRecord:
    return GatewayRecord(gateway_id, f"ws://{gateway_id}.test/ws", sessions, draining)


async def next_message(sub: Subscription, wait: float = 2.0) -> bytes:
    return await asyncio.wait_for(sub.__anext__(), wait)


async def assert_silent(sub: Subscription, wait: float = 0.2) -> None:
    with pytest.raises((TimeoutError, StopAsyncIteration)):
        await asyncio.wait_for(sub.__anext__(), wait)


# -- gateways --------------------------------------------------------------------------------


async def test_gateway_listed_until_ttl_after_last_heartbeat(env: Env) -> None:
    reg = env.registry
    assert await reg.live_gateways() == []
    await reg.heartbeat_gateway(gw("b", sessions=3), TTL)
    await reg.heartbeat_gateway(gw("a"), TTL * 10)
    assert await reg.live_gateways() == [gw("a"), gw("b", sessions=3)]
    await env.advance(TTL / 2)
    await reg.heartbeat_gateway(gw("b", sessions=4), TTL)  # refresh + new load
    await env.advance(TTL / 2 + 0.05)
    assert await reg.live_gateways() == [gw("a"), gw("b", sessions=4)]
    await env.advance(PAST_TTL)
    assert await reg.live_gateways() == [gw("a")]


async def test_remove_gateway_is_immediate(env: Env) -> None:
    reg = env.registry
    await reg.heartbeat_gateway(gw("a"), 30)
    await reg.add_rooms("a", [1], 30)
    await reg.set_partitions("a", [0], 30)
    await reg.remove_gateway("a")
    assert await reg.live_gateways() == []
    assert await reg.gateways_for_room(1) == set()
    assert await reg.gateways_for_partition(0) == set()


async def test_mark_draining_sticks_until_the_gateway_is_gone(env: Env) -> None:
    reg = env.registry
    assert await reg.mark_draining("nobody") is False
    await reg.heartbeat_gateway(gw("a"), TTL)
    await reg.heartbeat_gateway(gw("b"), 30)
    assert await reg.mark_draining("a") is True
    # the gateway's own heartbeat (it has not heard of the drain yet) does not clear it
    await reg.heartbeat_gateway(gw("a", sessions=2), TTL)
    assert await reg.live_gateways() == [gw("a", 2, draining=True), gw("b")]
    await env.advance(PAST_TTL)
    # a new incarnation under the same id starts clean
    await reg.heartbeat_gateway(gw("a"), TTL)
    assert await reg.live_gateways() == [gw("a"), gw("b")]


# -- maps ------------------------------------------------------------------------------------


async def test_room_map_add_remove_and_entry_ttl(env: Env) -> None:
    reg = env.registry
    await reg.heartbeat_gateway(gw("a"), 30)
    await reg.heartbeat_gateway(gw("b"), 30)
    await reg.add_rooms("a", [1, 2], TTL)
    await reg.add_rooms("b", [2], 30)
    assert await reg.gateways_for_room(1) == {"a"}
    assert await reg.gateways_for_room(2) == {"a", "b"}
    assert await reg.gateways_for_room(3) == set()
    await reg.remove_rooms("b", [2])
    assert await reg.gateways_for_room(2) == {"a"}
    await env.advance(TTL / 2)
    await reg.add_rooms("a", [2], TTL)  # refreshed; room 1 is not
    await env.advance(TTL / 2 + 0.1)
    assert await reg.gateways_for_room(1) == set()
    assert await reg.gateways_for_room(2) == {"a"}


async def test_dead_gateway_leaves_every_map(env: Env) -> None:
    reg = env.registry
    await reg.heartbeat_gateway(gw("a"), TTL)
    await reg.heartbeat_gateway(gw("b"), 30)
    await reg.add_rooms("a", [7], 30)
    await reg.add_rooms("b", [7], 30)
    await reg.set_partitions("a", [3], 30)
    await env.advance(PAST_TTL)
    assert await reg.gateways_for_room(7) == {"b"}
    assert await reg.gateways_for_partition(3) == set()


async def test_set_partitions_replaces_the_gateways_set(env: Env) -> None:
    reg = env.registry
    await reg.heartbeat_gateway(gw("a"), 30)
    await reg.heartbeat_gateway(gw("b"), 30)
    await reg.set_partitions("a", [0, 1, 2], 30)
    await reg.set_partitions("b", [2], 30)
    await reg.set_partitions("a", [2, 5], 30)
    assert await reg.gateways_for_partition(0) == set()
    assert await reg.gateways_for_partition(1) == set()
    assert await reg.gateways_for_partition(2) == {"a", "b"}
    assert await reg.gateways_for_partition(5) == {"a"}
    await reg.set_partitions("a", [], 30)
    assert await reg.gateways_for_partition(2) == {"b"}
    assert await reg.gateways_for_partition(5) == set()


async def test_partition_entries_expire_without_refresh(env: Env) -> None:
    reg = env.registry
    await reg.heartbeat_gateway(gw("a"), 30)
    await reg.set_partitions("a", [4], TTL)
    await env.advance(PAST_TTL)
    assert await reg.gateways_for_partition(4) == set()
    await reg.set_partitions("a", [4], TTL)  # the next heartbeat repairs it
    assert await reg.gateways_for_partition(4) == {"a"}


async def test_many_rooms_in_one_call(env: Env) -> None:
    reg = env.registry
    await reg.heartbeat_gateway(gw("a"), 30)
    rooms = list(range(1, 2501))  # more than one script chunk on Redis
    await reg.add_rooms("a", rooms, 30)
    assert await reg.gateways_for_room(1) == {"a"}
    assert await reg.gateways_for_room(2500) == {"a"}
    await reg.remove_rooms("a", rooms)
    assert await reg.gateways_for_room(1234) == set()


# -- presence and sessions -------------------------------------------------------------------


async def test_presence_with_ttl(env: Env) -> None:
    reg = env.registry
    await reg.set_presence(1, "online", TTL)
    await reg.set_presence(2, "dnd", 30)
    assert await reg.get_presence([1, 2, 3]) == {1: "online", 2: "dnd"}
    assert await reg.get_presence([]) == {}
    await env.advance(PAST_TTL)
    assert await reg.get_presence([1, 2]) == {2: "dnd"}


async def test_session_blob_is_readable_from_any_gateway(env: Env) -> None:
    reg = env.registry
    peer = await env.make_peer()
    blob = bytes(range(256))
    assert await reg.save_session_if("s1", blob, 0, TTL)
    assert await reg.save_session_if("s2", b"x", 0, 30)
    assert await peer.load_session("s1") == blob
    assert await peer.load_session("nope") is None
    await peer.delete_session("s2")
    assert await reg.load_session("s2") is None
    await env.advance(PAST_TTL)
    assert await reg.load_session("s1") is None


async def test_save_session_if_never_replaces_a_higher_epoch(env: Env) -> None:
    reg = env.registry
    peer = await env.make_peer()
    assert await reg.save_session_if("s", b"e1", 1, 30)
    assert await peer.save_session_if("s", b"e2", 2, 30)  # resumed elsewhere: newer owner
    assert not await reg.save_session_if("s", b"e1 again", 1, 30)  # the stale owner loses
    assert await reg.load_session("s") == b"e2"
    assert await peer.save_session_if("s", b"e2 later", 2, 30)  # the owner's own saves
    assert await reg.load_session("s") == b"e2 later"
    assert await reg.save_session_if("s", b"e7", 7, 30)  # any higher epoch, not only +1
    assert await peer.load_session("s") == b"e7"


async def test_save_session_if_restarts_the_ttl_and_an_expired_entry_is_absent(env: Env) -> None:
    reg = env.registry
    assert await reg.save_session_if("s", b"a", 5, TTL)
    await env.advance(TTL * 0.6)
    assert await reg.save_session_if("s", b"b", 5, TTL)  # same owner: TTL starts again
    await env.advance(TTL * 0.6)
    assert await reg.load_session("s") == b"b"
    assert not await reg.save_session_if("s", b"old", 4, TTL)
    await env.advance(PAST_TTL)
    assert await reg.load_session("s") is None
    # Nothing live is stored: any epoch may write (a newer owner would have kept it alive).
    assert await reg.save_session_if("s", b"old", 4, TTL)
    assert await reg.load_session("s") == b"old"


async def test_save_sessions_if_is_save_session_if_per_item(env: Env) -> None:
    """The batched save: one result per item, in order, each with the single save's rules."""
    reg = env.registry
    peer = await env.make_peer()
    assert await peer.save_session_if("b", b"b-e3", 3, 30)  # resumed elsewhere: newer owner
    items = [(f"s{i}", f"blob{i}".encode(), 1) for i in range(1200)]  # more than one chunk
    items[7] = ("b", b"b-e2", 2)
    results = await reg.save_sessions_if(items, TTL)
    assert results == [i != 7 for i in range(1200)]
    assert await peer.load_session("b") == b"b-e3"
    assert await peer.load_session("s1199") == b"blob1199"
    assert await reg.save_sessions_if([], TTL) == []
    await env.advance(PAST_TTL)
    assert await reg.load_session("s0") is None


async def test_claim_session_lets_exactly_one_concurrent_resume_win(env: Env) -> None:
    reg = env.registry
    peer = await env.make_peer()
    assert await reg.save_session_if("s", b"held-e3", 3, 30)
    # Two RESUMEs loaded epoch 3; both claim at once: exactly one wins, at epoch 4.
    results = await asyncio.gather(
        reg.claim_session("s", 3, b"mine", 30), peer.claim_session("s", 3, b"theirs", 30)
    )
    assert sorted(results) == [False, True]
    winner = b"mine" if results[0] else b"theirs"
    assert await reg.load_session("s") == winner
    assert not await reg.save_session_if("s", b"old holder", 3, 30)  # fenced off
    assert await peer.save_session_if("s", b"new holder", 4, 30)  # the claimed epoch saves
    assert not await reg.claim_session("s", 3, b"late", 30)  # a stale load never claims
    assert await reg.claim_session("s", 4, b"next resume", TTL)
    assert not await peer.save_session_if("s", b"new holder again", 4, TTL)
    assert await reg.load_session("s") == b"next resume"
    # Nothing live (expired, flushed): a claim of the blob a gateway kept itself succeeds.
    await env.advance(PAST_TTL)
    assert await reg.claim_session("s", 9, b"kept locally", TTL)
    assert not await peer.save_session_if("s", b"e9", 9, 30)
    assert await peer.save_session_if("s", b"e10", 10, 30)


async def test_delete_session_if_spares_a_newer_owner(env: Env) -> None:
    reg = env.registry
    peer = await env.make_peer()
    assert await reg.save_session_if("s", b"e3", 3, 30)
    assert not await peer.delete_session_if("s", 2)
    assert await reg.load_session("s") == b"e3"
    assert await peer.delete_session_if("s", 3)
    assert await reg.load_session("s") is None
    assert await reg.delete_session_if("s", 0)  # nothing stored: nothing newer either
    assert await reg.save_session_if("s", b"e0", 0, 30)  # deleted: absent for every epoch


async def test_concurrent_saves_leave_the_highest_epoch(env: Env) -> None:
    """Writers racing from two registries (two processes on Redis): whatever the interleaving,
    the highest epoch's blob stays, and a refused writer was refused by a higher epoch."""
    reg = env.registry
    peer = await env.make_peer()
    rng = random.Random(5)
    for attempt in range(10):
        sid = f"race:{attempt}"
        epochs = [e for e in range(12) for _ in range(2)]  # two writers per epoch
        rng.shuffle(epochs)
        results = await asyncio.gather(
            *(
                (reg if i % 2 else peer).save_session_if(sid, b"e%d" % e, e, 30)
                for i, e in enumerate(epochs)
            )
        )
        won = [e for e, ok in zip(epochs, results, strict=True) if ok]
        assert 11 in won
        assert all(ok or e < 11 for e, ok in zip(epochs, results, strict=True))
        assert await reg.load_session(sid) == b"e11"
        late = await asyncio.gather(*(peer.save_session_if(sid, b"late", e, 30) for e in range(11)))
        assert not any(late)
        assert await peer.load_session(sid) == b"e11"


async def test_a_stale_owner_cannot_overwrite_a_claim_it_races_with(env: Env) -> None:
    """The read-then-write race the compare-and-set closes: the old owner saves in a loop while
    the new owner claims the session; once the claim returned, no old save lands."""
    old, new = env.registry, await env.make_peer()
    assert await old.save_session_if("s", b"old", 1, 30)
    claimed = asyncio.Event()
    after_claim: list[bool] = []

    async def stale_saves() -> None:
        for _ in range(40):
            was_claimed = claimed.is_set()
            ok = await old.save_session_if("s", b"old", 1, 30)
            if was_claimed:
                after_claim.append(ok)
            await asyncio.sleep(0)

    async def claim() -> None:
        await asyncio.sleep(0)  # the stale loop is running
        assert await new.save_session_if("s", b"new", 2, 30)
        claimed.set()

    await asyncio.gather(stale_saves(), claim())
    assert after_claim and not any(after_claim)
    assert await old.load_session("s") == b"new"


# -- pub/sub ---------------------------------------------------------------------------------


async def test_publish_fans_out_to_every_subscriber_in_order(env: Env) -> None:
    reg = env.registry
    peer = await env.make_peer()
    async with reg.subscribe("room:1") as s1, reg.subscribe("room:1") as s2:
        s3 = peer.subscribe("room:1")
        other = reg.subscribe("room:2")
        await s3.ready()
        await other.ready()
        for i in range(5):
            await peer.publish("room:1", b"m%d" % i)
        for sub in (s1, s2, s3):
            assert [await next_message(sub) for _ in range(5)] == [b"m%d" % i for i in range(5)]
        await assert_silent(other)
        await s3.aclose()
        await other.aclose()


async def test_publish_counts_receivers(env: Env) -> None:
    """0 means nobody listens: a RESUME does not wait for a crashed gateway's release."""
    reg = env.registry
    peer = await env.make_peer()
    assert await peer.publish("ctl:gone", b"x") == 0
    async with reg.subscribe("ctl:live") as sub:
        await sub.ready()
        assert await peer.publish("ctl:live", b"y") >= 1
        assert await next_message(sub) == b"y"
    # The unsubscribe reaches Redis shortly after aclose() returns.
    for _ in range(100):
        if await peer.publish("ctl:live", b"z") == 0:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("still counted as a receiver 1 s after aclose()")


async def test_no_delivery_after_aclose(env: Env) -> None:
    reg = env.registry
    keep = reg.subscribe("c")
    gone = reg.subscribe("c")
    await keep.ready()
    await gone.ready()
    await gone.aclose()
    await reg.publish("c", b"after")
    assert await next_message(keep) == b"after"
    with pytest.raises(StopAsyncIteration):
        await next_message(gone)
    assert [m async for m in gone] == []
    await keep.aclose()


async def test_last_unsubscribe_then_resubscribe(env: Env) -> None:
    reg = env.registry
    first = reg.subscribe("c")
    await first.ready()
    await first.aclose()
    again = reg.subscribe("c")
    await again.ready()
    await reg.publish("c", b"x")
    assert await next_message(again) == b"x"
    await again.aclose()


async def test_close_ends_iterators(env: Env) -> None:
    reg = await env.make_peer(max_pending=100)
    sub = reg.subscribe("c")
    await sub.ready()

    async def drain() -> list[bytes]:
        return [m async for m in sub]

    task = asyncio.create_task(drain())
    await asyncio.sleep(0.05)
    await reg.close()
    assert await asyncio.wait_for(task, 2) == []
    assert reg.subscribe("c").closed


async def test_slow_consumer_loses_newest_not_memory(env: Env) -> None:
    reg = await env.make_peer(max_pending=3)
    sub = reg.subscribe("c")
    await sub.ready()
    for i in range(10):
        await reg.publish("c", b"%d" % i)
    for _ in range(100):  # Redis: let the pump deliver (and drop) the rest before reading
        if sub.dropped >= 7:
            break
        await asyncio.sleep(0.02)
    assert sub.dropped == 7
    assert [await next_message(sub) for _ in range(3)] == [b"0", b"1", b"2"]
    await sub.aclose()


# -- Redis only: loss and reconnection -------------------------------------------------------


@pytest.fixture
async def redis_pair(redis_url: str) -> AsyncIterator[tuple[RedisRegistry, aioredis.Redis, str]]:
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    reg = RedisRegistry(redis_url, prefix=prefix, poll_s=0.2, ping_after_s=1.0)
    await reg.start()
    raw = aioredis.Redis.from_url(redis_url)
    yield reg, raw, prefix
    await reg.close()
    with contextlib.suppress(aioredis.RedisError):
        keys = [k async for k in raw.scan_iter(match=f"{prefix}*")]
        if keys:
            await raw.delete(*keys)
    await raw.aclose()


async def _wait_subscribed(raw: aioredis.Redis, channel: str, within: float = 10.0) -> None:
    """Until Redis lists a subscriber on ``channel`` (the pump re-subscribed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        with contextlib.suppress(aioredis.RedisError):
            counts = dict(await raw.pubsub_numsub(channel))
            if counts.get(channel.encode(), 0) > 0:
                return
        assert loop.time() < deadline, f"{channel} was not re-subscribed"
        await asyncio.sleep(0.05)


@pytest.mark.integration
async def test_redis_loss_is_repaired_by_the_next_heartbeat(redis_pair: Any) -> None:
    reg, raw, prefix = redis_pair

    async def beat() -> None:  # what a gateway does on every heartbeat
        await reg.heartbeat_gateway(gw("a", sessions=5), 30)
        await reg.add_rooms("a", [1, 2], 30)
        await reg.set_partitions("a", [3], 30)

    await beat()
    # FLUSHALL as seen by this registry, without wiping other suites sharing the Redis
    keys = [k async for k in raw.scan_iter(match=f"{prefix}*")]
    assert keys
    await raw.delete(*keys)
    assert await reg.live_gateways() == []
    assert await reg.gateways_for_room(1) == set()
    await beat()
    assert await reg.live_gateways() == [gw("a", sessions=5)]
    assert await reg.gateways_for_room(2) == {"a"}
    assert await reg.gateways_for_partition(3) == {"a"}


@pytest.mark.integration
async def test_subscription_survives_a_killed_pubsub_connection(redis_pair: Any) -> None:
    reg, raw, prefix = redis_pair
    sub = reg.subscribe("ctl")
    await sub.ready()
    await reg.publish("ctl", b"before")
    assert await next_message(sub) == b"before"
    # Kill only this registry's pub/sub connection (other suites' connections stay).
    mine = [c for c in await raw.client_list() if c.get("name") == f"{prefix}pubsub"]
    assert len(mine) == 1
    for client in mine:
        await raw.client_kill_filter(_id=client["id"])
    await asyncio.sleep(0.1)
    await _wait_subscribed(raw, f"{prefix}ctl")
    await sub.ready()
    await reg.publish("ctl", b"after")
    assert await next_message(sub, wait=5) == b"after"
    assert not sub.closed
    await sub.aclose()


@pytest.mark.integration
async def test_subscription_survives_a_redis_restart(redis_pair: Any) -> None:
    from tests import engine_control

    reg, raw, prefix = redis_pair
    sub = reg.subscribe("ctl")
    await sub.ready()
    await engine_control.restart("redis")
    await _wait_subscribed(raw, f"{prefix}ctl", within=30)
    await sub.ready()
    await reg.publish("ctl", b"after restart")
    assert await next_message(sub, wait=5) == b"after restart"
    # the command pool reconnects as well
    await reg.heartbeat_gateway(gw("a"), 30)
    assert await reg.live_gateways() == [gw("a")]
    await sub.aclose()


@pytest.mark.integration
async def test_a_burst_beyond_the_pool_waits_instead_of_failing(redis_url: str) -> None:
    """Far more concurrent calls than pooled connections: all succeed (they queue for one),
    and Redis never sees more than ``max_connections`` command sockets from this registry."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    reg = RedisRegistry(redis_url, prefix=prefix, max_connections=4, pool_timeout_s=10.0)
    try:
        results = await asyncio.gather(
            *(reg.save_session_if(f"s{i}", b"blob", 0, 30) for i in range(400))
        )
        assert all(results)
        pool = reg._redis.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 4
    finally:
        await reg.close()
        raw = aioredis.Redis.from_url(redis_url)
        with contextlib.suppress(aioredis.RedisError):
            keys = [k async for k in raw.scan_iter(match=f"{prefix}*")]
            if keys:
                await raw.delete(*keys)
        await raw.aclose()


# -- token revocation and login backoff (issue 11) -----------------------------------------------
async def test_revocations_keep_the_latest_not_before_until_their_ttl(env: Env) -> None:
    reg = env.registry
    await reg.revoke_tokens(["u:1", "s:abc"], 5_000, 1.0)
    await reg.revoke_tokens(["u:1"], 3_000, 1.0)  # older: never lowers it
    other = await env.make_peer()  # another process (Redis) or the same one (memory)
    assert await other.tokens_not_before(["u:1", "s:abc", "u:2"]) == [5_000, 5_000, 0]
    await reg.revoke_tokens(["u:1"], 9_000, 1.0)
    assert await reg.tokens_not_before(["u:1"]) == [9_000]
    await env.advance(1.2)
    assert await reg.tokens_not_before(["u:1", "s:abc"]) == [0, 0]


async def test_backoff_locks_from_the_free_th_failure_doubling_to_the_cap(env: Env) -> None:
    reg = env.registry
    other = await env.make_peer()  # another process (Redis) or the same one (memory)
    await other.backoff_wait("login:warm-up")  # connected (a cluster client reads its slot map)
    locks = [await reg.backoff_failure("login:eve", 3, 0.2, 0.5, 60.0) for _ in range(5)]
    assert locks == [0.0, 0.0, 0.2, 0.4, 0.5]
    assert 0.3 < await other.backoff_wait("login:eve") <= 0.5  # shared by every process
    assert await reg.backoff_wait("login:nobody") == 0.0
    await env.advance(0.6)
    assert await reg.backoff_wait("login:eve") == 0.0
    await reg.backoff_clear("login:eve")
    assert await reg.backoff_failure("login:eve", 3, 0.2, 0.5, 60.0) == 0.0  # counted afresh
