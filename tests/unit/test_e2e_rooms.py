"""End-to-end encrypted rooms through the real edge (SQLite, in process) with the Python client:
keys on first login, encrypt/decrypt, edits, reactions, removal and rotation, tampering,
safety numbers, new devices and the server's refusals (docs/e2e.md)."""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shardchat.client import EdgeClient, ShardchatError
from shardchat.e2e import scheme
from shardchat.e2e.client import E2EClient, E2EError
from shardchat.errors import BadInput
from tests.unit.test_graphql_api import Edge, make_edge

PASSWORD = "correct horse battery"
LIMITS = {
    "mutation_burst": 10_000,
    "mutation_per_s": 1e4,
    "query_burst": 10_000,
    "query_per_s": 1e4,
}
RAW_SEND = (
    "mutation($r: ID!, $n: String!, $c: String, $e: EncryptedPayloadInput) "
    "{ sendMessage(roomId: $r, nonce: $n, content: $c, encrypted: $e) { id } }"
)


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    async with make_edge(tmp_path, **LIMITS) as e:
        yield e


async def person(edge: Edge, tmp_path: Path, name: str, *, register: bool = True) -> E2EClient:
    client = EdgeClient("http://edge", http=edge.http)
    if register:
        await client.register(name, PASSWORD)
    else:
        await client.login(name, PASSWORD)
    e2e = E2EClient(client, tmp_path / f"keys-{name}-{'new' if not register else 'first'}")
    await e2e.setup()
    return e2e


def texts(items: list[Any]) -> list[tuple[str, str | None]]:
    return [(d.status, d.text) for d in items]


async def raw_e2e(store: Any, message_id: str) -> dict[str, Any]:
    row = await store.fetch_one("SELECT e2e FROM messages WHERE id = ?", (int(message_id),))
    return dict(json.loads(row[0]))


async def set_e2e(store: Any, message_id: str, payload: dict[str, Any]) -> None:
    async with store.transaction() as db:
        await db.execute(
            "UPDATE messages SET e2e = ? WHERE id = ?", (json.dumps(payload), int(message_id))
        )


async def test_first_login_creates_a_private_key_file_and_the_genesis(
    edge: Edge, tmp_path: Path
) -> None:
    alice = await person(edge, tmp_path, "alice")
    assert alice.status == "active"
    path = alice.keyfile.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    chain = (await alice.devices(alice.user_id)).chain
    assert chain.head.version == 1 and chain.anchor == alice.device.signing_key
    # a second setup on the same machine reuses the device: nothing new is published
    again = E2EClient(alice.edge, alice.keyfile.dir)
    assert await again.setup() == "active" and again.device_id == alice.device_id
    assert (await again.devices(alice.user_id, refresh=True)).chain.head.version == 1


