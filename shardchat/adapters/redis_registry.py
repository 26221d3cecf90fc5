"""Registry on Redis (redis-py asyncio). Guarantees: see ``shardchat.registry.Registry``.

Key layout (``P`` = ``prefix``). The same keys serve a single Redis and a Redis Cluster: every
script touches keys of ONE hash slot. The gateway-wide keys share the hash tag ``{gw}``, so the
scripts that walk a gateway's partitions stay in one slot; partitions are few (tens), rooms are
many, so room keys are spread over every slot.

- ``P{gw}:exp``  ZSET gateway id -> expiry (ms, Redis server clock)
- ``P{gw}:rec``  HASH gateway id -> GatewayRecord (msgspec JSON)
- ``P{gw}:drain`` HASH gateway id -> "1" (router's drain mark)
- ``P{gw}:part:{n}`` ZSET gateway id -> expiry (ms): the partition map
- ``P{gw}:parts:{id}`` SET the partitions last set by that gateway (so ``set_partitions`` can
  drop the ones it gave up)
- ``P room:{id}`` ZSET gateway id -> expiry (ms): the room map, one slot per room
- ``P presence:{uid}`` string with PX
- ``P sess:{sid}`` HASH {epoch, blob} with PX: the epoch sits next to the blob so that one
  script compares and writes atomically (``save_session_if``). A new name, not ``session:``,
  because older versions kept a string there, which HGET would reject (WRONGTYPE) until it
  expired.
- pub/sub channel ``P{channel}``: PUBLISH/SUBSCRIBE on a single Redis; on a Redis Cluster
  sharded SPUBLISH/SSUBSCRIBE (a message travels to the channel's shard only, not over the
  whole cluster bus).

Redis Cluster (``cluster=True``, any node's URL): a call that spans slots (``add_rooms``, the
batched session saves, ``get_presence``) runs one script or read per slot, concurrently;
``gateways_for_room`` reads the room's slot and the gateway slot (two reads, concurrently). A
master failure makes calls raise ``RegistryUnavailable`` until its replica took over (about
``cluster-node-timeout`` plus a second); the client then follows the new slot map. Writes
acknowledged by the failed master in its last moments may be lost (Redis replicates
asynchronously): the registry is ephemeral and the next heartbeat repairs it.

Why expiry scores instead of one key per entry: ``live_gateways`` and the map lookups are one
ZRANGEBYSCORE, with no SCAN; why the server clock (``TIME`` inside Lua): gateways and routers on
different hosts compare expiries without trusting each other's clocks. Each aggregate key gets
PEXPIREAT of its latest member, so a cluster that stops leaves nothing behind.

Pub/sub: ONE PubSub connection per registry multiplexes every channel. A pump task owns it:
on any connection error (Redis restart, CLIENT KILL, a silent half-open socket detected by
PING) it drops the connection, backs off and re-subscribes every channel that still has a
local subscriber; the Subscription iterators never see the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.crc import key_slot
from redis.exceptions import ClusterError, ReadOnlyError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shardchat.registry import GatewayRecord, RegistryUnavailable, Subscription

log = logging.getLogger(__name__)

_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    ClusterError,  # cluster down, slots moving, a master failing over
    TryAgainError,
    OSError,
)

# Rooms per script call: bounds how long one call blocks Redis (about 1 ms per 1000 rooms).
_ROOM_CHUNK = 1000
# Concurrent per-slot calls of one registry call on a cluster (well under the pool size).
_FANOUT = 16
# Sessions per batched save: bounds how long one call blocks Redis (blobs are ~100 B each).
_SESSION_CHUNK = 500

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: gw:exp, gw:rec, gw:drain  ARGV: id, record json, ttl ms
_HEARTBEAT = (
    _NOW
    + """
local exp = now + tonumber(ARGV[3])
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not old) or tonumber(old) <= now then
  -- a gateway that expired and came back under the same id starts without a drain mark
  redis.call('HDEL', KEYS[3], ARGV[1])
end
redis.call('ZADD', KEYS[1], exp, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(dead))
  redis.call('HDEL', KEYS[3], unpack(dead))
end
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
for _, k in ipairs(KEYS) do redis.call('PEXPIREAT', k, top[2]) end
return 1
"""
)

# KEYS: gw:exp, gw:rec, gw:drain, gw:parts:{id}  ARGV: id, partition key prefix
_REMOVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
for _, p in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  redis.call('ZREM', ARGV[2] .. p, ARGV[1])
end
redis.call('DEL', KEYS[4])
return 1
"""

