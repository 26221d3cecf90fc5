"""One trace from sendMessage to the gateway's delivery, with the real OpenTelemetry SDK.

edge ``sendMessage`` span -> ChatService ``chat.send_message`` span -> ``RoomEvent.trace`` stored
in ``room_events.trace`` -> Kafka-style record headers (fast path AND relay path) -> the
gateway's ``delivery_span``. Spans go to an InMemorySpanExporter through
``use_tracer_provider`` (never the process-wide provider, which OpenTelemetry lets a process set
only once). The store-level cases run on SQLite and on the local PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chat_core.models import RoomEvent, decode_event
from chat_core.outbox import OutboxPublisher, OutboxRelay, event_record
from chat_core.service import ChatService
from graphql_edge import EdgeSettings, create_app
from shardchat.adapters.memory_log import MemoryEventLog
from shardchat.adapters.memory_registry import MemoryRegistry
from shardchat.adapters.pg_store import PgStore
from shardchat.adapters.sqlite_store import SqliteStore
from shardchat.config import Settings
from shardchat.eventlog import LogRecord
from shardchat.migrate import migrate
from shardchat.registry import GatewayRecord
from shardchat.store import NewMessage, Store
from shardchat.tracing import (
    current_trace_headers,
    delivery_span,
    from_kafka_headers,
    start_span,
    tracing_enabled,
    use_tracer_provider,
)
from user_core.models import User
from user_core.service import AuthService

T0 = 1_750_000_000_000
PARTITIONS = 8
_ids = itertools.count(5000)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test, spans exported synchronously to memory; off again after."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        use_tracer_provider(None)
        provider.shutdown()


def trace_id_of(traceparent: str) -> int:
    """``00-<32 hex trace id>-<16 hex span id>-<flags>`` -> the trace id."""
    version, trace_hex, span_hex, _flags = traceparent.split("-")
    assert version == "00" and len(trace_hex) == 32 and len(span_hex) == 16
    return int(trace_hex, 16)


def span_id_of(traceparent: str) -> int:
    return int(traceparent.split("-")[2], 16)


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    finished = exporter.get_finished_spans()
    named = {s.name: s for s in finished}
    assert len(named) == len(finished), [s.name for s in finished]
    return named


def all_records(log: MemoryEventLog) -> list[LogRecord]:
    return [r for p in range(PARTITIONS) for r in log.records(p)]


def message_records(log: MemoryEventLog) -> list[LogRecord]:
    return [r for r in all_records(log) if decode_event(r.value).type == "MESSAGE_CREATE"]


# --- through the real edge app: sendMessage -> ChatService -> publisher -> memory log ----------
class OnePlacement:
    async def choose(self, key: str | None) -> GatewayRecord:
        return GatewayRecord(gateway_id="gw-1", url="ws://127.0.0.1:1/ws")


async def gql(
    http: httpx.AsyncClient, query: str, variables: dict[str, Any], token: str | None = None
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await http.post(
        "/graphql", json={"query": query, "variables": variables}, headers=headers
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


REGISTER = (
    "mutation($u: String!, $p: String!) { register(username: $u, password: $p) "
    "{ accessToken user { id } } }"
)
CREATE_ROOM = "mutation($n: String!) { createRoom(name: $n) { id } }"
SEND = (
    "mutation($r: ID!, $c: String!, $n: String!) "
    "{ sendMessage(roomId: $r, content: $c, nonce: $n) { id seq } }"
)


async def test_send_message_trace_reaches_record_headers_and_delivery(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    settings = Settings(sqlite_path=str(tmp_path / "edge.sqlite3"))
    store = SqliteStore(settings.sqlite_path)
    await store.start()
    await migrate(store)
    log = MemoryEventLog(PARTITIONS)
    publisher = OutboxPublisher(log, store)
    await publisher.start()
    chat = ChatService(store, settings, on_commit=publisher.submit)
    auth = AuthService(store, MemoryRegistry(), settings)
    app = create_app(settings, auth, chat, OnePlacement(), edge=EdgeSettings())
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as http:
            reg = await gql(http, REGISTER, {"u": "alice", "p": "correct horse battery"})
            token = reg["register"]["accessToken"]
            room = (await gql(http, CREATE_ROOM, {"n": "traced"}, token))["createRoom"]["id"]
            sent = await gql(http, SEND, {"r": room, "c": "hello", "n": "n-1"}, token)
        assert sent["sendMessage"]["seq"] == 2
        assert await publisher.flush(5)
    finally:
        await chat.close()
        await publisher.close()

    named = by_name(spans)
    send_span, chat_span = named["sendMessage"], named["chat.send_message"]
    assert chat_span.parent is not None
    assert chat_span.parent.span_id == send_span.context.span_id
    trace_id = send_span.context.trace_id

    # Fast path: the MESSAGE_CREATE record's headers name the chat span of this very trace.
    (record,) = message_records(log)
    headers = from_kafka_headers(record.headers)
    assert trace_id_of(headers["traceparent"]) == trace_id
    assert span_id_of(headers["traceparent"]) == chat_span.context.span_id
    # Events of untraced operations (createRoom's MEMBER_JOIN) travel without headers.
    assert [r.headers for r in all_records(log) if r is not record] == [()]

    # The gateway: decode the record and wrap the write in delivery_span(event.trace).
    event = decode_event(record.value)
    assert event.trace == headers
    with delivery_span(event.trace):
        pass
    deliver = by_name(spans)["gateway.deliver"]
    assert deliver.context.trace_id == trace_id
    assert deliver.parent is not None and deliver.parent.is_remote
    assert deliver.parent.span_id == chat_span.context.span_id
    assert deliver.kind is trace.SpanKind.CONSUMER

    # The stored row keeps it, so recovery (events_after) and the relay see the same context.
    stored = await store.events_after(int(room), 0, 10)
    assert [e.trace for e in stored] == [{}, headers]
    await store.close()


# --- store level, both dialects: the relay path keeps the trace ---------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(adapter, where). Sync on purpose, as in the Store contract suite: ``pg_dsn`` probes
    with asyncio.run, which cannot run inside an async fixture's loop."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "relay.sqlite3")
    return "postgres", str(request.getfixturevalue("fresh_pg_dsn"))


@pytest.fixture
async def store(store_target: tuple[str, str]) -> AsyncIterator[Store]:
    kind, where = store_target
    s: Store = SqliteStore(where) if kind == "sqlite" else PgStore(where, pool_size=2)
    await s.start()
    await migrate(s)
    try:
        yield s
    finally:
        await s.close()


async def _room_with_user(store: Store) -> tuple[int, int]:
    uid, rid = next(_ids), next(_ids)
    assert await store.create_user(User(uid, f"u{uid}", T0), "x")
    await store.create_room(rid, "room", T0, [uid])
    return uid, rid


async def test_relay_publishes_the_stored_trace(store: Store, spans: InMemorySpanExporter) -> None:
    uid, rid = await _room_with_user(store)
    log = MemoryEventLog(PARTITIONS)
    lost: list[RoomEvent] = []
    # The fast-path hand-off is lost (the writer died after commit): only the relay publishes.
    chat = ChatService(store, on_commit=lost.extend)
    try:
        with start_span("gateway.SEND") as root:
            await chat.send_message(uid, rid, "traced", "n-1")
        await chat.send_message(uid, rid, "not traced", "n-2")  # outside any span: a new trace
    finally:
        await chat.close()
    assert isinstance(root, trace.Span)
    trace_id = root.get_span_context().trace_id

    pending = await store.pending_events(T0 + 10**12, 100)
    traced, untraced = [e for e in pending if e.type == "MESSAGE_CREATE"]
    assert trace_id_of(traced.trace["traceparent"]) == trace_id
    assert trace_id_of(untraced.trace["traceparent"]) != trace_id  # chat.send_message as root
    assert [e.trace for e in lost if e.type == "MESSAGE_CREATE"] == [traced.trace, untraced.trace]

    await asyncio.sleep(0.002)  # after_ms=0 takes rows created strictly before "now"
    relay = OutboxRelay(log, store, owner="relay-1", after_ms=0)
    assert await relay.run_once() == 3  # MEMBER_JOIN + 2 MESSAGE_CREATE
    records = message_records(log)
    assert [from_kafka_headers(r.headers) for r in records] == [traced.trace, untraced.trace]
    assert [decode_event(r.value).trace for r in records] == [traced.trace, untraced.trace]


async def test_store_round_trips_trace_and_null(store: Store) -> None:
    uid, rid = await _room_with_user(store)
    carried = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "congo=t61rcWkgMzE",
    }
    outcomes = await store.insert_messages(
        [
            NewMessage(next(_ids), rid, uid, "a", "n-a", T0, carried),
            NewMessage(next(_ids), rid, uid, "b", "n-b", T0),
        ]
    )
    assert [o.event.trace for o in outcomes if o.event is not None] == [carried, {}]
    after = await store.events_after(rid, 1, 10)
    pending = [e for e in await store.pending_events(T0 + 1, 100) if e.room_id == rid]
    for events in (after, pending[1:]):
        assert [e.trace for e in events] == [carried, {}]
    # event_record keeps only the W3C fields as headers.
    assert from_kafka_headers(event_record(after[0])[2]) == carried
    assert event_record(after[1])[2] == ()


# --- tracing off: nothing is allocated or exported ---------------------------------------------
async def test_off_means_no_spans_no_headers(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_tracer_provider(provider)
    use_tracer_provider(None)  # switched off again: the helpers must not reach the SDK
    assert not tracing_enabled()
    assert start_span("a") is start_span("b")  # one shared no-op, no allocation per call
    assert delivery_span({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is start_span(
        "c"
    )
    with provider.get_tracer("outer").start_as_current_span("foreign"):
        # Even inside someone else's span, the off switch keeps headers out of our rows.
        assert current_trace_headers() == {}

    store = SqliteStore(str(tmp_path / "off.sqlite3"))
    await store.start()
    await migrate(store)
    log = MemoryEventLog(PARTITIONS)
    publisher = OutboxPublisher(log, store)
    await publisher.start()
    chat = ChatService(store, on_commit=publisher.submit)
    try:
        uid, rid = await _room_with_user(store)
        await chat.send_message(uid, rid, "hi", "n-1")
        assert await publisher.flush(5)
        assert [r.headers for r in message_records(log)] == [()]
        assert [e.trace for e in await store.events_after(rid, 0, 10)] == [{}, {}]
    finally:
        await chat.close()
        await publisher.close()
        await store.close()
    assert [s.name for s in exporter.get_finished_spans()] == ["foreign"]


def test_delivery_span_without_context_is_a_no_op(spans: InMemorySpanExporter) -> None:
    with delivery_span({}):
        pass
    assert spans.get_finished_spans() == ()


def _run(code: str) -> subprocess.CompletedProcess[str]:
    # configure_tracing reads the process-wide provider: a fresh interpreter per case.
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_configure_decides_once_from_the_installed_provider() -> None:
    result = _run(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from shardchat.tracing import configure_tracing, tracing_enabled
        configure_tracing("edge", "")
        assert not tracing_enabled()
        # An SDK provider installed by someone else (opentelemetry-instrument) turns ours on.
        trace.set_tracer_provider(TracerProvider())
        assert not tracing_enabled()  # not until configure looks again
        configure_tracing("edge", "")
        assert tracing_enabled()
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
