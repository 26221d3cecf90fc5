"""One contract suite for the KeyDirectory port (docs/e2e.md section 4), on the SQLite and the
PostgreSQL adapter (each opened on its Store's database), plus the Store's encrypted-room
guarantees (epochs, rotation compare-and-set, sealed keys) on both Store adapters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from chat_core.models import SealedKey
from shardchat.keydirectory import KeyDirectory
from shardchat.store import NewMessage, Store
from tests.contract.test_store_contract import T0, make_users, nid
from tests.contract.test_store_contract import store as store
from tests.contract.test_store_contract import store_target as store_target


@pytest.fixture
async def keys(store: Store) -> AsyncIterator[KeyDirectory]:
    yield store.key_directory()


# --- KeyDirectory -------------------------------------------------------------------------------
async def test_versions_are_a_gapless_compare_and_set(keys: KeyDirectory) -> None:
    user = nid()
    assert not await keys.append_device_list(user, 2, b"v2", b"s", T0)  # no version 1 yet
    assert await keys.append_device_list(user, 1, b"v1", b"s1", T0)
    assert not await keys.append_device_list(user, 1, b"again", b"s", T0)
    assert await keys.append_device_list(user, 2, b"v2", b"s2", T0 + 1)
    got = await keys.device_lists(user)
    assert [(e.version, e.body, e.signature) for e in got] == [(1, b"v1", b"s1"), (2, b"v2", b"s2")]
    assert [e.version for e in await keys.device_lists(user, after_version=1)] == [2]
    assert await keys.device_lists(nid()) == []


async def test_concurrent_appends_of_one_version_store_exactly_one(keys: KeyDirectory) -> None:
    user = nid()
    assert await keys.append_device_list(user, 1, b"v1", b"s", T0)
    results = await asyncio.gather(
        *(keys.append_device_list(user, 2, f"fork {i}".encode(), b"s", T0) for i in range(8))
    )
    assert results.count(True) == 1
    (winner,) = [i for i, ok in enumerate(results) if ok]
    assert (await keys.device_lists(user))[-1].body == f"fork {winner}".encode()


async def test_heads_are_each_users_highest_version(keys: KeyDirectory) -> None:
    a, b, c = nid(), nid(), nid()
    for v in (1, 2, 3):
        assert await keys.append_device_list(a, v, f"a{v}".encode(), b"s", T0)
    assert await keys.append_device_list(b, 1, b"b1", b"s", T0)
    heads = await keys.heads([a, b, c])
    assert {u: (e.version, e.body) for u, e in heads.items()} == {a: (3, b"a3"), b: (1, b"b1")}
    assert await keys.heads([]) == {}


async def test_proposals_replace_per_device_and_keep_the_newest(keys: KeyDirectory) -> None:
    user = nid()
    for i in range(4):
        await keys.put_proposal(user, bytes([i]) * 16, f"p{i}".encode(), b"s", T0 + i, keep=3)
    await keys.put_proposal(user, bytes([3]) * 16, b"p3 again", b"s", T0 + 10, keep=3)
    got = await keys.proposals(user)
    assert [(p.device_id[0], p.body) for p in got] == [(1, b"p1"), (2, b"p2"), (3, b"p3 again")]
    await keys.drop_proposals(user, [bytes([1]) * 16, bytes([9]) * 16])
    assert [p.device_id[0] for p in await keys.proposals(user)] == [2, 3]
    assert await keys.proposals(nid()) == []


# --- the Store's encrypted rooms ----------------------------------------------------------------
def payload(epoch: int) -> dict[str, object]:
    return {
        "ciphertext": "AAAA",
        "nonce": "n",
        "epoch": epoch,
        "sender_device": "d",
        "signature": "s",
    }


def sealed(room: int, epoch: int, user: int, device: bytes = b"d" * 16) -> SealedKey:
    return SealedKey(room, epoch, user, device, 1, user, b"s" * 16, b"x" * 80, b"g" * 64)


async def test_epochs_due_flags_and_encrypted_sends(store: Store) -> None:
    alice, bob, carol = await make_users(store, "alice", "bob", "carol")
    room_id = nid()
    created, _ = await store.create_room(room_id, "e2e", T0, [alice, bob], encrypted=True)
    assert (created.encrypted, created.key_epoch, created.key_rotation_due) == (True, 0, True)

    def row(author: int, nonce: str, epoch: int | None) -> NewMessage:
        return NewMessage(
            nid(),
            room_id,
            author,
            "",
            nonce,
            T0,
            {},
            encrypted=None if epoch is None else payload(epoch),
        )

    assert (await store.insert_encrypted_message(row(alice, "a1", 1))).status == "rotation_due"
    (plain,) = await store.insert_messages([row(alice, "p1", None)])
    assert plain.status == "encrypted_room"
    changes = (await store.get_room(room_id)).key_changes
    assert await store.rotate_room_key(room_id, carol, 1, [alice, bob], changes, [], T0) == (
        "not_member"
    )
    assert await store.rotate_room_key(room_id, alice, 2, [alice, bob], changes, [], T0) == (
        "stale_epoch"
    )
    assert await store.rotate_room_key(room_id, alice, 1, [alice], changes, [], T0) == (
        "members_changed"
    )
    assert await store.rotate_room_key(room_id, alice, 1, [alice, bob], changes + 1, [], T0) == (
        "members_changed"
    )
    keys = [sealed(room_id, 1, alice), sealed(room_id, 1, bob)]
    assert await store.rotate_room_key(room_id, alice, 1, [alice, bob], changes, keys, T0) == "ok"
    room = await store.get_room(room_id)
    assert (room.key_epoch, room.key_rotation_due) == (1, False)

    sent = await store.insert_encrypted_message(row(alice, "a2", 1))
    assert sent.status == "created" and sent.message.encrypted == payload(1)
    assert sent.event.data["encrypted"] == payload(1) and sent.event.data["content"] == ""
    assert (await store.insert_encrypted_message(row(alice, "a2", 1))).status == "duplicate"
    assert (await store.insert_encrypted_message(row(alice, "a3", 2))).status == "stale_epoch"
    assert (await store.insert_encrypted_message(row(carol, "c1", 1))).status == "not_member"
    (listed,) = await store.list_messages(room_id, None, None, 10)
    assert listed.encrypted == payload(1) and listed.seq == sent.event.seq

    edit = await store.edit_encrypted_message(sent.message.id, payload(1) | {"nonce": "m"}, T0 + 5)
    assert edit.status == "ok" and edit.event.data["encrypted"]["nonce"] == "m"
    assert (await store.edit_encrypted_message(sent.message.id, payload(7), T0)).status == (
        "stale_epoch"
    )

    # a leave makes the rotation due in its own transaction: the old epoch is refused at once
    await store.remove_member(room_id, bob, T0 + 6, removed_by=alice)
    room = await store.get_room(room_id)
    assert room.key_rotation_due and room.key_changes == changes + 1
    assert (await store.insert_encrypted_message(row(alice, "a4", 1))).status == "rotation_due"
    assert (await store.edit_encrypted_message(sent.message.id, payload(1), T0)).status == (
        "rotation_due"
    )
    # so does a device list change of a member, in every encrypted room of theirs
    plain_room = nid()
    await store.create_room(plain_room, "plain", T0, [alice])
    assert await store.rotate_room_key(room_id, alice, 2, [alice], changes + 1, [], T0) == "ok"
    assert await store.mark_key_changes(alice) == 1
    assert (await store.get_room(room_id)).key_rotation_due
    assert not (await store.get_room(plain_room)).key_rotation_due
    plain_row = NewMessage(nid(), plain_room, alice, "", "e1", T0, {}, encrypted=payload(1))
    assert (await store.insert_encrypted_message(plain_row)).status == "not_encrypted"

    assert await store.delete_message(sent.message.id, T0 + 9) is not None
    assert (await store.get_message(sent.message.id)).encrypted is None


async def test_concurrent_rotations_one_wins_and_keys_are_per_device(
    store: Store,
) -> None:
    alice, bob = await make_users(store, "alice", "bob")
    room_id = nid()
    await store.create_room(room_id, "race", T0, [alice, bob], encrypted=True)
    changes = (await store.get_room(room_id)).key_changes
    results = await asyncio.gather(
        *(
            store.rotate_room_key(
                room_id,
                alice,
                1,
                [alice, bob],
                changes,
                [sealed(room_id, 1, alice, bytes([i]) * 16)],
                T0,
            )
            for i in range(6)
        )
    )
    assert results.count("ok") == 1 and set(results) == {"ok", "stale_epoch"}
    (winner,) = [i for i, r in enumerate(results) if r == "ok"]
    assert await store.room_key_holders(room_id, 1) == {(alice, bytes([winner]) * 16)}
    more = [sealed(room_id, 1, bob), sealed(room_id, 1, alice, bytes([winner]) * 16)]
    assert await store.add_room_keys(more, T0) == 1  # the held one is skipped
    assert [k.epoch for k in await store.room_keys(room_id, bob, b"d" * 16, 0, 10)] == [1]
    assert await store.room_keys(room_id, bob, b"d" * 16, 1, 10) == []
    (got,) = await store.room_keys(room_id, bob, b"d" * 16, 0, 10)
    assert got == sealed(room_id, 1, bob)