# KEYS: gw:exp, gw:drain  ARGV: id
_MARK_DRAINING = (
    _NOW
    + """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not s) or tonumber(s) <= now then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], '1')
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], top[2])
return 1
"""
)

# KEYS: gw:exp, gw:rec, gw:drain  -> [record, drained(0/1), ...]
_LIVE = (
    _NOW
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
if #ids == 0 then return {} end
local recs = redis.call('HMGET', KEYS[2], unpack(ids))
local marks = redis.call('HMGET', KEYS[3], unpack(ids))
local out = {}
for i = 1, #ids do
  if recs[i] then
    out[#out + 1] = recs[i]
    out[#out + 1] = marks[i] and 1 or 0
  end
end
return out
"""
)

# KEYS: map keys (room:* or part:*)  ARGV: id, ttl ms
_MAP_ADD = (
    _NOW
    + """
local exp = now + tonumber(ARGV[2])
for _, k in ipairs(KEYS) do
  redis.call('ZADD', k, exp, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  local top = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', k, top[2])
end
return 1
"""
)

# KEYS: gw:parts:{id}  ARGV: id, ttl ms, partition key prefix, partitions...
_SET_PARTITIONS = (
    _NOW
    + """
local exp = now + tonumber(ARGV[2])
local wanted = {}
for i = 4, #ARGV do wanted[ARGV[i]] = true end
for _, p in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not wanted[p] then redis.call('ZREM', ARGV[3] .. p, ARGV[1]) end
end
redis.call('DEL', KEYS[1])
for i = 4, #ARGV do
  local k = ARGV[3] .. ARGV[i]
  redis.call('SADD', KEYS[1], ARGV[i])
  redis.call('ZADD', k, exp, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  local top = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', k, top[2])
end
if #ARGV >= 4 then redis.call('PEXPIREAT', KEYS[1], exp) end
return 1
"""
)

# KEYS: map key, gw:exp  -> ids of live gateways with a live entry (both keys in one slot:
# the partition map)
_MAP_GET = (
    _NOW
    + """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  local s = redis.call('ZSCORE', KEYS[2], id)
  if s and tonumber(s) > now then out[#out + 1] = id end
end
return out
"""
)

# KEYS: one map key or gw:exp  -> the ids with a live entry (the room map: its slot and the
# gateway slot are read apart, then intersected)
_LIVE_IDS = (
    _NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"""
)

# KEYS: sess:{sid} x n  ARGV: ttl ms, then epoch, blob per key  -> per key 1 written, 0 a
# higher epoch is stored. An expired key is absent to a script, so an expired owner never blocks
# a write. One session or many in one command: a gateway's periodic saves cost one round trip.
_SESSIONS_SAVE_IF = """
local out = {}
for i, key in ipairs(KEYS) do
  local epoch = ARGV[2 * i]
  local cur = redis.call('HGET', key, 'epoch')
  if cur and tonumber(cur) > tonumber(epoch) then
    out[i] = 0
  else
    redis.call('HSET', key, 'epoch', epoch, 'blob', ARGV[2 * i + 1])
    redis.call('PEXPIRE', key, ARGV[1])
    out[i] = 1
  end
end
return out
"""

# KEYS: sess:{sid}  ARGV: ttl ms, epoch, blob  -> 1 claimed (now epoch + 1), 0 another epoch is
# stored (a concurrent RESUME claimed it first)
_SESSION_CLAIM = """
local cur = redis.call('HGET', KEYS[1], 'epoch')
if cur and tonumber(cur) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'epoch', tonumber(ARGV[2]) + 1, 'blob', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: sess:{sid}  ARGV: epoch  -> 1 deleted or absent, 0 a higher epoch is stored
_SESSION_DELETE_IF = """
local cur = redis.call('HGET', KEYS[1], 'epoch')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


# KEYS: subjects  ARGV: not_before ms, ttl ms -> keep the larger value
_REVOKE = """
for _, k in ipairs(KEYS) do
  local cur = redis.call('GET', k)
  if (not cur) or tonumber(cur) < tonumber(ARGV[1]) then
    redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
  end
end
return 1
"""

# KEYS: backoff hash  ARGV: free, base ms, max ms, forget ms  -> lock ms now
_BACKOFF_FAIL = (
    _NOW
    + """
local fails = redis.call('HINCRBY', KEYS[1], 'n', 1)
local lock = 0
if fails >= tonumber(ARGV[1]) then
  lock = math.min(tonumber(ARGV[2]) * 2 ^ (fails - tonumber(ARGV[1])), tonumber(ARGV[3]))
  redis.call('HSET', KEYS[1], 'until', now + lock)
end
redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[4]) + lock))
return math.floor(lock)
"""
)

# KEYS: backoff hash -> ms left
_BACKOFF_WAIT = (
    _NOW
    + """
local untl = redis.call('HGET', KEYS[1], 'until')
if not untl then return 0 end
return math.max(0, tonumber(untl) - now)
"""
)


@contextlib.contextmanager
def _translate_errors() -> Iterator[None]:
    """Callers see RegistryUnavailable, never redis exceptions (they must not import redis)."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise RegistryUnavailable(f"redis: {exc}") from exc


def _ms(ttl_s: float) -> int:
    return max(1, round(ttl_s * 1000))


class RedisRegistry:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "shardchat:",
        max_pending: int = 10_000,
        socket_timeout_s: float = 5.0,
        poll_s: float = 1.0,
        ping_after_s: float = 5.0,
        reconnect_max_s: float = 2.0,
        max_connections: int = 64,
        pool_timeout_s: float = 5.0,
        cluster: bool = False,
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._cluster = cluster
        self._socket_timeout_s = socket_timeout_s
        self._max_pending = max_pending
        self._poll_s = poll_s
        self._ping_after_s = ping_after_s
        self._reconnect_max_s = reconnect_max_s
        # Commands: a pool, with a few quick retries so a Redis restart costs a blip only.
        # A BLOCKING pool: in a connect storm (thousands of IDENTIFY/RESUME saving sessions at
        # once) the default pool raises "Too many connections" past its cap, which failed the
        # sessions (4000); here a caller waits up to ``pool_timeout_s`` for a free connection
        # instead, and Redis sees at most ``max_connections`` sockets per process. A URL query
        # ``?max_connections=N&timeout=S`` overrides both (redis-py parses it), so deployments
        # tune them through SHARDCHAT_REDIS_URL.
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)
        self._redis: aioredis.Redis | RedisCluster
        if cluster:
            # Pools per node; the client follows MOVED and refreshes the slot map itself.
            self._redis = RedisCluster.from_url(
                url,
                max_connections=max_connections,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=min(socket_timeout_s, 2.0),
                retry=retry,
            )
        else:
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=pool_timeout_s,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=min(socket_timeout_s, 2.0),
                retry=retry,
            )
            self._redis = aioredis.Redis.from_pool(pool)  # closes the pool too
        # Pub/sub: no library-level retry; the pump alone decides when to reconnect, so two
        # reconnect mechanisms never race on the one connection.
        # On a cluster: a connection to the master of the pub/sub slot, opened per connection.
        self._ps_redis: aioredis.Redis | None = None if cluster else self._pubsub_client(url)
        # Cluster: every channel carries the tag {ps}, so SSUBSCRIBE takes one connection to
        # one shard (see the module docstring).
        self._channel_prefix = f"{prefix}{{ps}}:" if cluster else prefix
        self._k_exp = f"{prefix}{{gw}}:exp"
        self._k_rec = f"{prefix}{{gw}}:rec"
        self._k_drain = f"{prefix}{{gw}}:drain"
        self._part_prefix = f"{prefix}{{gw}}:part:"
        self._heartbeat = self._redis.register_script(_HEARTBEAT)
        self._remove = self._redis.register_script(_REMOVE)
        self._mark_draining = self._redis.register_script(_MARK_DRAINING)
        self._live = self._redis.register_script(_LIVE)
        self._map_add = self._redis.register_script(_MAP_ADD)
        self._set_partitions = self._redis.register_script(_SET_PARTITIONS)
        self._map_get = self._redis.register_script(_MAP_GET)
        self._live_ids = self._redis.register_script(_LIVE_IDS)
        self._session_delete_if = self._redis.register_script(_SESSION_DELETE_IF)
        self._session_claim = self._redis.register_script(_SESSION_CLAIM)
        self._sessions_save_if = self._redis.register_script(_SESSIONS_SAVE_IF)
        self._revoke = self._redis.register_script(_REVOKE)
        self._backoff_fail = self._redis.register_script(_BACKOFF_FAIL)
        self._backoff_wait = self._redis.register_script(_BACKOFF_WAIT)
        self._record_decoder = msgspec.json.Decoder(GatewayRecord)

        # pub/sub state: full channel name -> live local subscriptions
        self._subs: dict[str, weakref.WeakSet[Subscription]] = {}
        self._sent: set[str] = set()  # channels SUBSCRIBEd on the current connection
        self._ready: dict[str, asyncio.Event] = {}  # set once Redis confirmed the channel
        self._ps: PubSub | None = None
        self._ps_lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the pub/sub pump. Never fails when Redis is down: it keeps retrying."""
        if self._tasks:
            return
        if isinstance(self._redis, RedisCluster):
            # Read the slot map now: concurrent first calls on a cluster client that has none
            # yet each start the discovery and break each other's connections (redis-py).
            try:
                await self._redis.initialize()
            except _UNAVAILABLE as exc:
                log.warning("redis cluster not reachable yet: %s", exc)
        self._tasks = [
            asyncio.create_task(self._pump(), name="registry-pubsub-pump"),
            asyncio.create_task(self._syncer(), name="registry-pubsub-sync"),
        ]

    async def close(self) -> None:
        self._closed = True
        self._dirty.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded wait, and the loops also check _closed: redis-py can swallow a
            # CancelledError raised while it disconnects, which would otherwise hang close().
            await asyncio.wait(self._tasks, timeout=2.0)
        self._tasks = []
        subs = [s for group in self._subs.values() for s in group]
        self._subs.clear()
        for sub in subs:
            sub._end()
        for event in self._ready.values():
            event.set()  # wake ready() waiters; their subscriptions have ended
        await self._redis.aclose()
        if self._ps_redis is not None:
            await self._ps_redis.aclose()

    async def ping(self) -> None:
        with _translate_errors():
            await self._redis.ping()

    # -- gateways ------------------------------------------------------------------------------
    async def heartbeat_gateway(self, record: GatewayRecord, ttl_s: float) -> None:
        with _translate_errors():
            await self._heartbeat(
                keys=[self._k_exp, self._k_rec, self._k_drain],
                args=[record.gateway_id, msgspec.json.encode(record), _ms(ttl_s)],
            )

    async def remove_gateway(self, gateway_id: str) -> None:
        with _translate_errors():
            await self._remove(
                keys=[self._k_exp, self._k_rec, self._k_drain, self._parts_key(gateway_id)],
                args=[gateway_id, self._part_prefix],
            )

    async def mark_draining(self, gateway_id: str) -> bool:
        with _translate_errors():
            done = await self._mark_draining(keys=[self._k_exp, self._k_drain], args=[gateway_id])
        return bool(done)

    async def live_gateways(self) -> list[GatewayRecord]:
        with _translate_errors():
            raw: list[Any] = await self._live(keys=[self._k_exp, self._k_rec, self._k_drain])
        out: list[GatewayRecord] = []
        for i in range(0, len(raw), 2):
            record = self._record_decoder.decode(raw[i])
            if raw[i + 1] and not record.draining:
                record = msgspec.structs.replace(record, draining=True)
            out.append(record)
        out.sort(key=lambda r: r.gateway_id)
        return out

    # -- room / partition maps -----------------------------------------------------------------
    def _room_key(self, room_id: int) -> str:
        return f"{self._prefix}room:{room_id}"

    def _parts_key(self, gateway_id: str) -> str:
        return f"{self._prefix}{{gw}}:parts:{gateway_id}"

    async def _gather(self, calls: Sequence[Awaitable[Any]]) -> list[Any]:
        """Await ``calls`` (one per slot group), at most ``_FANOUT`` at a time: a cluster
        client's per-node pool refuses calls beyond its size instead of queueing them."""
        if len(calls) == 1:
            return [await calls[0]]
        gate = asyncio.Semaphore(_FANOUT)

        async def one(call: Awaitable[Any]) -> Any:
            async with gate:
                return await call

        return list(await asyncio.gather(*(one(c) for c in calls)))

    async def _mget(self, keys: list[str]) -> list[Any]:
        """MGET on one Redis; on a cluster one MGET per slot (keys of many slots)."""
        if isinstance(self._redis, RedisCluster):
            return list(await self._redis.mget_nonatomic(keys))
        return list(await self._redis.mget(keys))

    def _by_slot(self, keys: Sequence[str], chunk: int) -> list[list[int]]:
        """Indexes of ``keys`` grouped so one script may touch each group: chunks in order on
        one Redis; on a cluster one group per hash slot, at most ``chunk`` keys each."""
        if not self._cluster:
            return [list(range(i, min(i + chunk, len(keys)))) for i in range(0, len(keys), chunk)]
        slots: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            slots.setdefault(key_slot(key.encode()), []).append(i)
        return [g[i : i + chunk] for g in slots.values() for i in range(0, len(g), chunk)]

    async def add_rooms(self, gateway_id: str, room_ids: Sequence[int], ttl_s: float) -> None:
        ttl_ms = _ms(ttl_s)
        keys = [self._room_key(r) for r in room_ids]
        calls = [
            self._map_add(keys=[keys[i] for i in group], args=[gateway_id, ttl_ms])
            for group in self._by_slot(keys, _ROOM_CHUNK)
        ]
        with _translate_errors():
            # One round trip per chunk (a gateway's usual room set is one chunk on one Redis;
            # one call per slot, concurrently, on a cluster).
            await self._gather(calls)

    async def remove_rooms(self, gateway_id: str, room_ids: Sequence[int]) -> None:
        if not room_ids:
            return
        with _translate_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for room_id in room_ids:
                    pipe.zrem(self._room_key(room_id), gateway_id)
                await pipe.execute()

    async def gateways_for_room(self, room_id: int) -> set[str]:
        # The room's slot and the gateway slot differ (on a cluster): read both at once.
        with _translate_errors():
            entries, live = await asyncio.gather(
                self._live_ids(keys=[self._room_key(room_id)]),
                self._live_ids(keys=[self._k_exp]),
            )
        return {i.decode() for i in set(entries) & set(live)}

    async def set_partitions(
        self, gateway_id: str, partitions: Sequence[int], ttl_s: float
    ) -> None:
        with _translate_errors():
            await self._set_partitions(
                keys=[self._parts_key(gateway_id)],
                args=[gateway_id, _ms(ttl_s), self._part_prefix, *sorted(set(partitions))],
            )

    async def gateways_for_partition(self, partition: int) -> set[str]:
        key = f"{self._part_prefix}{partition}"
        with _translate_errors():
            ids: list[bytes] = await self._map_get(keys=[key, self._k_exp])
        return {i.decode() for i in ids}

    # -- presence / sessions -------------------------------------------------------------------
    async def set_presence(self, user_id: int, status: str, ttl_s: float) -> None:
        with _translate_errors():
            await self._redis.set(f"{self._prefix}presence:{user_id}", status, px=_ms(ttl_s))

    async def get_presence(self, user_ids: Sequence[int]) -> dict[int, str]:
        if not user_ids:
            return {}
        ids = list(user_ids)
        keys = [f"{self._prefix}presence:{u}" for u in ids]
        with _translate_errors():
            values = await self._mget(keys)
        return {u: v.decode() for u, v in zip(ids, values, strict=True) if v is not None}

    def _session_key(self, session_id: str) -> str:
        return f"{self._prefix}sess:{session_id}"

    async def save_session_if(self, session_id: str, blob: bytes, epoch: int, ttl_s: float) -> bool:
        (done,) = await self.save_sessions_if([(session_id, blob, epoch)], ttl_s)
        return done

    async def save_sessions_if(
        self, items: Sequence[tuple[str, bytes, int]], ttl_s: float
    ) -> list[bool]:
        out = [False] * len(items)
        ttl_ms = _ms(ttl_s)
        keys = [self._session_key(sid) for sid, _, _ in items]
        groups = self._by_slot(keys, _SESSION_CHUNK)
        calls = []
        for group in groups:
            args: list[Any] = [ttl_ms]
            for i in group:
                args += (items[i][2], items[i][1])
            calls.append(self._sessions_save_if(keys=[keys[i] for i in group], args=args))
        with _translate_errors():
            results = await self._gather(calls)
        for group, done in zip(groups, results, strict=True):
            for i, ok in zip(group, done, strict=True):
                out[i] = bool(ok)
        return out

    async def claim_session(self, session_id: str, epoch: int, blob: bytes, ttl_s: float) -> bool:
        with _translate_errors():
            done = await self._session_claim(
                keys=[self._session_key(session_id)], args=[_ms(ttl_s), epoch, blob]
            )
        return bool(done)

    async def load_session(self, session_id: str) -> bytes | None:
        with _translate_errors():
            value: Any = await self._redis.hget(self._session_key(session_id), "blob")
        return None if value is None else bytes(value)

    async def delete_session_if(self, session_id: str, epoch: int) -> bool:
        with _translate_errors():
            done = await self._session_delete_if(keys=[self._session_key(session_id)], args=[epoch])
        return bool(done)

    async def delete_session(self, session_id: str) -> None:
        with _translate_errors():
            await self._redis.delete(self._session_key(session_id))

    # -- token revocation / backoff ------------------------------------------------------------
    def _revocation_key(self, subject: str) -> str:
        return f"{self._prefix}nbf:{subject}"

    async def revoke_tokens(
        self, subjects: Sequence[str], not_before_ms: int, ttl_s: float
    ) -> None:
        if not subjects:
            return
        keys = [self._revocation_key(s) for s in subjects]
        calls = [
            self._revoke(keys=[keys[i] for i in group], args=[not_before_ms, _ms(ttl_s)])
            for group in self._by_slot(keys, _ROOM_CHUNK)
        ]
        with _translate_errors():
            await self._gather(calls)

    async def tokens_not_before(self, subjects: Sequence[str]) -> list[int]:
        if not subjects:
            return []
        with _translate_errors():
            values = await self._mget([self._revocation_key(s) for s in subjects])
        return [0 if v is None else int(v) for v in values]

    def _backoff_key(self, key: str) -> str:
        return f"{self._prefix}backoff:{key}"

    async def backoff_failure(
        self, key: str, free: int, base_s: float, max_s: float, forget_s: float
    ) -> float:
        with _translate_errors():
            lock_ms = await self._backoff_fail(
                keys=[self._backoff_key(key)],
                args=[free, _ms(base_s), _ms(max_s), _ms(forget_s)],
            )
        return int(lock_ms) / 1000

    async def backoff_wait(self, key: str) -> float:
        with _translate_errors():
            left_ms = await self._backoff_wait(keys=[self._backoff_key(key)])
        return int(left_ms) / 1000

    async def backoff_clear(self, key: str) -> None:
        with _translate_errors():
            await self._redis.delete(self._backoff_key(key))

    # -- pub/sub -------------------------------------------------------------------------------
    async def publish(self, channel: str, payload: bytes) -> int:
        with _translate_errors():
            full = self._channel_prefix + channel
            receivers: int = await (
                self._redis.spublish(full, payload)
                if self._cluster
                else self._redis.publish(full, payload)
            )
        return receivers

    def subscribe(self, channel: str) -> Subscription:
        sub = Subscription(
            channel,
            on_close=self._on_sub_closed,
            wait_ready=self._wait_ready,
            max_pending=self._max_pending,
        )
        if self._closed:
            sub._end()
            return sub
        full = self._channel_prefix + channel
        group = self._subs.get(full)
        if group is None:
            group = self._subs[full] = weakref.WeakSet()
        group.add(sub)
        self._dirty.set()
        return sub

    def _on_sub_closed(self, sub: Subscription) -> None:
        full = self._channel_prefix + sub.channel
        group = self._subs.get(full)
        if group is not None:
            group.discard(sub)
        self._dirty.set()

    async def _wait_ready(self, channel: str) -> None:
        full = self._channel_prefix + channel
        if self._closed or full not in self._subs:
            return
        # One long-lived Event per wanted channel: cleared on disconnect, set on confirmation,
        # so a waiter that started during an outage wakes on the re-subscription.
        await self._ready.setdefault(full, asyncio.Event()).wait()

    def _wanted(self) -> set[str]:
        for full in [c for c, group in self._subs.items() if not group]:
            del self._subs[full]
            event = self._ready.pop(full, None)
            if event is not None:
                event.set()  # release waiters of a channel nobody wants any more
        return set(self._subs)

    async def _syncer(self) -> None:
        """Bring the connection's SUBSCRIBE set in line with local subscribers."""
        while not self._closed:
            await self._dirty.wait()
            self._dirty.clear()
            async with self._ps_lock:
                ps = self._ps
                want = self._wanted()
                if ps is None:
                    continue  # the pump subscribes everything wanted when it connects
                add, drop = want - self._sent, self._sent - want
                try:
                    if add:
                        await self._subscribe_on(ps, add)
                        self._sent |= add
                    if drop:
                        await (ps.sunsubscribe(*drop) if self._cluster else ps.unsubscribe(*drop))
                        self._sent -= drop
                except _UNAVAILABLE as exc:
                    # The pump sees the same broken connection and re-subscribes everything.
                    log.debug("registry pub/sub sync failed: %s", exc)

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.05
        failing = False
        while not self._closed:
            ps: PubSub | None = None
            try:
                ps = (await self._connect_pubsub_client()).pubsub()
                async with self._ps_lock:
                    await ps.connect()  # type: ignore[no-untyped-call]
                    want = self._wanted()
                    if want:
                        await self._subscribe_on(ps, want)
                    self._sent = want
                    self._ps = ps
                if failing:
                    log.warning("registry pub/sub reconnected (%d channels)", len(want))
                    failing = False
                self._dirty.set()  # pick up subscribe/close calls that raced the connect
                last_heard = loop.time()
                pinged = False
                while not self._closed:
                    msg = await ps.get_message(timeout=self._poll_s)
                    now = loop.time()
                    if msg is None:
                        silent = now - last_heard
                        if silent > 2 * self._ping_after_s:
                            raise RedisConnectionError("pub/sub connection silent after PING")
                        if silent > self._ping_after_s and not pinged:
                            # Why: a half-open TCP connection never errors on its own.
                            await ps.ping()
                            pinged = True
                        continue
                    last_heard, pinged, delay = now, False, 0.05
                    self._dispatch(msg)
            except asyncio.CancelledError:
                raise
            except (*_UNAVAILABLE, RuntimeError) as exc:
                if not failing:
                    log.warning("registry pub/sub connection lost: %s", exc)
                failing = True
            finally:
                self._ps = None
                self._sent = set()
                for event in self._ready.values():
                    event.clear()  # not confirmed on the next connection until Redis says so
                if ps is not None:
                    with contextlib.suppress(Exception):
                        await ps.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max_s)

    async def _subscribe_on(self, ps: PubSub, channels: set[str]) -> None:
        await (ps.ssubscribe(*channels) if self._cluster else ps.subscribe(*channels))

    def _pubsub_client(self, url: str) -> aioredis.Redis:
        """The pub/sub connection's client: no library-level retry; the pump alone decides
        when to reconnect, so two reconnect mechanisms never race on the one connection."""
        return aioredis.Redis.from_url(
            url,
            socket_connect_timeout=min(self._socket_timeout_s, 2.0),
            retry=Retry(NoBackoff(), 0, supported_errors=()),
            # named so operators (and tests) can find it in CLIENT LIST
            client_name=f"{self._prefix}pubsub".replace(" ", "_"),
        )

    async def _connect_pubsub_client(self) -> aioredis.Redis:
        """On a cluster: a client of the pub/sub slot's current master (after a failover the
        slot map is read again first)."""
        if not isinstance(self._redis, RedisCluster):
            assert self._ps_redis is not None
            return self._ps_redis
        await self._redis.initialize()  # no-op once done
        if self._ps_redis is not None:
            await self._ps_redis.aclose()
            self._ps_redis = None
            await self._redis.nodes_manager.initialize()  # the map may be stale: refresh it
        node = self._redis.get_node_from_key(self._channel_prefix)
        if node is None:
            raise RedisConnectionError("no master serves the pub/sub slot")
        self._ps_redis = self._pubsub_client(f"redis://{node.host}:{node.port}/0")
        return self._ps_redis

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        channel = msg["channel"]
        if kind == "pong" or channel is None:
            return
        full = channel.decode() if isinstance(channel, bytes) else str(channel)
        if kind in ("message", "smessage"):
            for sub in list(self._subs.get(full, ())):
                sub._deliver(msg["data"])
        elif kind in ("subscribe", "ssubscribe"):
            if full in self._subs:
                self._ready.setdefault(full, asyncio.Event()).set()
        elif kind in ("unsubscribe", "sunsubscribe"):
            event = self._ready.get(full)
            if event is not None:
                event.clear()