async def test_conversation_edit_reaction_delete_and_server_refusals(
    edge: Edge, tmp_path: Path
) -> None:
    alice = await person(edge, tmp_path, "alice")
    bob = await person(edge, tmp_path, "bob")
    room = await alice.create_room("secret plans", [bob.user_id])
    rid = int(room["id"])
    assert room["encrypted"] is True and room["keyEpoch"] == 1
    sent = await alice.send(rid, "meet at the old mill")
    assert sent["content"] == "" and sent["encrypted"]["epoch"] == 1
    await bob.send(rid, "bring the map")
    assert texts(await bob.history(rid)) == [
        ("ok", "meet at the old mill"),
        ("ok", "bring the map"),
    ]
    # the stored row holds ciphertext only
    stored = await raw_e2e(edge.chat.store, sent["id"])
    assert "old mill" not in json.dumps(stored) and stored["epoch"] == 1

    await alice.edit(rid, int(sent["id"]), "meet at the new mill")
    await edge.gql(
        'mutation($m: ID!) { addReaction(messageId: $m, emoji: "👍") }',
        {"m": sent["id"]},
        (await bob.edge.access_token()),
    )
    page = await bob.edge.graphql(
        "query($r: ID!) { messages(roomId: $r) { items { id reactions { emoji count } } } }",
        {"r": str(rid)},
    )
    assert page["messages"]["items"][-1]["reactions"] == [{"emoji": "👍", "count": 1}]
    assert texts(await bob.history(rid))[0] == ("ok", "meet at the new mill")

    # the server refuses plaintext in an encrypted room and a payload in a plain one
    with pytest.raises(ShardchatError) as plain:
        await alice.edge.graphql(RAW_SEND, {"r": str(rid), "n": "p1", "c": "leak"})
    assert plain.value.reason == "ENCRYPTED_ROOM"
    plain_room = await alice.edge.create_room("plain")
    payload = scheme.wire_to_graphql(await alice.encrypt(rid, "x", "p2"))
    with pytest.raises(ShardchatError) as enc:
        await alice.edge.graphql(RAW_SEND, {"r": plain_room["id"], "n": "p2", "e": payload})
    assert enc.value.reason == "NOT_ENCRYPTED"
    bad = dict(payload, epoch=7)
    with pytest.raises(ShardchatError) as stale:
        await alice.edge.graphql(RAW_SEND, {"r": str(rid), "n": "p3", "e": bad})
    assert stale.value.reason == "STALE_EPOCH"
    too_big = dict(payload, ciphertext=scheme.b64e(bytes(9000)))
    with pytest.raises(ShardchatError, match="ciphertext must be"):
        await alice.edge.graphql(RAW_SEND, {"r": str(rid), "n": "p4", "e": too_big})

    assert await alice.edge.graphql(
        "mutation($m: ID!) { deleteMessage(id: $m) }", {"m": sent["id"]}
    )
    store: Any = edge.chat.store
    row = await store.fetch_one("SELECT e2e FROM messages WHERE id = ?", (int(sent["id"]),))
    assert row[0] is None  # the ciphertext goes with the tombstone
    assert texts(await bob.history(rid)) == [("ok", "bring the map")]


async def test_a_removed_member_cannot_read_what_is_sent_after(edge: Edge, tmp_path: Path) -> None:
    alice = await person(edge, tmp_path, "alice")
    bob = await person(edge, tmp_path, "bob")
    carol = await person(edge, tmp_path, "carol")
    rid = int((await alice.create_room("three", [bob.user_id, carol.user_id]))["id"])
    await alice.send(rid, "before removal")
    assert texts(await carol.history(rid)) == [("ok", "before removal")]
    old_key = await carol.room_key(rid, 1)
    assert old_key is not None

    assert await alice.edge.remove_member(rid, carol.user_id)
    status = await alice.key_status(rid)
    assert status["rotationDue"] is True and str(carol.user_id) not in status["memberIds"]
    # a message under the old epoch is refused once the rotation is due
    stale = scheme.wire_to_graphql(await alice.encrypt(rid, "old key", "s1", epoch=1))
    with pytest.raises(ShardchatError) as due:
        await alice.edge.graphql(RAW_SEND, {"r": str(rid), "n": "s1", "e": stale})
    assert due.value.reason == "ROTATION_DUE"

    after = await alice.send(rid, "after removal")  # rotates to epoch 2 first
    assert after["encrypted"]["epoch"] == 2
    assert texts(await bob.history(rid))[-1] == ("ok", "after removal")
    # carol: no access through the server, and the ciphertext (say from a stolen dump) does
    # not open with anything she holds
    with pytest.raises(ShardchatError):
        await carol.history(rid)
    assert await carol.room_key(rid, 2) is None
    leaked = dict(after, encrypted=after["encrypted"])
    assert (await carol.decrypt(leaked)).status == "no_key"
    env = scheme.envelope_from_wire(await raw_e2e(edge.chat.store, after["id"]), 1 << 20)
    ctx = scheme.MessageContext.create(rid, 2, alice.user_id, alice.device_id, after["nonce"])
    assert scheme.decrypt_message(ctx, env, old_key) is None
    # her own sealed keys stop at epoch 1
    assert [
        k.epoch for k in await edge.chat.store.room_keys(rid, carol.user_id, carol.device_id, 0, 10)
    ] == [1]


