"""One contract suite for the Store port, run against SQLite (tmp_path) and PostgreSQL (a fresh
database per test, from tests/conftest.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from chat_core.models import ReadState, RoomEvent, Upload
from shardchat.adapters.pg_store import PgStore
from shardchat.adapters.sqlite_store import SqliteStore
from shardchat.migrate import load_migrations, migrate
from shardchat.store import AttachConflict, NewMessage, Store
from user_core.models import User

T0 = 1_750_000_000_000  # a fixed "now" (ms) so event data is predictable
_ids = itertools.count(1_000)


def nid() -> int:
    return next(_ids)


@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(adapter, where). Sync on purpose: ``pg_dsn`` probes with asyncio.run, which cannot run
    inside an async fixture's loop, so the database is requested from here."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "store.sqlite3")
    return "postgres", str(request.getfixturevalue("fresh_pg_dsn"))


@pytest.fixture
async def store(store_target: tuple[str, str]) -> AsyncIterator[Store]:
    kind, where = store_target
    s: Store = SqliteStore(where) if kind == "sqlite" else PgStore(where, pool_size=8)
    await s.start()
    await migrate(s)
    try:
        yield s
    finally:
        await s.close()


async def make_users(store: Store, *names: str) -> list[int]:
    ids = []
    for name in names:
        uid = nid()
        assert await store.create_user(User(uid, name, T0), "hash-" + name)
        ids.append(uid)
    return ids


async def make_room(store: Store, *members: int) -> int:
    rid = nid()
    await store.create_room(rid, "room", T0, list(members))
    return rid


def msg(room_id: int, author: int, nonce: str, content: str = "hi") -> NewMessage:
    return NewMessage(nid(), room_id, author, content, nonce, T0)


# --- migrations -----------------------------------------------------------------------------------
async def test_migrate_is_idempotent_and_recorded(store: Store) -> None:
    assert await migrate(store) == []  # the fixture applied everything already
    versions = [v for v, _ in load_migrations(store.dialect)]
    assert versions and versions[0].startswith("0001_")
    assert await store.apply_migrations([(versions[0], "THIS IS NOT SQL")]) == []


# --- users and refresh tokens ---------------------------------------------------------------------
async def test_usernames_are_unique_case_insensitively(store: Store) -> None:
    (alice,) = await make_users(store, "Alice")
    assert not await store.create_user(User(nid(), "alice", T0), "x")
    rec = await store.get_user_by_name("ALICE")
    assert rec is not None and rec.user == User(alice, "Alice", T0)
    assert rec.password_hash == "hash-Alice"
    assert await store.get_user_by_name("bob") is None
    assert await store.get_users([alice, 424242]) == {alice: User(alice, "Alice", T0)}
    assert await store.get_users([]) == {}


async def test_refresh_rotation_and_reuse_revokes_family(store: Store) -> None:
    (u,) = await make_users(store, "carol")
    await store.create_refresh_token(b"h1", u, "fam1", T0, T0 + 1000)
    ok = await store.rotate_refresh_token(b"h1", b"h2", T0 + 1, T0 + 2000)
    assert (ok.status, ok.user_id) == ("ok", u)
    # h1 used again: theft; the family dies, so h2 (the legitimate successor) dies too
    assert (await store.rotate_refresh_token(b"h1", b"h3", T0 + 2, T0 + 2000)).status == "reused"
    assert (await store.rotate_refresh_token(b"h2", b"h4", T0 + 3, T0 + 2000)).status == "revoked"
    assert (await store.rotate_refresh_token(b"nope", b"h5", T0, T0)).status == "unknown"


async def test_refresh_expiry_and_logout(store: Store) -> None:
    (u,) = await make_users(store, "dave")
    await store.create_refresh_token(b"e1", u, "famE", T0, T0 + 10)
    assert (await store.rotate_refresh_token(b"e1", b"e2", T0 + 10, T0 + 99)).status == "expired"
    await store.create_refresh_token(b"l1", u, "famL", T0, T0 + 1000)
    assert await store.revoke_refresh_family(b"l1", T0)
    assert not await store.revoke_refresh_family(b"l1", T0)  # already revoked
    assert not await store.revoke_refresh_family(b"unknown", T0)
    assert (await store.rotate_refresh_token(b"l1", b"l2", T0, T0 + 99)).status == "revoked"


async def test_concurrent_refresh_of_one_token_succeeds_once(store: Store) -> None:
    (u,) = await make_users(store, "erin")
    await store.create_refresh_token(b"c1", u, "famC", T0, T0 + 1000)
    results = await asyncio.gather(
        *(store.rotate_refresh_token(b"c1", f"n{i}".encode(), T0, T0 + 999) for i in range(5))
    )
    assert sorted(r.status for r in results) == ["ok", "reused", "revoked", "revoked", "revoked"]


# --- rooms and members ----------------------------------------------------------------------------
async def test_create_room_emits_one_member_join_per_member(store: Store) -> None:
    a, b = await make_users(store, "ann", "ben")
    rid = nid()
    room, events = await store.create_room(rid, "general", T0, [a, b, a])
    assert (room.id, room.name, room.last_seq, room.created_at_ms) == (rid, "general", 2, T0)
    assert [(e.type, e.seq) for e in events] == [("MEMBER_JOIN", 1), ("MEMBER_JOIN", 2)]
    assert events[1].data == {"room_id": str(rid), "seq": 2, "user_id": str(b)}
    assert await store.events_after(rid, 0, 10) == events
    assert await store.members_of(rid) == [a, b]
    assert await store.get_room(rid) == room
    assert await store.get_room(nid()) is None


async def test_membership_changes(store: Store) -> None:
    a, b = await make_users(store, "cat", "dan")
    rid = await make_room(store, a)
    added = await store.add_member(rid, b, T0)
    assert added is not None
    room, event = added
    assert room.last_seq == 2 and event is not None and event.type == "MEMBER_JOIN"
    again = await store.add_member(rid, b, T0)
    assert again is not None and again[1] is None and again[0].last_seq == 2
    assert await store.add_member(nid(), b, T0) is None
    assert await store.is_member(rid, b)
    assert [r.id for r in await store.rooms_of(b)] == [rid]
    leave = await store.remove_member(rid, b, T0 + 5)
    assert leave is not None and (leave.type, leave.seq) == ("MEMBER_LEAVE", 3)
    assert leave.data == {"room_id": str(rid), "seq": 3, "user_id": str(b)}
    assert await store.remove_member(rid, b, T0) is None
    assert not await store.is_member(rid, b)
    assert await store.rooms_of(b) == []


# --- messages -------------------------------------------------------------------------------------
async def test_insert_messages_outcomes_in_one_batch(store: Store) -> None:
    a, b = await make_users(store, "eve", "fay")
    rid = await make_room(store, a)  # seq 1 = MEMBER_JOIN
    first = msg(rid, a, "n1", "hello")
    rows = [
        first,
        msg(rid, a, "n2"),
        msg(rid, a, "n1", "again"),
        msg(rid, b, "n3"),
        msg(nid(), a, "n4"),
    ]
    out = await store.insert_messages(rows)
    assert [o.status for o in out] == ["created", "created", "duplicate", "not_member", "no_room"]
    m1 = out[0].message
    assert m1 is not None and (m1.id, m1.seq, m1.content, m1.nonce) == (first.id, 2, "hello", "n1")
    assert out[2].message == m1 and out[2].event is None
    assert out[1].message is not None and out[1].message.seq == 3
    e = out[0].event
    assert e is not None
    assert e == RoomEvent(rid, 2, "MESSAGE_CREATE", e.data, T0)
    assert e.data == {
        "room_id": str(rid),
        "seq": 2,
        "id": str(first.id),
        "author_id": str(a),
        "content": "hello",
        "nonce": "n1",
        "created_at": "2025-06-15T15:06:40.000Z",
        "mentions": [],
    }
    assert (await store.get_room(rid)).last_seq == 3  # type: ignore[union-attr]
    # a retry in a later batch returns the first message and stores nothing
    (retry,) = await store.insert_messages([msg(rid, a, "n1", "third time")])
    assert retry.status == "duplicate" and retry.message == m1
    assert [ev.seq for ev in await store.events_after(rid, 0, 100)] == [1, 2, 3]
    assert await store.get_message(first.id) == m1


async def test_insert_messages_outcomes_in_one_room(store: Store) -> None:
    """A batch of one room (PostgreSQL writes it as one statement): created rows numbered in
    batch order, a stored (author, nonce) and a non-member skipped without a gap."""
    a, b = await make_users(store, "ivy", "jon")
    rid = await make_room(store, a)  # seq 1
    (old,) = await store.insert_messages([msg(rid, a, "k0", "stored before")])  # seq 2
    assert old.message is not None
    rows = [
        msg(rid, a, "k1", "one"),
        msg(rid, b, "k2", "not a member"),
        msg(rid, a, "k0", "a retry"),
        msg(rid, a, "k3", '100% "quoted" \u00e9'),
        msg(rid, a, "k1", "same nonce later in the batch"),
    ]
    out = await store.insert_messages(rows)
    assert [o.status for o in out] == ["created", "not_member", "duplicate", "created", "duplicate"]
    assert [o.message.seq for o in out if o.message is not None] == [3, 2, 4, 3]
    assert out[2].message == old.message and out[4].message == out[0].message
    events = await store.events_after(rid, 0, 100)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[3].data == out[3].event.data  # type: ignore[union-attr]
    assert events[3].data["content"] == '100% "quoted" \u00e9' and events[3].data["seq"] == 4
    assert (await store.get_room(rid)).last_seq == 4  # type: ignore[union-attr]


async def test_insert_messages_outcomes_across_a_few_rooms(store: Store) -> None:
    """A batch over a few rooms (PostgreSQL writes one statement per room, concurrently):
    each room numbered on its own, a nonce stored from another room is a duplicate, a
    non-member and a missing room are refused, and nothing leaves a gap."""
    a, b = await make_users(store, "kit", "lou")
    r1, r2, r3 = await make_room(store, a), await make_room(store, a, b), await make_room(store, b)
    (old,) = await store.insert_messages([msg(r2, a, "s0", "stored in r2")])  # r2: seq 3
    rows = [
        msg(r1, a, "s1"),
        msg(r2, b, "s2"),
        msg(r3, a, "s3", "not a member of r3"),
        msg(r1, a, "s0", "retry of the r2 message, sent to r1"),
        msg(r3, b, "s4"),
        msg(r2, a, "s5"),
        msg(nid(), a, "s6"),
    ]
    out = await store.insert_messages(rows)
    statuses = [o.status for o in out]
    assert statuses == [
        "created", "created", "not_member", "duplicate", "created", "created", "no_room",
    ]  # fmt: skip
    assert out[3].message == old.message
    seqs = [(o.message.room_id, o.message.seq) for o in out if o.status == "created"]  # type: ignore[union-attr]
    assert seqs == [(r1, 2), (r2, 4), (r3, 2), (r2, 5)]
    for room, last in ((r1, 2), (r2, 5), (r3, 2)):
        assert [e.seq for e in await store.events_after(room, 0, 100)] == list(range(1, last + 1))
        assert (await store.get_room(room)).last_seq == last  # type: ignore[union-attr]


async def test_concurrent_batches_over_shared_rooms_get_contiguous_seqs(store: Store) -> None:
    users = await make_users(store, *(f"v{i}" for i in range(4)))
    rooms = [await make_room(store, *users) for _ in range(3)]  # seqs 1-4: joins

    async def writer(u: int) -> None:
        for i in range(8):  # every batch touches two or three rooms, in varying order
            picked = rooms[i % 3 :] + rooms[: i % 3]
            await store.insert_messages([msg(r, u, f"{r}-{i}") for r in picked[: 2 + i % 2]])

    await asyncio.gather(*(writer(u) for u in users))
    total = 0
    for room in rooms:
        events = await store.events_after(room, 0, 1000)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        created = sum(e.type == "MESSAGE_CREATE" for e in events)
        assert (await store.get_room(room)).last_seq == 4 + created  # type: ignore[union-attr]
        total += created
    assert total == 4 * sum(2 + i % 2 for i in range(8))


async def test_concurrent_inserts_get_contiguous_seqs(store: Store) -> None:
    users = await make_users(store, *(f"w{i}" for i in range(5)))
    rid = await make_room(store, *users)

    async def writer(u: int) -> None:
        for i in range(10):
            await store.insert_messages([msg(rid, u, f"x{i}"), msg(rid, u, f"x{i}")])

    await asyncio.gather(*(writer(u) for u in users), *(writer(u) for u in users))
    events = await store.events_after(rid, 0, 1000)
    assert [e.seq for e in events] == list(range(1, 5 + 50 + 1))
    assert sum(e.type == "MESSAGE_CREATE" for e in events) == 50
    assert (await store.get_room(rid)).last_seq == 55  # type: ignore[union-attr]


async def test_edit_delete_and_reactions(store: Store) -> None:
    a, b = await make_users(store, "gus", "hal")
    rid = await make_room(store, a, b)  # seqs 1, 2
    (sent,) = await store.insert_messages([msg(rid, a, "k", "v1")])  # seq 3
    assert sent.message is not None
    mid = sent.message.id
    edited = await store.edit_message(mid, "v2", T0 + 1234)
    assert edited is not None
    m, e = edited
    assert (m.content, m.edited_at_ms, e.type, e.seq) == ("v2", T0 + 1234, "MESSAGE_UPDATE", 4)
    assert e.data == {
        "room_id": str(rid),
        "seq": 4,
        "id": str(mid),
        "content": "v2",
        "edited_at": "2025-06-15T15:06:41.234Z",
    }
    add = await store.add_reaction(mid, b, "👍", T0)
    assert add is not None and (add.type, add.seq) == ("REACTION_ADD", 5)
    assert add.data == {
        "room_id": str(rid),
        "seq": 5,
        "message_id": str(mid),
        "user_id": str(b),
        "emoji": "👍",
    }
    assert await store.add_reaction(mid, b, "👍", T0) is None  # no-op, no event
    assert await store.add_reaction(mid, a, "👍", T0 + 1) is not None
    assert await store.add_reaction(mid, a, "🎉", T0 + 2) is not None
    counts = await store.reaction_counts([mid, 123], a)
    assert [(c.emoji, c.count, c.me) for c in counts[mid]] == [("👍", 2, True), ("🎉", 1, True)]
    counts_b = await store.reaction_counts([mid], b)
    assert [(c.emoji, c.me) for c in counts_b[mid]] == [("👍", True), ("🎉", False)]
    rem = await store.remove_reaction(mid, a, "🎉", T0)
    assert rem is not None and rem.type == "REACTION_REMOVE" and rem.seq == 8
    assert await store.remove_reaction(mid, a, "🎉", T0) is None
    deleted = await store.delete_message(mid, T0)
    assert deleted is not None and deleted.type == "MESSAGE_DELETE"
    assert deleted.data == {"room_id": str(rid), "seq": 9, "id": str(mid)}
    tomb = await store.get_message(mid)
    assert tomb is not None and tomb.deleted and tomb.content == ""
    assert await store.delete_message(mid, T0) is None
    assert await store.edit_message(mid, "v3", T0) is None
    assert await store.add_reaction(mid, b, "x", T0) is None
    assert await store.reaction_counts([mid], a) == {}
    assert [ev.seq for ev in await store.events_after(rid, 0, 100)] == list(range(1, 10))
    assert [ev.seq for ev in await store.events_after(rid, 7, 1)] == [8]


async def test_list_messages_by_cursor(store: Store) -> None:
    (a,) = await make_users(store, "ivy")
    rid = await make_room(store, a)
    out = await store.insert_messages([msg(rid, a, f"m{i}", f"c{i}") for i in range(5)])
    ids = [o.message.id for o in out if o.message]
    assert [m.id for m in await store.list_messages(rid, None, None, 3)] == ids[::-1][:3]
    assert [m.id for m in await store.list_messages(rid, ids[3], None, 10)] == ids[:3][::-1]
    assert [m.id for m in await store.list_messages(rid, None, ids[1], 2)] == ids[2:4]
    assert await store.list_messages(nid(), None, None, 10) == []


async def test_mentions_keep_members_only(store: Store) -> None:
    a, b, c, outsider = await make_users(store, "lea", "max", "ned", "oli")
    rid = await make_room(store, a, b, c)
    row = NewMessage(nid(), rid, a, "@max @ned @oli", "m1", T0, mentions=(outsider, c, b))
    plain = msg(rid, a, "m2")
    (sent, other) = await store.insert_messages([row, plain])
    assert sent.message is not None and sent.event is not None
    assert sent.message.mentions == (b, c)  # the non-member is dropped; ascending ids
    assert sent.event.data["mentions"] == [str(b), str(c)]
    assert other.message is not None and other.message.mentions == ()
    assert await store.mentions_of([row.id, plain.id, nid()]) == {row.id: (b, c)}
    (dup,) = await store.insert_messages([row])  # a retry stores no second mention
    assert dup.status == "duplicate"
    states = await store.read_states(b, [rid], 1000)
    assert states[rid].mention_count == 1


async def test_read_states(store: Store) -> None:
    a, b, late = await make_users(store, "pam", "quin", "ros")
    rid = await make_room(store, a, b)  # seqs 1, 2 (MEMBER_JOINs)
    other = await make_room(store, a)
    assert await store.read_states(b, [rid, other, nid()], 1000) == {
        rid: ReadState(rid, 0, 0, 0, False)  # rooms the user is not in are left out
    }
    out = await store.insert_messages([msg(rid, a, f"a{i}") for i in range(3)])  # seqs 3-5
    await store.insert_messages([msg(rid, b, "b0")])  # seq 6: b's own, never unread to b
    mention = NewMessage(nid(), rid, a, "@quin", "a3", T0, mentions=(b,))
    await store.insert_messages([mention])  # seq 7
    assert (await store.read_states(b, [rid], 1000))[rid] == ReadState(rid, 0, 4, 1, False)
    assert (await store.read_states(b, [rid], 2))[rid] == ReadState(rid, 0, 2, 1, False)
    assert (await store.read_states(a, [rid], 1000))[rid].unread_count == 1  # b's message
    third = out[2].message
    assert third is not None and third.seq == 5
    assert await store.mark_read(b, rid, 5) == 5
    assert await store.mark_read(b, rid, 3) == 5  # never moves back
    assert (await store.read_states(b, [rid], 1000))[rid] == ReadState(rid, 5, 1, 1, False)
    await store.set_muted(b, rid, True)
    assert await store.mark_read(b, rid, 7) == 7
    assert (await store.read_states(b, [rid], 1000))[rid] == ReadState(rid, 7, 0, 0, True)
    await store.set_muted(b, rid, False)
    assert (await store.read_states(b, [rid], 1000))[rid].muted is False
    # a member who joins later owes nothing sent before they joined
    joined = await store.add_member(rid, late, T0 + 10)
    assert joined is not None
    assert (await store.read_states(late, [rid], 1000))[rid].unread_count == 0
    await store.insert_messages([NewMessage(nid(), rid, a, "welcome", "a4", T0 + 20)])
    assert (await store.read_states(late, [rid], 1000))[rid].unread_count == 1


async def test_users_by_name_and_prefix(store: Store) -> None:
    ids = await make_users(store, "Sam", "sammy", "sa_m", "saxo", "tom")
    assert await store.user_ids_by_name(["SAM", "tom", "nobody"]) == {"sam": ids[0], "tom": ids[4]}
    assert await store.user_ids_by_name([]) == {}
    found = await store.search_users("sa", 10)
    assert [u.username for u in found] == ["sa_m", "Sam", "sammy", "saxo"]
    assert [u.username for u in await store.search_users("SAM", 10)] == ["Sam", "sammy"]
    assert [u.username for u in await store.search_users("sa_", 10)] == ["sa_m"]  # "_" literal
    assert len(await store.search_users("s", 2)) == 2
    assert await store.search_users("zz", 10) == []


# --- outbox ---------------------------------------------------------------------------------------
async def test_pending_events_and_mark_published(store: Store) -> None:
    a, b = await make_users(store, "jo", "kim")
    r1 = await make_room(store, a)
    r2 = await make_room(store, b, a)
    pending = await store.pending_events(T0 + 1, 100)
    assert [(e.room_id, e.seq) for e in pending] == sorted([(r1, 1), (r2, 1), (r2, 2)])
    assert await store.pending_events(T0, 100) == []  # created_before is exclusive
    assert len(await store.pending_events(T0 + 1, 1)) == 1
    await store.mark_published([(r2, 1), (r2, 2)])
    await store.mark_published([(r2, 1)])  # idempotent
    assert [(e.room_id, e.seq) for e in await store.pending_events(T0 + 1, 100)] == [(r1, 1)]
    assert len(await store.events_after(r2, 0, 10)) == 2  # history keeps published events


async def test_leases(store: Store) -> None:
    assert await store.acquire_lease("relay-0", "a", 60_000)
    assert await store.acquire_lease("relay-0", "a", 60_000)  # renew
    assert not await store.acquire_lease("relay-0", "b", 60_000)
    assert await store.acquire_lease("relay-1", "b", 60_000)
    assert await store.acquire_lease("relay-2", "a", 1)
    await asyncio.sleep(0.01)
    assert await store.acquire_lease("relay-2", "b", 60_000)  # expired: taken over
    assert not await store.acquire_lease("relay-2", "a", 60_000)


# --- access model, 2FA and sessions (issue 11) ----------------------------------------------------
async def test_roles_invitations_and_ownership_hand_over(store: Store) -> None:
    a, b, c, d = await make_users(store, "own", "adm", "mem", "inv")
    rid = await make_room(store, a, b, c)
    assert await store.member_roles(rid) == [(a, "owner"), (b, "member"), (c, "member")]
    assert await store.set_member_role(rid, b, "admin")
    assert not await store.set_member_role(rid, d, "admin")
    assert await store.create_invitations(rid, a, [d, c, d], T0) == [d]  # members skipped
    assert await store.create_invitations(rid, a, [d], T0) == []
    (inv,) = await store.invitations_of(d)
    assert (inv.room_id, inv.room_name, inv.user_id, inv.inviter_id) == (rid, "room", d, a)
    assert await store.has_invitation(rid, d)
    assert await store.add_member(rid, d, T0) is not None
    assert not await store.has_invitation(rid, d)  # joining spends the invitation
    leave = await store.remove_member(rid, a, T0, removed_by=None)
    assert leave is not None and "removed_by" not in leave.data
    assert await store.member_role(rid, b) == "owner"  # the admin takes over
    kicked = await store.remove_member(rid, c, T0, removed_by=b)
    assert kicked is not None and kicked.data["removed_by"] == str(b)
    assert await store.member_role(rid, c) is None
    assert await store.shared_with(b, [c, d, a]) == {d}
    assert not await store.delete_invitation(rid, d)


async def test_public_rooms_and_direct_rooms(store: Store) -> None:
    a, b = await make_users(store, "pa", "pb")
    public, _ = await store.create_room(nid(), "lobby", T0, [a], public=True)
    await make_room(store, a)
    assert public.public and [r.id for r in await store.public_rooms(None, 10)] == [public.id]
    assert await store.public_rooms(public.id, 10) == []
    rooms = await asyncio.gather(
        *(store.open_direct_room(nid(), x, y, "pa, pb", T0) for x, y in [(a, b), (b, a)] * 4)
    )
    assert len({r.id for r, _ in rooms}) == 1 and rooms[0][0].direct
    assert sorted(len(events) for _, events in rooms) == [0] * 7 + [2]
    assert await store.member_roles(rooms[0][0].id) == [(a, "member"), (b, "member")]


async def test_totp_steps_recovery_codes_and_passwords(store: Store) -> None:
    (a,) = await make_users(store, "tfa")
    await store.set_totp(a, "SECRET", False)
    record = await store.get_user_record(a)
    assert record is not None and (record.totp_secret, record.totp_enabled) == ("SECRET", False)
    await store.set_totp(a, "SECRET", True)
    assert (await store.get_user_by_name("TFA")).totp_enabled  # type: ignore[union-attr]
    assert await store.use_totp_step(a, 100)
    results = await asyncio.gather(*(store.use_totp_step(a, 101) for _ in range(4)))
    assert sorted(results) == [False, False, False, True]  # one winner, the rest are replays
    assert not await store.use_totp_step(a, 99)
    await store.set_recovery_codes(a, [b"h1", b"h2"])
    assert await store.use_recovery_code(a, b"h1", T0)
    assert not await store.use_recovery_code(a, b"h1", T0)
    assert await store.recovery_codes_left(a) == 1
    await store.set_totp(a, None, False)
    assert await store.recovery_codes_left(a) == 0
    await store.set_password_hash(a, "new-hash")
    assert (await store.get_user_record(a)).password_hash == "new-hash"  # type: ignore[union-attr]


async def test_sessions_listing_and_revocation(store: Store) -> None:
    (a,) = await make_users(store, "sess")
    for fam in ("f1", "f2"):
        await store.create_refresh_token(fam.encode(), a, fam, T0, T0 + 10_000, f"client {fam}")
    await store.create_refresh_token(b"old", a, "f0", T0 - 20_000, T0 - 10_000)  # expired
    listed = await store.list_sessions(a, T0)
    assert [(s.id, s.client) for s in listed] == [("f1", "client f1"), ("f2", "client f2")]
    assert await store.refresh_family(b"f1") == (a, "f1")
    assert await store.revoke_session(a, "f1", T0) and not await store.revoke_session(a, "f1", T0)
    assert not await store.revoke_session(a + 1, "f2", T0)  # not theirs
    assert sorted(await store.revoke_all_sessions(a, T0)) == ["f0", "f2"]
    assert await store.list_sessions(a, T0) == []


# --- uploads and attachments ----------------------------------------------------------------------
HOUR = 3_600_000


def upload(owner: int, room: int, size: int = 100, **fields: Any) -> Upload:
    values: dict[str, Any] = {
        "id": nid(),
        "owner_id": owner,
        "room_id": room,
        "filename": "f.png",
        "content_type": "image/png",
        "size": size,
        "sha256": "0" * 64,
        "created_at_ms": T0,
        "put_expires_at_ms": T0 + 600_000,
        "expires_at_ms": T0 + HOUR,
    }
    values.update(fields)
    return Upload(**values)


async def ready_upload(store: Store, owner: int, room: int, **fields: Any) -> Upload:
    u = upload(owner, room, **fields)
    assert (await store.create_upload(u, 10**9))[0]
    assert await store.finish_upload(u.id, "image/png", 90, 4, 3, "pending")
    return (await store.get_uploads([u.id]))[u.id]


async def test_upload_quota_counts_live_uploads_only(store: Store) -> None:
    (a,) = await make_users(store, "quo")
    rid = await make_room(store, a)
    first = upload(a, rid, 60)
    assert await store.create_upload(first, 100) == (True, 0)
    assert await store.create_upload(upload(a, rid, 50), 100) == (False, 60)
    await store.reject_upload(first.id, "checksum mismatch", T0 + 1)
    got = (await store.get_uploads([first.id]))[first.id]
    assert (got.state, got.reason, got.expires_at_ms) == ("rejected", "checksum mismatch", T0 + 1)
    assert await store.create_upload(upload(a, rid, 50), 100) == (True, 0)  # rejected: not counted
    # concurrent uploads of one user can't pass the quota together
    results = await asyncio.gather(
        *(store.create_upload(upload(a, rid, 30), 100) for _ in range(5))
    )
    assert sum(stored for stored, _ in results) == 1


async def test_finish_upload_once(store: Store) -> None:
    (a,) = await make_users(store, "fin")
    rid = await make_room(store, a)
    u = upload(a, rid)
    await store.create_upload(u, 10**9)
    assert (await store.get_uploads([u.id, nid()])) == {u.id: u}
    assert await store.finish_upload(u.id, "image/jpeg", 77, 8, 6, "pending")
    assert not await store.finish_upload(u.id, "text/plain", 1, None, None, "none")
    await store.reject_upload(u.id, "late", T0)  # not pending: no-op
    got = (await store.get_uploads([u.id]))[u.id]
    assert (got.state, got.content_type, got.size, got.width, got.height, got.thumb) == (
        "ready",
        "image/jpeg",
        77,
        8,
        6,
        "pending",
    )


async def test_attachments_are_stored_with_their_message(store: Store) -> None:
    a, b = await make_users(store, "att", "bat")
    rid = await make_room(store, a, b)  # seqs 1, 2
    u1, u2 = await ready_upload(store, a, rid), await ready_upload(store, a, rid)
    row = NewMessage(nid(), rid, a, "", "n-att", T0, attachments=(u2.attachment(), u1.attachment()))
    (out,) = await store.insert_messages([row])
    assert out.status == "created" and out.message is not None and out.event is not None
    assert out.message.attachments == (u2.attachment(), u1.attachment())
    assert out.event.data["attachments"] == [
        {
            "id": str(u.id),
            "filename": "f.png",
            "content_type": "image/png",
            "size": 90,
            "width": 4,
            "height": 3,
            "url": f"/files/{u.id}",
        }
        for u in (u2, u1)
    ]
    assert await store.attachments_of([row.id, nid()]) == {
        row.id: (u2.attachment(), u1.attachment())
    }
    assert (await store.get_uploads([u1.id]))[u1.id].message_id == row.id
    assert await store.find_message(a, "n-att") == msgspec.structs.replace(
        out.message, attachments=()
    )
    assert await store.find_message(a, "nope") is None
    # the same nonce again: the first message, nothing attached twice
    (dup,) = await store.insert_messages([msgspec.structs.replace(row, id=nid())])
    assert dup.status == "duplicate" and dup.message is not None and dup.message.id == row.id


async def test_unattachable_uploads_store_nothing(store: Store) -> None:
    a, b = await make_users(store, "una", "unb")
    rid, other_room = await make_room(store, a, b), await make_room(store, a, b)
    taken = await ready_upload(store, a, rid)
    (first,) = await store.insert_messages(
        [NewMessage(nid(), rid, a, "x", "n-1", T0, attachments=(taken.attachment(),))]
    )
    assert first.status == "created"
    pending = upload(a, rid)
    await store.create_upload(pending, 10**9)
    cases = {
        "already attached": taken,
        "another author's": await ready_upload(store, b, rid),
        "another room's": await ready_upload(store, a, other_room),
        "not verified": pending,
        "expired": await ready_upload(store, a, rid, expires_at_ms=T0),
    }
    seq_before = (await store.get_room(rid)).last_seq  # type: ignore[union-attr]
    for i, (what, u) in enumerate(cases.items()):
        fine = await ready_upload(store, a, rid)
        row = NewMessage(
            nid(), rid, a, "x", f"bad-{i}", T0, attachments=(fine.attachment(), u.attachment())
        )
        with pytest.raises(AttachConflict):
            await store.insert_messages([row])
        assert await store.get_message(row.id) is None, what
        assert (await store.get_uploads([fine.id]))[fine.id].message_id is None, what
    assert (await store.get_room(rid)).last_seq == seq_before  # type: ignore[union-attr]


async def test_deleting_a_message_marks_its_uploads_for_the_sweeper(store: Store) -> None:
    (a,) = await make_users(store, "del")
    rid = await make_room(store, a)
    u = await ready_upload(store, a, rid)
    row = NewMessage(nid(), rid, a, "x", "n", T0, attachments=(u.attachment(),))
    await store.insert_messages([row])
    assert await store.uploads_to_sweep(T0 + 1, 10) == []  # attached, URL still valid
    await store.delete_message(row.id, T0 + 5)
    assert await store.attachments_of([row.id]) == {}
    swept = await store.uploads_to_sweep(T0 + 1, 10)
    assert [(s.id, s.deleted_at_ms) for s in swept] == [(u.id, T0 + 5)]
    await store.forget_uploads([u.id])
    assert await store.get_uploads([u.id]) == {}


async def test_sweep_candidates(store: Store) -> None:
    (a,) = await make_users(store, "swe")
    rid = await make_room(store, a)
    expired = upload(a, rid, expires_at_ms=T0 + 10)
    fresh = upload(a, rid, expires_at_ms=T0 + HOUR)
    for u in (expired, fresh):
        await store.create_upload(u, 10**9)
    live = await ready_upload(store, a, rid, put_expires_at_ms=T0 + 20)
    await store.insert_messages(
        [NewMessage(nid(), rid, a, "x", "n", T0, attachments=(live.attachment(),))]
    )
    assert [u.id for u in await store.uploads_to_sweep(T0 + 15, 10)] == [expired.id]
    assert [u.id for u in await store.uploads_to_sweep(T0 + 30, 10)] == [expired.id, live.id]
    await store.mark_staging_swept([live.id])
    await store.forget_uploads([expired.id, live.id])  # never forgets a live attachment
    assert set(await store.get_uploads([expired.id, fresh.id, live.id])) == {fresh.id, live.id}
    assert await store.uploads_to_sweep(T0 + 30, 10) == []


async def test_thumbnail_claims(store: Store) -> None:
    (a,) = await make_users(store, "thu")
    rid = await make_room(store, a)
    u1, u2 = await ready_upload(store, a, rid), await ready_upload(store, a, rid)
    claimed = await store.claim_thumbnails(T0, 1000, 10)
    assert sorted(u.id for u in claimed) == [u1.id, u2.id]  # in no particular order
    assert await store.claim_thumbnails(T0 + 500, 1000, 10) == []  # leased
    await store.finish_thumbnail(u1.id, "ready")
    again = await store.claim_thumbnails(T0 + 1001, 1000, 10)  # u2's claim lapsed
    assert [u.id for u in again] == [u2.id]
    assert (await store.get_uploads([u1.id]))[u1.id].thumb == "ready"
