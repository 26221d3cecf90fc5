"""HistoryCache on Redis (single or Cluster): one hash per room, ``P hist:{room_id}`` =
{seq, blob} with a TTL; ``blob`` is the msgpack of ``CachedRoom``. ``put`` is one script on one
key (so one slot on a cluster): compare the stored ``seq``, write, restart the TTL."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from chat_core.history_cache import CachedRoom

log = logging.getLogger(__name__)

# KEYS: hist:{room}  ARGV: replaces ('' = a fill), seq, blob, ttl ms  -> 1 stored, 0 not
_PUT = """
local cur = redis.call('HGET', KEYS[1], 'seq')
if ARGV[1] == '' then
  if cur and tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
elseif (not cur) or tonumber(cur) ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'blob', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(CachedRoom).decode


class RedisHistoryCache:
    def __init__(
        self,
        url: str,
        *,
        cluster: bool = False,
        prefix: str = "shardchat:",
        ttl_s: float = 300.0,
        socket_timeout_s: float = 2.0,
    ) -> None:
        self._prefix = prefix
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._redis: aioredis.Redis | RedisCluster = (
            RedisCluster.from_url(url, socket_timeout=socket_timeout_s)
            if cluster
            else aioredis.Redis.from_url(url, socket_timeout=socket_timeout_s)
        )
        self._put = self._redis.register_script(_PUT)

    def _key(self, room_id: int) -> str:
        return f"{self._prefix}hist:{room_id}"

    async def get(self, room_id: int) -> CachedRoom | None:
        try:
            blob: Any = await self._redis.hget(self._key(room_id), "blob")
            return None if blob is None else _decode(blob)
        except (RedisError, OSError, msgspec.DecodeError) as exc:
            log.debug("history cache read failed: %s", exc)
            return None  # a miss: the reader goes to the Store

    async def put(self, room_id: int, entry: CachedRoom, *, replaces: int | None) -> bool:
        args = ["" if replaces is None else replaces, entry.last_seq, _encode(entry), self._ttl_ms]
        try:
            return bool(await self._put(keys=[self._key(room_id)], args=args))
        except (RedisError, OSError) as exc:
            log.debug("history cache write failed: %s", exc)
            return False

    async def delete(self, room_id: int) -> None:
        try:
            await self._redis.delete(self._key(room_id))
        except (RedisError, OSError) as exc:
            log.debug("history cache delete failed: %s", exc)

    async def close(self) -> None:
        await self._redis.aclose()