async def test_tampering_and_forged_signatures_are_reported(edge: Edge, tmp_path: Path) -> None:
    alice = await person(edge, tmp_path, "alice")
    bob = await person(edge, tmp_path, "bob")
    rid = int((await alice.create_room("tamper", [bob.user_id]))["id"])
    ids = [(await alice.send(rid, f"message {i}"))["id"] for i in range(4)]
    store = edge.chat.store
    # 1. a flipped ciphertext byte, with the signature recomputed by nobody: bad signature
    p = await raw_e2e(store, ids[0])
    ct = bytearray(scheme.b64d(p["ciphertext"]))
    ct[3] ^= 1
    await set_e2e(store, ids[0], dict(p, ciphertext=scheme.b64e(bytes(ct))))
    # 2. a valid signature by a device the author never listed
    p = await raw_e2e(store, ids[1])
    stranger = scheme.new_device()
    await set_e2e(store, ids[1], dict(p, sender_device=scheme.b64e(stranger.device_id)))
    # 3. ciphertext altered AND re-signed by alice's real device (an insider with her key):
    #    the signature holds, the AEAD tag does not
    p = await raw_e2e(store, ids[2])
    env = scheme.envelope_from_wire(p, 1 << 20)
    ctx = scheme.MessageContext.create(rid, env.epoch, alice.user_id, alice.device_id, "")
    msg = await alice.edge.graphql(
        "query($r: ID!) { messages(roomId: $r) { items { id nonce } } }", {"r": str(rid)}
    )
    nonce = next(m["nonce"] for m in msg["messages"]["items"] if m["id"] == ids[2])
    ctx = scheme.MessageContext.create(rid, env.epoch, alice.user_id, alice.device_id, nonce)
    forged = bytearray(env.ciphertext)
    forged[0] ^= 0x80
    sig = scheme.sign(alice.device.signing_seed, ctx.aad() + env.nonce + bytes(forged))
    await set_e2e(
        store, ids[2], dict(p, ciphertext=scheme.b64e(bytes(forged)), signature=scheme.b64e(sig))
    )
    got = texts(await bob.history(rid))
    assert got == [
        ("bad_signature", None),
        ("unknown_device", None),
        ("tampered", None),
        ("ok", "message 3"),
    ]


async def test_safety_numbers_and_a_reset_identity(edge: Edge, tmp_path: Path) -> None:
    alice = await person(edge, tmp_path, "alice")
    bob = await person(edge, tmp_path, "bob")
    number = await alice.safety_number(bob.user_id)
    assert number == await bob.safety_number(alice.user_id)
    assert len(number.replace(" ", "")) == 60 and number.count(" ") == 11
    # bob loses his device: a new one resets his list; alice sees the number change
    bob2 = await person(edge, tmp_path, "bob", register=False)
    assert bob2.status == "pending"
    await bob2.reset_devices()
    changed = await alice.safety_number(bob.user_id)
    assert changed != number and alice.identity_changes == [bob.user_id]
    assert changed == await bob2.safety_number(alice.user_id)


async def test_a_new_device_is_approved_reads_new_messages_and_old_ones_when_shared(
    edge: Edge, tmp_path: Path
) -> None:
    alice = await person(edge, tmp_path, "alice")
    bob = await person(edge, tmp_path, "bob")
    rid = int((await alice.create_room("devices", [bob.user_id]))["id"])
    await alice.send(rid, "old news")
    bob2 = await person(edge, tmp_path, "bob", register=False)
    assert bob2.status == "pending"
    (pending,) = await bob.pending_devices()
    assert pending.device_id == bob2.device_id
    assert bob.device_fingerprint(pending) == bob2.device_fingerprint()
    # unapproved: nobody seals to it, and it cannot sign anything others accept
    with pytest.raises(ShardchatError) as refused:
        await bob2.send(rid, "from an unapproved device")
    assert "senderDevice" in refused.value.message
    await bob.approve_device(bob2.device_id)
    assert await bob2.activate() == "active"
    # the next sender seals the current key to the new device; the old message stays closed
    await alice.send(rid, "fresh news")
    assert texts(await bob2.history(rid)) == [("no_key", None), ("ok", "fresh news")]
    assert await bob.share_history(bob2.device_id) >= 1
    assert texts(await bob2.history(rid)) == [("ok", "old news"), ("ok", "fresh news")]
    # bob2 rotates its encryption key: later keys are sealed to the new one, old ones still open
    await bob2.rotate_device_key()
    await alice.rotate_room_key(rid)
    await alice.send(rid, "third")
    assert [d.text for d in await bob2.history(rid)] == ["old news", "fresh news", "third"]
    assert bob2.device.key_version == 2
    # removing the device: later epochs are sealed without it
    await bob.remove_device(bob2.device_id)
    await alice.rotate_room_key(rid)
    assert await bob2.room_key(rid, 4) is None


