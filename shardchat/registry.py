"""The Registry port: ephemeral cluster state (gateways, room/partition maps, presence, pub/sub).

Adapters: ``shardchat.adapters.memory_registry`` (embedded default, also the test double) and
``shardchat.adapters.redis_registry``. One contract suite (tests/contract/test_registry_contract.py)
runs against both.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Protocol

import msgspec

#: Payload the router publishes on :func:`gateway_control_channel` to make a gateway drain: it
#: sends RECONNECT to its sessions and stops accepting new ones.
DRAIN_MESSAGE = b"drain"


def gateway_control_channel(gateway_id: str) -> str:
    """The pub/sub channel a gateway listens on for control messages (``DRAIN_MESSAGE``)."""
    return f"gateway:{gateway_id}:control"


class GatewayRecord(msgspec.Struct, frozen=True):
    gateway_id: str
    url: str  # public ws URL clients connect to (without ?v=&encoding=)
    sessions: int = 0  # live sessions at the last heartbeat: the load used by placement
    draining: bool = False


class RegistryUnavailable(Exception):
    """The registry backend could not be reached (Redis down, timeout).

    Adapters translate their client library's errors into this so that callers never import
    redis. Everything in the registry is ephemeral and repaired by the next heartbeat, so the
    usual reaction is: log, count, carry on.
    """


class Subscription(AsyncIterator[bytes]):
    """One ``Registry.subscribe`` iterator: an async iterator of payloads on one channel.

    Guarantees:
    - messages arrive in the order the adapter received them; nothing published before the
      subscription became active is delivered (await :meth:`ready` to know it is active).
    - after :meth:`aclose` (or the registry's ``close``) nothing more is delivered and the
      iterator ends; messages still queued are dropped.
    - a consumer slower than the publishers loses the NEWEST messages beyond ``max_pending``
      (``dropped`` counts them) instead of growing memory: the registry carries ephemeral
      events (typing, presence, control) only.
    - a broken backend connection does NOT end the iterator: the adapter re-subscribes and
      delivery resumes (messages published meanwhile are lost).

    Close it: ``async with registry.subscribe(ch) as sub``, or ``await sub.aclose()``. Breaking
    out of ``async for`` does not close it (an unreferenced one is closed when collected).
    """

    def __init__(
        self,
        channel: str,
        *,
        on_close: Callable[[Subscription], None],
        wait_ready: Callable[[str], Awaitable[None]],
        max_pending: int = 10_000,
    ) -> None:
        self.channel = channel
        self.dropped = 0
        self._on_close = on_close
        self._wait_ready = wait_ready
        self._max_pending = max_pending
        self._queue: collections.deque[bytes] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closed = False

    # -- consumer side -----------------------------------------------------------------------
    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> bytes:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        if self._closed:
            raise StopAsyncIteration
        return self._queue.popleft()

    async def ready(self) -> None:
        """Return once the backend confirmed the subscription: later publishes are delivered."""
        if not self._closed:
            await self._wait_ready(self.channel)

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Synchronous close (safe from callbacks); the adapter unsubscribes in the background."""
        if self._closed:
            return
        self._end()
        self._on_close(self)

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Subscription:
        await self.ready()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Why: an abandoned iterator must not keep a Redis subscription (and its queue) forever.
        if not self._closed:
            # suppress: at interpreter shutdown there may be no loop left to wake
            with contextlib.suppress(Exception):
                self.close()

    # -- adapter side ------------------------------------------------------------------------
    def _deliver(self, payload: bytes) -> None:
        if self._closed:
            return
        if len(self._queue) >= self._max_pending:
            self.dropped += 1
            return
        self._queue.append(payload)
        self._wakeup.set()

    def _end(self) -> None:
        """Stop delivery and wake the consumer (called by the adapter on registry close)."""
        self._closed = True
        self._queue.clear()
        self._wakeup.set()


class Registry(Protocol):
    """Ephemeral cluster state: live gateways, room/partition maps, presence, sessions, pub/sub.

    Nothing here is durable: after a loss (Redis flushed or restarted) gateways re-register and
    re-publish their maps on their next heartbeat, and sessions that were lost are INVALID.
    Every method may raise :class:`RegistryUnavailable`; none raises the backend's own errors.

    Guarantees:
    - a gateway registered with ``ttl_s`` is listed by ``live_gateways`` until ``ttl_s`` after
      its last heartbeat, or until ``remove_gateway``. Heartbeats are cheap (one round trip)
      and idempotent: the gateway calls ``heartbeat_gateway``, ``add_rooms`` and
      ``set_partitions`` with its full state on every beat, which repairs any loss.
    - ``mark_draining`` sets ``draining`` on a live gateway's listing until that gateway is
      gone, whatever its own heartbeats say (they may lag until it hears the control message).
    - ``gateways_for_room`` / ``gateways_for_partition`` list only gateways that are live now
      and whose entry was refreshed within its ``ttl_s``: a dead or removed gateway vanishes
      from every map as soon as it leaves ``live_gateways``.
    - ``set_partitions`` replaces the gateway's whole partition set; ``add_rooms`` adds to
      (and refreshes) its room set; ``remove_rooms`` drops entries at once.
    - presence and session blobs are held until their TTL passes (``get_presence`` omits
      users with no live entry; callers treat them as offline). A session saved on one
      gateway is loadable on every gateway (RESUME anywhere).
    - session writes are conditional on an ownership ``epoch`` (``save_session_if``,
      ``delete_session_if``): one atomic compare-and-set each, so two gateways racing for one
      session cannot both win against a newer owner, and ``claim_session`` lets exactly one
      of two concurrent RESUMEs take a session over. See ``save_session_if``.
    - ``publish`` reaches every active ``subscribe`` iterator of that channel, in every
      process sharing the backend, at most once, in publish order per publisher; nothing is
      kept for late subscribers or across a backend outage. See :class:`Subscription`.
    - ``close`` ends every open subscription iterator.
    - ``revoke_tokens`` keeps, per subject, the LATEST "not before" written (a smaller one never
      replaces it) for ``ttl_s``; ``tokens_not_before`` reads them (0 = none), one round trip.
    - backoff counters (``backoff_failure`` / ``backoff_wait`` / ``backoff_clear``) are shared by
      every process using the backend and timed by one clock (Redis's own), so N edges behind a
      balancer throttle one account together.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Round-trip to the backend (readiness); raises RegistryUnavailable."""
        ...

    async def heartbeat_gateway(self, record: GatewayRecord, ttl_s: float) -> None: ...

    async def remove_gateway(self, gateway_id: str) -> None: ...

    async def mark_draining(self, gateway_id: str) -> bool:
        """Mark a live gateway draining; False if it is not live."""
        ...

    async def live_gateways(self) -> list[GatewayRecord]:
        """Live gateways sorted by ``gateway_id``."""
        ...

    async def add_rooms(self, gateway_id: str, room_ids: Sequence[int], ttl_s: float) -> None: ...

    async def remove_rooms(self, gateway_id: str, room_ids: Sequence[int]) -> None: ...

    async def gateways_for_room(self, room_id: int) -> set[str]: ...

    async def set_partitions(
        self, gateway_id: str, partitions: Sequence[int], ttl_s: float
    ) -> None: ...

    async def gateways_for_partition(self, partition: int) -> set[str]: ...

    async def set_presence(self, user_id: int, status: str, ttl_s: float) -> None: ...

    async def get_presence(self, user_ids: Sequence[int]) -> dict[int, str]: ...

    async def save_session_if(self, session_id: str, blob: bytes, epoch: int, ttl_s: float) -> bool:
        """Store ``blob`` with ``epoch`` for ``ttl_s``, unless a newer owner holds the session.

        ``epoch`` is the session's ownership counter (the gateway bumps it on every RESUME;
        ``0 <= epoch < 2**53``). Guarantees:
        - atomic compare-and-set in ONE round trip: the write happens only when no live stored
          entry has an epoch HIGHER than ``epoch``; an equal epoch is overwritten (the owner's
          own periodic saves, its release on hand-over). Blob and epoch are written together
          and the TTL restarts at ``ttl_s``.
        - True: written. False: a newer owner exists and nothing was changed; the caller's copy
          of the session is stale (it lost the session).
        - concurrent calls, from any processes sharing the backend, behave as if run one at a
          time: the entry ends with a blob of the highest epoch written, and a lower epoch
          never replaces a higher one.
        - an expired or deleted entry counts as absent (any epoch may write). After a backend
          loss a stale owner can therefore win once; the real owner's next save (higher epoch)
          overwrites it and the stale owner's next save returns False.
        """
        ...

    async def save_sessions_if(
        self, items: Sequence[tuple[str, bytes, int]], ttl_s: float
    ) -> list[bool]:
        """``save_session_if`` for many ``(session_id, blob, epoch)`` at once, in few round trips.

        One result per item, in order, each with the guarantees of ``save_session_if``. Not
        atomic as a whole: on an error some items may have been written (retrying is safe).
        """
        ...

    async def claim_session(self, session_id: str, epoch: int, blob: bytes, ttl_s: float) -> bool:
        """Take the session over (RESUME): store ``blob`` with ``epoch + 1`` iff the live entry
        holds exactly ``epoch`` (the one the caller loaded) or no entry is live.

        Atomic compare-and-set in one round trip, like ``save_session_if``, but exact: of two
        RESUMEs that loaded the same entry, exactly one claim returns True; the other sees
        ``epoch + 1`` stored and returns False with nothing changed. Once claimed, the holder
        at ``epoch`` can no longer save (its ``save_session_if`` returns False).
        """
        ...

    async def load_session(self, session_id: str) -> bytes | None:
        """The blob last written by ``save_session_if``; None when absent or expired."""
        ...

    async def delete_session_if(self, session_id: str, epoch: int) -> bool:
        """Delete the session unless a newer owner holds it; atomic like ``save_session_if``.

        True: deleted, or nothing live was stored. False: a stored entry has an epoch higher
        than ``epoch`` and was left as it is.
        """
        ...

    async def delete_session(self, session_id: str) -> None:
        """Delete unconditionally (administrative use; gateways use ``delete_session_if``)."""
        ...

    async def publish(self, channel: str, payload: bytes) -> int:
        """Deliver ``payload`` to the channel's current subscribers (at most once, no replay).

        Returns how many received it; 0 means nobody listens now, e.g. the gateway owning a
        control channel is gone. Counted per subscribed connection: Redis counts one per process
        (a process's subscriptions share one connection), the memory adapter one per
        subscription. Only 0 vs more is portable.
        """
        ...

    def subscribe(self, channel: str) -> Subscription:
        """Start a subscription now (no await needed to register it); see Subscription."""
        ...

    async def revoke_tokens(
        self, subjects: Sequence[str], not_before_ms: int, ttl_s: float
    ) -> None:
        """Refuse tokens of these subjects issued before ``not_before_ms``
        (``user_core.revocation``)."""
        ...

    async def tokens_not_before(self, subjects: Sequence[str]) -> list[int]:
        """The "not before" of each subject, 0 when none is held."""
        ...

    async def backoff_failure(
        self, key: str, free: int, base_s: float, max_s: float, forget_s: float
    ) -> float:
        """Count a failure of ``key``; from the ``free``-th failure on it is locked for
        ``base_s``, doubling per further failure, at most ``max_s``. Returns the lock now
        (0 = none). The count is forgotten ``forget_s`` after the last failure (plus the lock)."""
        ...

    async def backoff_wait(self, key: str) -> float:
        """Seconds ``key`` stays locked (0 = free)."""
        ...

    async def backoff_clear(self, key: str) -> None: ...


__all__ = [
    "DRAIN_MESSAGE",
    "GatewayRecord",
    "Registry",
    "RegistryUnavailable",
    "Subscription",
    "gateway_control_channel",
]
