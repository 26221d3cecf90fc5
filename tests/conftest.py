"""Shared fixtures: the real local engines of deploy/local (PostgreSQL, Redis, Kafka, s3proxy).

``pg_dsn``, ``redis_url``, ``kafka_bootstrap``, ``nats_url``, ``kafka3_bootstrap`` (the 3-node
cluster), ``redis_cluster_url`` and ``s3`` read SHARDCHAT_POSTGRES_DSN, SHARDCHAT_REDIS_URL,
SHARDCHAT_KAFKA_BOOTSTRAP, SHARDCHAT_NATS_URL, SHARDCHAT_KAFKA3_BOOTSTRAP,
SHARDCHAT_REDIS_CLUSTER_URL and SHARDCHAT_S3_ENDPOINT / _ACCESS_KEY / _SECRET_KEY (defaults: the
deploy/local ports) and FAIL, never skip, when the engine does not answer: a green run must have
exercised the real engines.
Start them with ``deploy/local/engines.sh up all`` (``deploy/local/test.sh`` does it for you).

Isolation helpers: ``fresh_pg_dsn`` (a new database per test, dropped after), ``make_topic`` /
``fresh_topic`` (new Kafka topics per test, deleted after), ``fresh_bucket`` (a new S3 bucket per
test, emptied and deleted after), ``unique_name``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]  # no stubs; pyproject may add an override
import pytest
import redis
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiokafka import AIOKafkaClient, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests import engine_control

DEFAULT_PG_DSN = "postgresql://shardchat@127.0.0.1:55432/shardchat"
DEFAULT_REDIS_URL = "redis://127.0.0.1:56379/0"
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:59092"
DEFAULT_NATS_URL = "nats://127.0.0.1:58222"
DEFAULT_KAFKA3_BOOTSTRAP = "127.0.0.1:58201,127.0.0.1:58202,127.0.0.1:58203"
DEFAULT_REDIS_CLUSTER_URL = "redis://127.0.0.1:58231/0"
DEFAULT_S3_ENDPOINT = "http://127.0.0.1:58100"
DEFAULT_TOPIC_PARTITIONS = 8

_HINT = "start the local engines with: bash deploy/local/engines.sh up all"


def _unreachable(what: str, where: str, exc: BaseException) -> None:
    pytest.fail(
        f"{what} is unreachable at {where}: {type(exc).__name__}: {exc}\n{_HINT}",
        pytrace=False,
    )


def unique_suffix() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A short name unique to this test run, safe for SQL identifiers, topics and Redis keys."""
    base = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:24]
    return f"t_{base}_{unique_suffix()}"


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------
def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def _pg_probe(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    dsn = os.environ.get("SHARDCHAT_POSTGRES_DSN", DEFAULT_PG_DSN)
    try:
        asyncio.run(_pg_probe(dsn))
    except Exception as exc:
        _unreachable("PostgreSQL", dsn, exc)
    return dsn


@pytest.fixture
async def fresh_pg_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """The DSN of a brand-new empty database, dropped (connections forced out) after the test."""
    name = f"t_{unique_suffix()}"
    admin = await asyncpg.connect(pg_dsn, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(pg_dsn, name)
    finally:
        admin = await asyncpg.connect(pg_dsn, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("SHARDCHAT_REDIS_URL", DEFAULT_REDIS_URL)
    try:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            assert client.ping()
        finally:
            client.close()
    except Exception as exc:
        _unreachable("Redis", url, exc)
    return url


@contextlib.contextmanager
def redis_database(redis_url: str, db: int) -> Iterator[str]:
    """The URL of Redis database ``db`` of the engine, flushed before and after: for a test that
    needs a whole database (a cluster's registry); give each such test module its own number."""
    url = redis_url.rsplit("/", 1)[0] + f"/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    url = os.environ.get("SHARDCHAT_REDIS_CLUSTER_URL", DEFAULT_REDIS_CLUSTER_URL)
    try:
        client = redis.RedisCluster.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            assert client.cluster_info()["cluster_state"] == "ok"
        finally:
            client.close()
    except Exception as exc:
        _unreachable("Redis Cluster", url, exc)
    return url


# ---------------------------------------------------------------------------------------------
# NATS
# ---------------------------------------------------------------------------------------------
async def _nats_probe(url: str) -> None:
    import nats

    nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0)
    try:
        info = await nc.jetstream().account_info()
        assert info is not None
    finally:
        await nc.close()


@pytest.fixture(scope="session")
def nats_url() -> str:
    url = os.environ.get("SHARDCHAT_NATS_URL", DEFAULT_NATS_URL)
    try:
        asyncio.run(_nats_probe(url))
    except Exception as exc:
        _unreachable("NATS JetStream", url, exc)
    return url


# ---------------------------------------------------------------------------------------------
# Kafka
# ---------------------------------------------------------------------------------------------
async def _kafka_probe(bootstrap: str) -> None:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(client.bootstrap(), 10)
        metadata = await asyncio.wait_for(client.fetch_all_metadata(), 10)
        assert metadata.brokers(), "the metadata response lists no broker"
    finally:
        await client.close()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = os.environ.get("SHARDCHAT_KAFKA_BOOTSTRAP", DEFAULT_KAFKA_BOOTSTRAP)
    try:
        asyncio.run(_kafka_probe(bootstrap))
    except Exception as exc:
        _unreachable("Kafka", bootstrap, exc)
    return bootstrap


@pytest.fixture(scope="session")
def kafka3_bootstrap() -> Iterator[str]:
    """The 3-node Kafka cluster of deploy/local, started for the tests that use it and stopped
    after them (three brokers idle cost a good part of a core: ``up all`` leaves them out)."""
    bootstrap = os.environ.get("SHARDCHAT_KAFKA3_BOOTSTRAP", DEFAULT_KAFKA3_BOOTSTRAP)
    engine_control.start_sync("kafka3")
    try:
        asyncio.run(_kafka_probe(bootstrap))
    except Exception as exc:
        _unreachable("the 3-node Kafka cluster", bootstrap, exc)
    yield bootstrap
    engine_control.stop_sync("kafka3")


async def wait_for_topic(bootstrap: str, topic: str, partitions: int, within: float = 30) -> None:
    """Wait until the broker's metadata shows ``topic`` with all partitions led."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            metadata = await client.fetch_all_metadata()
            parts = metadata.partitions_for_topic(topic) or set()
            if len(parts) == partitions and all(
                metadata.leader_for_partition(TopicPartition(topic, p)) not in (None, -1)
                for p in parts
            ):
                return
            if loop.time() > deadline:
                raise TimeoutError(f"topic {topic} not ready after {within}s: {sorted(parts)}")
            await asyncio.sleep(0.1)
    finally:
        await client.close()


MakeTopic = Callable[..., Awaitable[str]]


@pytest.fixture
async def make_topic(kafka_bootstrap: str) -> AsyncIterator[MakeTopic]:
    """``await make_topic(partitions=8)`` creates a new topic and returns its name.

    Every topic made is deleted after the test.
    """
    created: list[str] = []
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()

    async def _make(partitions: int = DEFAULT_TOPIC_PARTITIONS, prefix: str = "t") -> str:
        name = f"{prefix}-{unique_suffix()}"
        await admin.create_topics(
            [NewTopic(name=name, num_partitions=partitions, replication_factor=1)]
        )
        created.append(name)
        await wait_for_topic(kafka_bootstrap, name, partitions)
        return name

    try:
        yield _make
    finally:
        try:
            if created:
                await admin.delete_topics(created)
        except Exception:  # a test that stopped Kafka may leave it unreachable: not our failure
            pass
        finally:
            await admin.close()


@pytest.fixture
async def fresh_topic(make_topic: MakeTopic) -> str:
    """A new topic with ``DEFAULT_TOPIC_PARTITIONS`` partitions, deleted after the test."""
    return await make_topic(DEFAULT_TOPIC_PARTITIONS)


# ---------------------------------------------------------------------------------------------
# S3 (s3proxy)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Target:
    endpoint: str
    access_key: str
    secret_key: str

    def client(self) -> Any:
        """An aiobotocore S3 client context manager (checksums as the adapter sets them)."""
        config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 1},
            connect_timeout=3,
        )
        return get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=config,
        )


async def _s3_probe(target: S3Target) -> None:
    async with target.client() as client:
        await client.list_buckets()


@pytest.fixture(scope="session")
def s3() -> S3Target:
    target = S3Target(
        os.environ.get("SHARDCHAT_S3_ENDPOINT", DEFAULT_S3_ENDPOINT),
        os.environ.get("SHARDCHAT_S3_ACCESS_KEY", "shardchat"),
        os.environ.get("SHARDCHAT_S3_SECRET_KEY", "shardchat-local-secret"),
    )
    try:
        asyncio.run(_s3_probe(target))
    except Exception as exc:
        _unreachable("the S3 server (s3proxy)", target.endpoint, exc)
    return target


@pytest.fixture
async def fresh_bucket(s3: S3Target) -> AsyncIterator[str]:
    """The name of a bucket that does not exist yet (the adapter creates it), emptied and
    deleted after the test."""
    name = f"t-{unique_suffix()}"
    yield name
    try:
        async with s3.client() as client:
            listed = await client.list_objects_v2(Bucket=name)
            for item in listed.get("Contents", []):
                await client.delete_object(Bucket=name, Key=item["Key"])
            await client.delete_bucket(Bucket=name)
    except Exception:  # never created, or s3proxy stopped by the test: not our failure
        pass


# ---------------------------------------------------------------------------------------------
# Engines stopped by a test are started again whatever happened.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def _restart_stopped_engines() -> Iterator[None]:
    yield
    engine_control.start_stopped_sync()