async def test_the_directory_refuses_forged_or_conflicting_device_lists(
    edge: Edge, tmp_path: Path
) -> None:
    alice = await person(edge, tmp_path, "alice")
    mallory_device = scheme.new_device()
    head = (await alice.devices(alice.user_id)).chain
    entry = scheme.Device(
        mallory_device.device_id,
        mallory_device.signing_key,
        mallory_device.encryption_key(),
        1,
    )
    forged = scheme.DeviceList(
        alice.user_id,
        2,
        head.head_hash,
        False,  # not a reset: it claims an existing device signed it
        mallory_device.device_id,
        0,
        tuple(sorted([*head.head.devices, entry])),
    )
    signed = scheme.sign_device_list(forged, mallory_device)
    publish = "mutation($b: String!, $s: String!) { publishDeviceList(body: $b, signature: $s) }"
    variables = {"b": scheme.b64e(signed.body), "s": scheme.b64e(signed.signature)}
    with pytest.raises(ShardchatError) as bad:
        await alice.edge.graphql(publish, variables)
    assert bad.value.reason == "INVALID_DEVICE_LIST"
    # version 3 on top of 1: a gap
    gap = scheme.sign_device_list(
        scheme.DeviceList(
            alice.user_id, 3, head.head_hash, False, alice.device_id, 0, head.head.devices
        ),
        alice.device,
    )
    with pytest.raises(ShardchatError, match="version 3, expected 2"):
        await alice.edge.graphql(
            publish, {"b": scheme.b64e(gap.body), "s": scheme.b64e(gap.signature)}
        )
    # a list that the server serves altered is caught by the client against its pin
    store: Any = edge.chat.store
    async with store.transaction() as db:
        await db.execute("DELETE FROM device_lists WHERE user_id = ?", (alice.user_id,))
        await db.execute(
            "INSERT INTO device_lists VALUES (?, 1, ?, ?, 0)",
            (
                alice.user_id,
                signed.body.replace(b"\x00\x00\x00\x02", b"\x00\x00\x00\x01", 1),
                signed.signature,
            ),
        )
    with pytest.raises(E2EError):
        await alice.devices(alice.user_id, refresh=True)


