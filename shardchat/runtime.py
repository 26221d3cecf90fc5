"""Wiring: build the adapters and services that Settings name, and run each service.

``Core`` is what every service process needs (store, event log, registry, object store, auth,
chat, files, the outbox publisher + relay and the file worker). In ``shardchat dev`` one Core
is shared by the edge, the router and a gateway in one process; in a cluster each service
process opens its own.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from dataclasses import dataclass

from chat_core.files.service import FileService
from chat_core.files.worker import FileWorker
from chat_core.history_cache import CachedHistory, HistoryCache
from chat_core.outbox import OutboxPublisher, OutboxRelay
from chat_core.service import ChatService
from shardchat.config import Settings
from shardchat.ephemeral import ReadStateNotifier
from shardchat.eventlog import EventLog
from shardchat.ids import IdGenerator
from shardchat.migrate import migrate
from shardchat.objectstore import ObjectStore, open_object_store
from shardchat.registry import Registry
from shardchat.store import Store, open_store
from user_core.service import AuthService
from user_core.tokens import weak_key_problem

log = logging.getLogger("shardchat")


def open_event_log(settings: Settings) -> EventLog:
    """The EventLog adapter Settings.event_log names (not started)."""
    if settings.event_log == "kafka":
        from shardchat.adapters.kafka_log import KafkaEventLog

        return KafkaEventLog(
            settings.kafka_bootstrap,
            settings.kafka_topic,
            settings.kafka_partitions,
            replication_factor=settings.kafka_replication_factor,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        )
    if settings.event_log == "redis-streams":
        from shardchat.adapters.redis_streams_log import RedisStreamsEventLog

        return RedisStreamsEventLog(
            settings.redis_streams_url or settings.redis_url,
            settings.kafka_topic,
            settings.kafka_partitions,
            max_len=settings.event_log_max_len,
        )
    if settings.event_log == "nats":
        from shardchat.adapters.nats_log import NatsEventLog

        return NatsEventLog(
            settings.nats_url,
            settings.kafka_topic,
            settings.kafka_partitions,
            max_len=settings.event_log_max_len,
        )
    from shardchat.adapters.memory_log import MemoryEventLog

    return MemoryEventLog(settings.kafka_partitions, settings.kafka_topic)


def open_registry(settings: Settings) -> Registry:
    """The Registry adapter Settings.registry names (not started)."""
    if settings.registry in ("redis", "redis-cluster"):
        from shardchat.adapters.redis_registry import RedisRegistry

        return RedisRegistry(settings.redis_url, cluster=settings.registry == "redis-cluster")
    from shardchat.adapters.memory_registry import MemoryRegistry

    return MemoryRegistry()


def open_history_cache(settings: Settings) -> CachedHistory | None:
    """The history cache, when ``settings.history_cache``: in the registry's Redis (single or
    Cluster), in memory with the memory registry."""
    if not settings.history_cache:
        return None
    cache: HistoryCache
    if settings.registry in ("redis", "redis-cluster"):
        from shardchat.adapters.redis_history_cache import RedisHistoryCache

        cache = RedisHistoryCache(
            settings.redis_url,
            cluster=settings.registry == "redis-cluster",
            ttl_s=settings.history_cache_ttl_s,
        )
    else:
        from shardchat.adapters.memory_history_cache import MemoryHistoryCache

        cache = MemoryHistoryCache(settings.history_cache_ttl_s)
    return CachedHistory(cache, settings.history_cache_events)


class InsecureSettings(Exception):
    """Settings that must not be used outside dev mode (the message says which and why)."""


def check_signing_keys(settings: Settings) -> None:
    """Refuse placeholder, known-default or short (< 32 bytes) JWT keys, and no keys at all
    (each process would sign with its own random key), unless ``settings.dev_mode``."""
    if settings.dev_mode:
        return
    if not settings.jwt_keys:
        raise InsecureSettings(
            "SHARDCHAT_JWT_KEYS is empty: set a key (see docs/security.md, 'Signing keys')"
        )
    for kid, secret in settings.jwt_keys.items():
        problem = weak_key_problem(kid, secret)
        if problem is not None:
            raise InsecureSettings(
                f"SHARDCHAT_JWT_KEYS: {problem}; make one with"
                " `python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )


@dataclass
class Core:
    settings: Settings
    store: Store
    event_log: EventLog
    registry: Registry
    objects: ObjectStore
    auth: AuthService
    chat: ChatService
    files: FileService
    publisher: OutboxPublisher
    relay: OutboxRelay
    file_worker: FileWorker

    @classmethod
    async def open(cls, settings: Settings, *, apply_migrations: bool = True) -> Core:
        """Start every adapter and service; on failure, close what was started. Refuses to
        start on missing or weak signing keys unless ``dev_mode`` (``check_signing_keys``)."""
        check_signing_keys(settings)
        ids = IdGenerator(settings.worker_id if settings.worker_id >= 0 else None)
        store = open_store(settings)
        event_log = open_event_log(settings)
        registry = open_registry(settings)
        objects = open_object_store(settings)
        await store.start()
        try:
            if apply_migrations:
                applied = await migrate(store)
                if applied:
                    log.info("migrations applied: %s", ", ".join(applied))
            await event_log.start()
            await registry.start()
            await objects.start()
        except BaseException:
            await store.close()
            raise
        publisher = OutboxPublisher(event_log, store)
        owner = f"{settings.gateway_id or 'proc'}-{secrets.token_hex(4)}"
        relay = OutboxRelay(
            event_log,
            store,
            owner=owner,
            after_ms=settings.outbox_relay_after_ms,
            publisher=publisher,
        )
        await publisher.start()
        await relay.start()
        auth = AuthService(store, registry, settings, ids=ids)
        chat = ChatService(
            store,
            settings,
            ids=ids,
            on_commit=publisher.submit,
            history_cache=open_history_cache(settings),
            on_read=ReadStateNotifier(registry),
        )
        worker = FileWorker(store, objects, settings, owner)
        files = FileService(store, objects, chat, settings, ids=ids, on_image=worker.wake)
        chat.files = files
        await worker.start()
        return cls(
            settings,
            store,
            event_log,
            registry,
            objects,
            auth,
            chat,
            files,
            publisher,
            relay,
            worker,
        )

    async def close(self) -> None:
        """Flush queued sends and publications, then close the adapters."""
        await self.chat.close()
        for closer in (self.file_worker.close, self.relay.close, self.publisher.close):
            with contextlib.suppress(Exception):
                await closer()
        await self.objects.close()
        await self.registry.close()
        await self.event_log.close()
        await self.store.close()
