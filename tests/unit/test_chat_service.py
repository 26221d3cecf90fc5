"""ChatService rules on SQLite: authorization, input limits, idempotent send, events and their
hand-off to on_commit, history paging and reactions, mentions and read state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from chat_core.models import ReadState, RoomEvent
from chat_core.service import ChatService
from shardchat.adapters.sqlite_store import SqliteStore
from shardchat.errors import BadInput, Forbidden, NotFound
from shardchat.migrate import migrate
from user_core.models import User

T0 = 1_750_000_000_000


class Harness:
    def __init__(self, store: SqliteStore, group_commit: bool) -> None:
        self.store = store
        self.published: list[RoomEvent] = []
        self.reads: list[tuple[int, ReadState]] = []
        self.chat = ChatService(
            store, on_commit=self.sink, on_read=self.read_sink, group_commit=group_commit
        )
        self._next = 100

    def sink(self, events: Sequence[RoomEvent]) -> None:
        self.published.extend(events)

    async def read_sink(self, user_id: int, state: ReadState) -> None:
        self.reads.append((user_id, state))

    async def user(self, name: str) -> int:
        self._next += 1
        assert await self.store.create_user(User(self._next, name, T0), "x")
        return self._next


@pytest.fixture(params=[True, False], ids=["group-commit", "per-call"])
async def h(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    store = SqliteStore(str(tmp_path / "chat.sqlite3"))
    await store.start()
    await migrate(store)
    harness = Harness(store, request.param)
    yield harness
    await harness.chat.close()
    await store.close()


async def test_room_lifecycle_and_events(h: Harness) -> None:
    a, b, c = await h.user("a"), await h.user("b"), await h.user("c")
    room = await h.chat.create_room(a, "general", [b, b], public=True)
    assert room.last_seq == 2 and room.public
    assert [(e.type, e.data["user_id"]) for e in h.published] == [
        ("MEMBER_JOIN", str(a)),
        ("MEMBER_JOIN", str(b)),
    ]
    assert await h.chat.room_members(a, room.id) == [a, b]
    joined = await h.chat.join_room(c, room.id)
    assert joined.last_seq == 3
    await h.chat.join_room(c, room.id)  # twice: no second event
    assert len(h.published) == 3
    assert [r.id for r in await h.chat.list_rooms(c)] == [room.id]
    assert await h.chat.leave_room(c, room.id)
    assert h.published[-1].type == "MEMBER_LEAVE" and h.published[-1].seq == 4
    with pytest.raises(NotFound):
        await h.chat.leave_room(c, room.id)
    with pytest.raises(NotFound):
        await h.chat.leave_room(c, 999_999)
    with pytest.raises(NotFound):
        await h.chat.join_room(c, 999_999)
    with pytest.raises(NotFound):
        await h.chat.get_room(c, room.id)
    with pytest.raises(NotFound):
        await h.chat.room_members(c, room.id)
    with pytest.raises(NotFound):
        await h.chat.get_room(a, 999_999)
    assert (await h.chat.get_room(a, room.id)).last_seq == 4
    assert await h.chat.is_member(room.id, a) and not await h.chat.is_member(room.id, c)


async def test_private_rooms_invitations_roles_and_removal(h: Harness) -> None:
    owner, admin, member, guest, stranger = [await h.user(n) for n in "oamgs"]
    room = await h.chat.create_room(owner, "private", [admin, member])
    assert not room.public and not room.direct
    assert await h.chat.member_roles(owner, room.id) == [
        (owner, "owner"),
        (admin, "member"),
        (member, "member"),
    ]
    with pytest.raises(NotFound):  # private: no joining without an invitation
        await h.chat.join_room(stranger, room.id)
    with pytest.raises(Forbidden):  # plain members don't invite to a private room
        await h.chat.invite(member, room.id, [guest])
    with pytest.raises(Forbidden):
        await h.chat.set_member_role(admin, room.id, member, "admin")
    assert await h.chat.set_member_role(owner, room.id, admin, "admin")
    assert await h.chat.invite(admin, room.id, [guest, member]) == [guest]  # members skipped
    assert await h.chat.invite(admin, room.id, [guest]) == []  # already invited
    assert [(i.room_id, i.inviter_id) for i in await h.chat.invitations(guest)] == [
        (room.id, admin)
    ]
    assert (await h.chat.join_room(guest, room.id)).id == room.id  # joining accepts it
    assert await h.chat.invitations(guest) == []
    with pytest.raises(Forbidden):  # an admin removes plain members only
        await h.chat.remove_member(admin, room.id, owner)
    assert await h.chat.remove_member(admin, room.id, guest)
    leave = h.published[-1]
    assert leave.type == "MEMBER_LEAVE"
    assert leave.data == {
        "room_id": str(room.id),
        "seq": leave.seq,
        "user_id": str(guest),
        "removed_by": str(admin),
    }
    with pytest.raises(NotFound):
        await h.chat.history(guest, room.id, None, None)
    # declining; the owner leaving hands the room to the admin
    await h.chat.invite(owner, room.id, [stranger])
    assert await h.chat.decline_invitation(stranger, room.id)
    with pytest.raises(NotFound):
        await h.chat.accept_invitation(stranger, room.id)
    assert await h.chat.leave_room(owner, room.id)
    assert await h.chat.member_role(admin, room.id) == "owner"
    # public rooms: listed, joinable, any member invites
    lobby = await h.chat.create_room(member, "lobby", public=True)
    assert [r.id for r in await h.chat.public_rooms()] == [lobby.id]
    assert (await h.chat.join_room(stranger, lobby.id)).public
    assert await h.chat.invite(stranger, lobby.id, [guest]) == [guest]


async def test_direct_rooms_are_one_per_pair(h: Harness) -> None:
    a, b, c = await h.user("a"), await h.user("b"), await h.user("c")
    rooms = await asyncio.gather(*(h.chat.open_direct_room(x, y) for x, y in [(a, b), (b, a)] * 5))
    assert len({r.id for r in rooms}) == 1 and rooms[0].direct and not rooms[0].public
    dm = rooms[0]
    assert await h.chat.room_members(a, dm.id) == [a, b]
    assert sum(1 for e in h.published if e.room_id == dm.id) == 2  # one pair of MEMBER_JOIN
    assert (await h.chat.open_direct_room(a, c)).id != dm.id
    with pytest.raises(NotFound):
        await h.chat.get_room(c, dm.id)
    for call in (
        h.chat.leave_room(a, dm.id),
        h.chat.invite(a, dm.id, [c]),
        h.chat.remove_member(a, dm.id, b),
        h.chat.open_direct_room(a, a),
        h.chat.open_direct_room(a, 987_654),
    ):
        with pytest.raises(BadInput):
            await call


async def test_a_nonce_spent_in_another_room_answers_nothing_of_it(h: Harness) -> None:
    a, b = await h.user("a"), await h.user("b")
    mine = await h.chat.create_room(a, "mine")
    other = await h.chat.create_room(a, "other")
    theirs = await h.chat.create_room(b, "theirs")
    await h.chat.send_message(a, mine.id, "first", "n-1")
    with pytest.raises(NotFound):  # was: the message of the first room
        await h.chat.send_message(a, theirs.id, "probe", "n-1")
    with pytest.raises(BadInput):
        await h.chat.send_message(a, other.id, "again", "n-1")


async def test_create_room_rejects_bad_input(h: Harness) -> None:
    a = await h.user("a")
    for name in ("", "   ", "x" * 101):
        with pytest.raises(BadInput):
            await h.chat.create_room(a, name)
    with pytest.raises(BadInput):
        await h.chat.create_room(a, "room", [424242])


async def test_send_rules(h: Harness) -> None:
    a, b = await h.user("a"), await h.user("b")
    room = await h.chat.create_room(a, "r")
    m = await h.chat.send_message(a, room.id, "  hello  ", "n-1")
    assert (m.content, m.seq, m.nonce, m.author_id) == ("  hello  ", 2, "n-1", a)  # not trimmed
    assert h.published[-1].type == "MESSAGE_CREATE" and h.published[-1].data["id"] == str(m.id)
    assert await h.chat.send_message(a, room.id, "other", "n-1") == m  # retried: first result
    assert (await h.chat.get_room(a, room.id)).last_seq == 2
    assert len((await h.chat.send_message(a, room.id, "x" * 4000, "n-2")).content) == 4000
    assert len((await h.chat.send_message(a, room.id, "é" * 32, "é" * 16)).nonce or "") == 16
    bad = [
        ("", "n"),
        (" \n\t ", "n"),
        ("x" * 4001, "n"),
        ("ok", ""),
        ("ok", "x" * 33),
        ("ok", "é" * 17),  # 34 bytes
    ]
    for content, nonce in bad:
        with pytest.raises(BadInput):
            await h.chat.send_message(a, room.id, content, nonce)
    with pytest.raises(NotFound):
        await h.chat.send_message(b, room.id, "hi", "n")
    with pytest.raises(NotFound):
        await h.chat.send_message(a, 999_999, "hi", "n")
    with pytest.raises(BadInput):
        await h.chat.send_message(a, -1, "hi", "n")


async def test_concurrent_sends_and_retries(h: Harness) -> None:
    users = [await h.user(f"u{i}") for i in range(5)]
    room = await h.chat.create_room(users[0], "busy", users[1:])

    async def sender(u: int) -> list[int]:
        return [(await h.chat.send_message(u, room.id, f"m{i}", f"n{i}")).id for i in range(20)]

    first = await asyncio.gather(*(sender(u) for u in users))
    again = await asyncio.gather(*(sender(u) for u in users))  # all retries
    assert first == again
    events = await h.chat.events_after(room.id, 0, 1000)
    assert [e.seq for e in events] == list(range(1, 5 + 100 + 1))
    assert [e.seq for e in h.published] == list(range(1, 106))  # published once each, in order


async def test_edit_delete_permissions(h: Harness) -> None:
    a, b, c = await h.user("a"), await h.user("b"), await h.user("c")
    room = await h.chat.create_room(a, "r", [b])
    m = await h.chat.send_message(a, room.id, "v1", "n")
    with pytest.raises(Forbidden):
        await h.chat.edit_message(b, m.id, "hacked")
    with pytest.raises(NotFound):
        await h.chat.edit_message(c, m.id, "hacked")
    with pytest.raises(Forbidden):
        await h.chat.delete_message(b, m.id)
    with pytest.raises(BadInput):
        await h.chat.edit_message(a, m.id, "")
    with pytest.raises(NotFound):
        await h.chat.edit_message(a, 999_999, "x")
    edited = await h.chat.edit_message(a, m.id, "v2")
    assert edited.content == "v2" and edited.edited_at_ms is not None
    assert h.published[-1].type == "MESSAGE_UPDATE"
    assert h.published[-1].data["edited_at"].endswith("Z")
    assert await h.chat.delete_message(a, m.id)
    assert h.published[-1].type == "MESSAGE_DELETE"
    with pytest.raises(NotFound):
        await h.chat.edit_message(a, m.id, "v3")
    with pytest.raises(NotFound):
        await h.chat.delete_message(a, m.id)
    with pytest.raises(NotFound):
        await h.chat.add_reaction(b, m.id, "👍")
    items, _ = await h.chat.history(a, room.id, None, None)
    assert items[0].deleted and items[0].content == ""


async def test_reactions(h: Harness) -> None:
    a, b, c = await h.user("a"), await h.user("b"), await h.user("c")
    room = await h.chat.create_room(a, "r", [b])
    m = await h.chat.send_message(a, room.id, "hi", "n")
    assert await h.chat.add_reaction(b, m.id, "👍")
    assert not await h.chat.add_reaction(b, m.id, "👍")
    n_events = len(h.published)
    assert await h.chat.add_reaction(a, m.id, "👍")
    assert len(h.published) == n_events + 1
    for emoji in ("", " ", "x" * 33):
        with pytest.raises(BadInput):
            await h.chat.add_reaction(a, m.id, emoji)
    with pytest.raises(NotFound):
        await h.chat.add_reaction(c, m.id, "👍")
    assert await h.chat.remove_reaction(b, m.id, "👍")
    assert not await h.chat.remove_reaction(b, m.id, "👍")
    assert h.published[-1].type == "REACTION_REMOVE"
    items, _ = await h.chat.history(b, room.id, None, None)
    assert [(r.emoji, r.count, r.me) for r in items[0].reactions] == [("👍", 1, False)]


async def test_history_paging(h: Harness) -> None:
    a, b = await h.user("a"), await h.user("b")
    room = await h.chat.create_room(a, "r")
    ids = [(await h.chat.send_message(a, room.id, f"m{i}", f"n{i}")).id for i in range(7)]
    page, more = await h.chat.history(a, room.id, None, None, limit=3)
    assert [m.id for m in page] == ids[::-1][:3] and more  # newest first
    page, more = await h.chat.history(a, room.id, page[-1].id, None, limit=3)
    assert [m.id for m in page] == ids[1:4][::-1] and more
    page, more = await h.chat.history(a, room.id, page[-1].id, None, limit=3)
    assert [m.id for m in page] == [ids[0]] and not more
    page, more = await h.chat.history(a, room.id, None, ids[4], limit=5)
    assert [m.id for m in page] == ids[5:] and not more  # after: oldest first
    page, more = await h.chat.history(a, room.id, None, None)
    assert len(page) == 7 and not more
    for limit in (0, 101):
        with pytest.raises(BadInput):
            await h.chat.history(a, room.id, None, None, limit=limit)
    with pytest.raises(BadInput):
        await h.chat.history(a, room.id, ids[3], ids[1])
    with pytest.raises(NotFound):
        await h.chat.history(b, room.id, None, None)
    with pytest.raises(NotFound):
        await h.chat.history(a, 999_999, None, None)


async def test_on_commit_failure_does_not_fail_the_caller(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.sqlite3"))
    await store.start()
    await migrate(store)

    def broken(events: Sequence[RoomEvent]) -> None:
        raise RuntimeError("publisher down")

    chat = ChatService(store, on_commit=broken)
    await store.create_user(User(1, "abc", T0), "x")
    room = await chat.create_room(1, "r")
    msg = await chat.send_message(1, room.id, "still stored", "n")
    assert (await store.pending_events(2**62, 10))[-1].data["id"] == str(msg.id)  # the relay's
    await chat.close()
    await store.close()


async def test_mentions_resolve_usernames_of_members(h: Harness) -> None:
    a, b, c = await h.user("amy"), await h.user("Bo.b"), await h.user("cat")
    outsider = await h.user("dan")
    room = await h.chat.create_room(a, "r", [b, c])
    msg = await h.chat.send_message(a, room.id, "hi @bo.b. and @CAT, @dan, @amy, a@cat.org", "n")
    assert msg.mentions == (b, c)  # not the author, not a non-member, not an e-mail address
    assert h.published[-1].data["mentions"] == [str(b), str(c)]
    plain = await h.chat.send_message(a, room.id, "no one here", "n2")
    assert plain.mentions == ()
    page, _ = await h.chat.history(b, room.id, None, None)
    assert [m.mentions for m in page] == [(), (b, c)]
    edited = await h.chat.edit_message(a, msg.id, "edited")  # mentions stay as sent
    assert edited.mentions == (b, c)
    assert outsider


async def test_mark_read_and_mute(h: Harness) -> None:
    a, b, c = await h.user("ann"), await h.user("ben"), await h.user("cy")
    room = await h.chat.create_room(a, "r", [b])  # seqs 1, 2
    for i in range(3):
        await h.chat.send_message(a, room.id, f"m{i} @ben", f"n{i}")  # seqs 3-5
    states = await h.chat.read_states(b, [room.id])
    assert states == {room.id: ReadState(room.id, 0, 3, 3, False)}
    state = await h.chat.mark_read(b, room.id, 4)
    assert state == ReadState(room.id, 4, 1, 1, False)
    assert h.reads == [(b, state)]
    assert (await h.chat.mark_read(b, room.id, 2)).last_read_seq == 4  # never back
    assert (await h.chat.mark_read(b, room.id, 10**6)).last_read_seq == 5  # clamped
    muted = await h.chat.set_room_muted(b, room.id, True)
    assert muted == ReadState(room.id, 5, 0, 0, True) and h.reads[-1] == (b, muted)
    with pytest.raises(BadInput):
        await h.chat.mark_read(b, room.id, -1)
    with pytest.raises(NotFound):  # a non-member learns nothing about the room
        await h.chat.mark_read(c, room.id, 1)
    with pytest.raises(NotFound):
        await h.chat.set_room_muted(c, room.id, True)
    with pytest.raises(NotFound):
        await h.chat.mark_read(b, 999_999, 1)
    assert await h.chat.read_states(c, [room.id]) == {}


async def test_a_failing_read_sink_does_not_fail_mark_read(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "chat.sqlite3"))
    await store.start()
    await migrate(store)

    async def broken(user_id: int, state: ReadState) -> None:
        raise RuntimeError("registry down")

    chat = ChatService(store, on_read=broken, group_commit=False)
    try:
        assert await store.create_user(User(1, "solo", T0), "x")
        room = await chat.create_room(1, "r")
        assert (await chat.mark_read(1, room.id, 1)).last_read_seq == 1
        assert (await chat.read_states(1, [room.id]))[room.id].last_read_seq == 1
    finally:
        await chat.close()
        await store.close()