async def test_rotation_must_cover_exactly_the_member_devices(edge: Edge, tmp_path: Path) -> None:
    alice = await person(edge, tmp_path, "alice")
    bob = await person(edge, tmp_path, "bob")
    carol = await person(edge, tmp_path, "carol")
    rid = int((await alice.create_room("cover", [bob.user_id]))["id"])
    rotate = (
        "mutation($r: ID!, $e: Int!, $m: [ID!]!, $d: String!, $k: [SealedRoomKeyInput!]!,"
        " $c: Int!) { rotateRoomKey(roomId: $r, epoch: $e, memberIds: $m, changes: $c,"
        " senderDevice: $d, keys: $k) }"
    )
    key = bytes(32)
    a_dev = (await alice.devices(alice.user_id)).chain.head.devices[0]
    b_dev = (await alice.devices(bob.user_id)).chain.head.devices[0]
    c_dev = (await alice.devices(carol.user_id)).chain.head.devices[0]
    mine = alice._seal(rid, 2, key, alice.user_id, a_dev)
    bobs = alice._seal(rid, 2, key, bob.user_id, b_dev)
    carols = alice._seal(rid, 2, key, carol.user_id, c_dev)
    changes = int((await alice.key_status(rid))["changes"])
    base = {"r": str(rid), "e": 2, "d": scheme.b64e(alice.device_id), "c": changes}
    members = [str(alice.user_id), str(bob.user_id)]

    async def reason(**v: Any) -> str | None:
        with pytest.raises(ShardchatError) as err:
            await alice.edge.graphql(rotate, {**base, **v})
        return err.value.reason

    assert await reason(m=members, k=[mine]) == "DEVICES_CHANGED"  # bob's device missing
    assert await reason(m=members, k=[mine, bobs, carols]) == "DEVICES_CHANGED"  # carol extra
    assert await reason(m=[*members, str(carol.user_id)], k=[mine, bobs, carols]) == (
        "MEMBERS_CHANGED"
    )
    assert await reason(m=members, k=[mine, bobs], e=5) == "STALE_EPOCH"
    assert await reason(m=members, k=[mine, bobs], c=changes - 1) == "MEMBERS_CHANGED"
    forged = dict(bobs, signature=scheme.b64e(bytes(64)))
    with pytest.raises(ShardchatError, match="signature does not verify"):
        await alice.edge.graphql(rotate, {**base, "m": members, "k": [mine, forged]})
    assert (await alice.edge.graphql(rotate, {**base, "m": members, "k": [mine, bobs]}))[
        "rotateRoomKey"
    ] == 2
    # a stranger gets nothing about the room
    with pytest.raises(ShardchatError) as stranger:
        await carol.key_status(rid)
    assert stranger.value.code == "NOT_FOUND"


async def test_encrypted_messages_keep_their_payload_through_the_history_cache(
    tmp_path: Path,
) -> None:
    """The cache rebuilds its page from committed events: it must carry ``encrypted`` through
    creates and edits and drop it on deletes, exactly as the Store does."""
    from chat_core.history_cache import CachedHistory
    from chat_core.service import ChatService
    from shardchat.adapters.memory_history_cache import MemoryHistoryCache
    from shardchat.adapters.sqlite_store import SqliteStore
    from shardchat.migrate import migrate
    from user_core.models import User

    store = SqliteStore(str(tmp_path / "cache.sqlite3"))
    await store.start()
    await migrate(store)
    cached = ChatService(store, history_cache=CachedHistory(MemoryHistoryCache(300.0), 20))
    plain = ChatService(store)
    try:
        for uid in (1, 2):
            assert await store.create_user(User(uid, f"u{uid}", 0), "x")
        room = await cached.create_room(1, "r", [2], encrypted=True)
        changes = (await store.get_room(room.id)).key_changes
        assert await store.rotate_room_key(room.id, 1, 1, [1, 2], changes, [], 0) == "ok"

        def payload(tag: int) -> dict[str, Any]:
            return {
                "ciphertext": scheme.b64e(bytes([tag]) * 40),
                "nonce": scheme.b64e(bytes(24)),
                "epoch": 1,
                "sender_device": scheme.b64e(bytes(16)),
                "signature": scheme.b64e(bytes(64)),
            }

        await cached.history(1, room.id, None, None, 20)  # the page is cached from here on
        ids = [
            (await cached.send_message(1, room.id, None, f"n{i}", encrypted=payload(i))).id
            for i in range(3)
        ]
        await cached.edit_message(1, ids[0], None, payload(9))
        await cached.delete_message(1, ids[1])
        got, _ = await cached.history(1, room.id, None, None, 20)
        want, _ = await plain.history(1, room.id, None, None, 20)
        assert got == want
        assert [m.encrypted for m in got] == [payload(2), None, payload(9)]
        # Attachments are refused in encrypted rooms (the server would have to read the file to
        # check it): a clear error, nothing stored.
        with pytest.raises(BadInput, match="not supported in end-to-end encrypted rooms"):
            await cached.send_message(1, room.id, None, "n-file", [7], encrypted=payload(5))
        assert await store.find_message(1, "n-file") is None
    finally:
        await cached.close()
        await plain.close()
        await store.close()
