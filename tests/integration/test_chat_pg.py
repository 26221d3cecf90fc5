"""ChatService and AuthService on the real PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import jwt
import pytest

from chat_core.models import RoomEvent
from chat_core.service import ChatService
from shardchat.adapters.memory_registry import MemoryRegistry
from shardchat.adapters.pg_store import PgStore
from shardchat.config import Settings
from shardchat.errors import BadInput, ChatError, NotFound, Unauthenticated
from shardchat.migrate import load_migrations, migrate
from shardchat.store import NewMessage
from user_core.service import AuthService

pytestmark = pytest.mark.integration

KEYS = {"k1": "pg-test-key-Hv7Rm2Qx9Lc4Tn8Wb3Yk6Fp1Jd5Gs0Za"}


@pytest.fixture
async def store(fresh_pg_dsn: str) -> AsyncIterator[PgStore]:
    s = PgStore(fresh_pg_dsn, pool_size=10)
    await s.start()
    assert await migrate(s) == [v for v, _ in load_migrations("postgres")]  # a fresh database
    yield s
    await s.close()


@pytest.fixture
def auth(store: PgStore) -> AuthService:
    return AuthService(store, MemoryRegistry(), Settings(jwt_keys=KEYS))


async def users(auth: AuthService, n: int, prefix: str = "user") -> list[int]:
    # Registered through the service (argon2 in threads), so this is the real path.
    made = await asyncio.gather(
        *(auth.register(f"{prefix}{i}", "quiet harbor 1") for i in range(n))
    )
    return [t.user.id for t in made]


async def test_concurrent_senders_get_contiguous_seqs(store: PgStore, auth: AuthService) -> None:
    published: list[RoomEvent] = []

    def sink(events: Sequence[RoomEvent]) -> None:
        published.extend(events)

    chat = ChatService(store, on_commit=sink)
    # A second service with its own pool stands for a second process writing to the same room.
    other_store = PgStore(store.dsn, pool_size=4)
    await other_store.start()
    other = ChatService(other_store, on_commit=sink)
    ids = await users(auth, 20)
    room = await chat.create_room(ids[0], "hot", ids[1:])

    async def sender(i: int, u: int) -> list[int]:
        svc = chat if i % 2 else other
        return [
            (await svc.send_message(u, room.id, f"msg {k} from {u}", f"n{k}")).id for k in range(50)
        ]

    started = time.perf_counter()
    first = await asyncio.gather(*(sender(i, u) for i, u in enumerate(ids)))
    elapsed = time.perf_counter() - started
    print(f"1000 acknowledged sends from 20 senders in {elapsed:.3f}s")
    again = await asyncio.gather(*(sender(i + 1, u) for i, u in enumerate(ids)))  # retries
    assert again == first

    n = 20 + 1000
    events = await store.events_after(room.id, 0, 5000)  # the service pages by 1000
    assert [e.seq for e in events] == list(range(1, n + 1))  # contiguous, no gap, no dupe
    assert (await chat.get_room(ids[0], room.id)).last_seq == n
    creates = [e for e in events if e.type == "MESSAGE_CREATE"]
    assert len({e.data["id"] for e in creates}) == 1000
    assert sorted(e.seq for e in published) == list(range(1, n + 1))  # each handed off once
    # per-author order is kept: each sender's messages got increasing seqs
    for u in ids:
        mine = [int(e.data["nonce"][1:]) for e in creates if e.data["author_id"] == str(u)]
        assert mine == list(range(50))
    await other.close()
    await chat.close()
    await other_store.close()


async def test_concurrent_retries_store_one_message(store: PgStore, auth: AuthService) -> None:
    a, b = await users(auth, 2)
    chat = ChatService(store)
    other_store = PgStore(store.dsn, pool_size=4)
    await other_store.start()
    other = ChatService(other_store, group_commit=False)
    room = await chat.create_room(a, "r", [b])
    sends = [
        (chat if i % 2 else other).send_message(a, room.id, f"try {i}", "same-nonce")
        for i in range(30)
    ]
    results = await asyncio.gather(*sends)
    assert len({m.id for m in results}) == 1 and len({m.seq for m in results}) == 1
    events = await chat.events_after(room.id, 0, 100)
    assert [e.type for e in events] == ["MEMBER_JOIN", "MEMBER_JOIN", "MESSAGE_CREATE"]
    await chat.close()
    await other_store.close()


async def test_one_bad_send_does_not_fail_its_batch(store: PgStore, auth: AuthService) -> None:
    a, b = await users(auth, 2)
    chat = ChatService(store)
    room = await chat.create_room(a, "r")
    results = await asyncio.gather(
        chat.send_message(a, room.id, "ok 1", "1"),
        chat.send_message(b, room.id, "not a member", "2"),
        chat.send_message(a, 123_456_789, "no such room", "3"),
        chat.send_message(a, room.id, "ok 2", "4"),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == ["Message", "NotFound", "NotFound", "Message"]
    assert [e.seq for e in await chat.events_after(room.id, 0, 10)] == [1, 2, 3]
    await chat.close()


async def test_authorization_and_bad_input(store: PgStore, auth: AuthService) -> None:
    a, b = await users(auth, 2)
    chat = ChatService(store)
    room = await chat.create_room(a, "r")
    m = await chat.send_message(a, room.id, "hi", "n")
    cases: list[tuple[type[ChatError], object]] = [
        (NotFound, chat.send_message(a, 987_654_321, "hi", "x")),
        (NotFound, chat.send_message(b, room.id, "hi", "x")),
        (NotFound, chat.history(b, room.id, None, None)),
        (NotFound, chat.add_reaction(b, m.id, "👍")),
        (NotFound, chat.edit_message(b, m.id, "x")),
        (NotFound, chat.leave_room(b, room.id)),
        (NotFound, chat.join_room(b, room.id)),
        (NotFound, chat.get_room(a, 987_654_321)),
        (BadInput, chat.send_message(a, room.id, "", "x")),
        (BadInput, chat.send_message(a, room.id, "   ", "x")),
        (BadInput, chat.send_message(a, room.id, "x" * 4001, "x")),
        (BadInput, chat.send_message(a, room.id, "hi", "n" * 33)),
        (BadInput, chat.send_message(a, room.id, "hi", "")),
    ]
    for expected, call in cases:
        with pytest.raises(expected):
            await call  # type: ignore[misc]
    assert (await chat.get_room(a, room.id)).last_seq == 2  # nothing else was stored
    page, more = await chat.history(a, room.id, None, None)
    assert [x.id for x in page] == [m.id] and not more
    await chat.close()


async def test_tokens_on_postgres(store: PgStore, auth: AuthService) -> None:
    tokens = await auth.register("zoe", "quiet harbor 1")
    uid = auth.verify_access(tokens.access_token).user_id
    assert uid == tokens.user.id
    forged = jwt.encode(
        {"sub": str(uid), "iat": 1, "exp": 2**40, "typ": "access"},
        "not-the-key-but-long-enough-to-be-quiet",
        algorithm="HS256",
        headers={"kid": "k1"},
    )
    expired = AuthService(
        store, MemoryRegistry(), Settings(jwt_keys=KEYS), clock=lambda: time.time() - 3600
    )
    old = (await expired.login("zoe", "quiet harbor 1")).access_token
    for bad in (forged, old, tokens.access_token + "x"):
        with pytest.raises(Unauthenticated):
            auth.verify_access(bad)
    # rotation; reuse of the spent token revokes the whole family
    second = await auth.refresh(tokens.refresh_token)
    with pytest.raises(Unauthenticated):
        await auth.refresh(tokens.refresh_token)
    with pytest.raises(Unauthenticated):
        await auth.refresh(second.refresh_token)
    # concurrent use of one fresh token: exactly one rotation wins, the family then dies
    fresh = await auth.login("zoe", "quiet harbor 1")
    outcomes = await asyncio.gather(
        *(auth.refresh(fresh.refresh_token) for _ in range(4)), return_exceptions=True
    )
    assert sum(not isinstance(o, Exception) for o in outcomes) == 1
    assert await auth.logout(fresh.refresh_token) is False  # reuse already revoked it
    with pytest.raises(Unauthenticated):
        await auth.login("zoe", "wrong-password")
    with pytest.raises(BadInput):
        await auth.register("ZOE", "password2")


async def test_a_store_call_is_one_statement_and_a_dangling_transaction_is_still_rolled_back(
    fresh_pg_dsn: str,
) -> None:
    """The pool's release runs no session reset (asyncpg's default is a second round trip per
    call: advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL); the store keeps no session state, and
    a connection given back inside a transaction is still rolled back."""
    s = PgStore(fresh_pg_dsn, pool_size=1)
    await s.start()
    try:
        await migrate(s)
        sent: list[str] = []
        async with s.pool.acquire() as conn:
            conn.add_query_logger(lambda record: sent.append(record.query))
        assert await s.get_users([1]) == {}  # the first call also introspects bigint[]
        sent.clear()
        assert await s.get_users([1]) == {}
        assert len(sent) == 1 and "FROM users" in sent[0], sent

        conn = await s.pool.acquire()
        await conn.execute("BEGIN")
        await conn.execute("CREATE TABLE dangling (x int)")
        await s.pool.release(conn)
        async with s.pool.acquire() as again:
            assert not again.is_in_transaction()
            assert await again.fetchval("SELECT to_regclass('dangling')") is None
    finally:
        await s.close()


async def test_a_send_batch_of_a_few_rooms_is_one_statement_per_room_and_no_transaction(
    store: PgStore, auth: AuthService
) -> None:
    """Plain rows of up to four rooms: one statement per room (each its own implicit
    transaction), not the general path's BEGIN + four statements + COMMIT."""
    a, b = await users(auth, 2, "batch")
    chat = ChatService(store)
    rooms = [await chat.create_room(a, f"r{i}", [b]) for i in range(3)]
    small = PgStore(store.dsn, pool_size=3)  # every connection it can open gets a logger
    await small.start()
    sent: list[str] = []
    conns = [await small.pool.acquire() for _ in range(3)]
    for conn in conns:
        conn.add_query_logger(lambda record: sent.append(record.query))
        await small.pool.release(conn)
    rows = [NewMessage(9_000_000 + i, room.id, a, "hi", f"n{i}", 1) for i, room in enumerate(rooms)]
    out = await small.insert_messages(rows)
    await small.close()
    assert [o.status for o in out] == ["created"] * 3
    # (a new connection's first statement may also read type info: not counted)
    assert sum("INSERT INTO messages" in q for q in sent) == 3, sent
    assert not any(q.strip().upper().startswith(("BEGIN", "COMMIT")) for q in sent), sent
