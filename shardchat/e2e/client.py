"""The Python client of end-to-end encrypted rooms (docs/e2e.md section 8).

``E2EClient(edge, key_dir)`` wraps a logged-in ``EdgeClient``. ``await setup()`` loads this
machine's device for the user (or creates it: Ed25519 + X25519 from libsodium's CSPRNG, saved to
the 0600 key file) and publishes it: the genesis of the user's device list, or a proposal that
another device of the user approves (``approve_device``). Then ``create_room(encrypted=True)``,
``send``/``edit`` encrypt, ``decrypt``/``history`` decrypt and report tampering, and
``safety_number`` gives the number two users compare. Every device list is verified here from
version 1 (the server's checks are not trusted) and pinned in the key file.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import nacl.utils

from shardchat.client import EdgeClient, ShardchatError
from shardchat.e2e import scheme
from shardchat.e2e.keyfile import DeviceState, KeyFile, Pin

#: Server refusals after which a send re-checks the room's key and tries again.
_RETRY_REASONS = frozenset({"ROTATION_DUE", "STALE_EPOCH", "MEMBERS_CHANGED", "DEVICES_CHANGED"})
_SEND_ATTEMPTS = 4


class E2EError(Exception):
    """A device list or key that does not verify, a rollback or fork of a pinned list, or a
    device that is not (yet) usable. Never a reason to show unverified content."""


class Decrypted(msgspec.Struct, frozen=True):
    """One message as a reader sees it: ``status`` ``ok`` with ``text``, or why not (docs/e2e.md
    section 6.2: unknown_device, bad_signature, no_key, tampered). ``deleted`` tombstones and
    plain (unencrypted) messages come back ``ok`` with their content."""

    message_id: int
    author_id: int
    status: scheme.Status
    text: str | None
    epoch: int = 0


class Verified(msgspec.Struct, frozen=True):
    """A user's verified chain: the current devices, every device any version listed (old
    messages of a since-removed device still verify), the anchor and whether it changed."""

    chain: scheme.VerifiedChain
    ever: dict[bytes, scheme.Device]
    anchor_changed: bool


DeviceStatus = Literal["active", "pending"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _field(d: Mapping[str, Any], snake: str, camel: str) -> Any:
    """Gateway events use snake_case, GraphQL objects camelCase: accept both."""
    return d[snake] if snake in d else d.get(camel)


class E2EClient:
    def __init__(self, edge: EdgeClient, key_dir: str | Path | None = None) -> None:
        if edge.session is None:
            raise E2EError("log in first")
        self.edge = edge
        self.user_id = int(edge.session.user["id"])
        self.keyfile = KeyFile(key_dir, self.user_id)
        self.state: DeviceState | None = None
        self.status: DeviceStatus = "pending"
        #: users whose anchor changed since this device pinned them (show "safety number changed")
        self.identity_changes: list[int] = []
        self._chains: dict[int, Verified] = {}

    # --- the device ---------------------------------------------------------------------------
    @property
    def device(self) -> scheme.DeviceSecrets:
        if self.state is None:
            raise E2EError("call setup() first")
        s = self.state
        return scheme.DeviceSecrets(s.device_id, s.signing_seed, dict(s.encryption_secrets))

    @property
    def device_id(self) -> bytes:
        return self.device.device_id

    def _own_entry(self) -> scheme.Device:
        d = self.device
        return scheme.Device(d.device_id, d.signing_key, d.encryption_key(), d.key_version)

    def _save(self) -> None:
        assert self.state is not None
        self.keyfile.save(self.state)

    async def setup(self) -> DeviceStatus:
        """Load or create this machine's device and make sure the directory knows it."""
        self.state = self.keyfile.load()
        if self.state is None:
            fresh = scheme.new_device()
            self.state = DeviceState(
                self.user_id, fresh.device_id, fresh.signing_seed, dict(fresh.encryption_secrets)
            )
            self._save()
        entries = await self._chain_entries(self.user_id)
        if not entries:
            await self._publish(self._next_list(None, [self._own_entry()], reset=True))
        else:
            mine = await self.devices(self.user_id, refresh=True)
            if mine.chain.head.device(self.device_id) is None:
                await self._propose()
                self.status = "pending"
                return self.status
        self.status = "active"
        return self.status

    def _next_list(
        self,
        head: scheme.VerifiedChain | None,
        devices: Sequence[scheme.Device],
        *,
        reset: bool = False,
    ) -> scheme.SignedDeviceList:
        dl = scheme.DeviceList(
            self.user_id,
            1 if head is None else head.head.version + 1,
            bytes(32) if head is None else head.head_hash,
            reset or head is None,
            self.device_id,
            _now_ms(),
            tuple(sorted(devices)),
        )
        return scheme.sign_device_list(dl, self.device)

    async def _publish(self, entry: scheme.SignedDeviceList) -> int:
        q = "mutation($b: String!, $s: String!) { publishDeviceList(body: $b, signature: $s) }"
        data = await self.edge.graphql(
            q, {"b": scheme.b64e(entry.body), "s": scheme.b64e(entry.signature)}
        )
        self._chains.pop(self.user_id, None)
        await self.devices(self.user_id, refresh=True)  # re-verify and pin what we wrote
        return int(data["publishDeviceList"])

    async def _propose(self) -> None:
        body = scheme.encode_proposal(self.user_id, self._own_entry(), _now_ms())
        sig = scheme.sign(self.device.signing_seed, body)
        q = "mutation($b: String!, $s: String!) { proposeDevice(body: $b, signature: $s) }"
        await self.edge.graphql(q, {"b": scheme.b64e(body), "s": scheme.b64e(sig)})

    async def activate(self) -> DeviceStatus:
        """After another device approved this one: ``active`` once it is in the list."""
        mine = await self.devices(self.user_id, refresh=True)
        self.status = "active" if mine.chain.head.device(self.device_id) else "pending"
        return self.status

    def device_fingerprint(self, device: scheme.Device | None = None) -> str:
        """30 digits to compare between two screens when approving a device (docs/e2e.md 4.4)."""
        key = device.signing_key if device is not None else self.device.signing_key
        return scheme.grouped(scheme.fingerprint(key, self.user_id))

    async def pending_devices(self) -> list[scheme.Device]:
        """The user's devices asking to be added, each checked (its proof of possession)."""
        q = "{ deviceProposals { deviceId body signature } }"
        out = []
        for p in (await self.edge.graphql(q))["deviceProposals"]:
            body, sig = scheme.b64d(p["body"]), scheme.b64d(p["signature"])
            try:
                out.append(scheme.check_proposal(body, sig, self.user_id))
            except scheme.SchemeError:
                continue  # a proposal that does not verify is never offered
        return out

    async def approve_device(self, device_id: bytes) -> int:
        """Add a proposed device to the list (after the user compared its fingerprint)."""
        proposed = {d.device_id: d for d in await self.pending_devices()}
        if device_id not in proposed:
            raise E2EError("no such pending device")
        mine = await self.devices(self.user_id, refresh=True)
        devices = [*mine.chain.head.devices, proposed[device_id]]
        return await self._publish(self._next_list(mine.chain, devices))

    async def remove_device(self, device_id: bytes) -> int:
        mine = await self.devices(self.user_id, refresh=True)
        devices = [d for d in mine.chain.head.devices if d.device_id != device_id]
        if len(devices) == len(mine.chain.head.devices):
            raise E2EError("no such device in the list")
        return await self._publish(self._next_list(mine.chain, devices))

    async def reset_devices(self) -> int:
        """Start the list again with this device alone (every other device is dropped; everyone
        who knew this user sees their safety number change)."""
        mine = await self.devices(self.user_id, refresh=True)
        version = await self._publish(self._next_list(mine.chain, [self._own_entry()], reset=True))
        self.status = "active"
        return version

    async def rotate_device_key(self) -> int:
        """A new X25519 key for this device (key_version + 1); old secrets are kept so keys
        sealed to them still open."""
        assert self.state is not None
        version = self.device.key_version + 1
        self.state.encryption_secrets[version] = nacl.utils.random(scheme.KEY_BYTES)
        self._save()
        mine = await self.devices(self.user_id, refresh=True)
        others = [d for d in mine.chain.head.devices if d.device_id != self.device_id]
        return await self._publish(self._next_list(mine.chain, [*others, self._own_entry()]))

    # --- other users' devices -----------------------------------------------------------------
    async def _chain_entries(self, user_id: int) -> list[scheme.SignedDeviceList]:
        q = "query($u: ID!) { deviceList(userId: $u) { version body signature } }"
        rows = (await self.edge.graphql(q, {"u": str(user_id)}))["deviceList"]
        return [
            scheme.SignedDeviceList(scheme.b64d(r["body"]), scheme.b64d(r["signature"]))
            for r in rows
        ]

    async def devices(self, user_id: int, *, refresh: bool = False) -> Verified:
        """The user's verified device list, checked from version 1 against this device's pin."""
        if not refresh and user_id in self._chains:
            return self._chains[user_id]
        entries = await self._chain_entries(user_id)
        if not entries:
            raise E2EError(f"user {user_id} has no device keys")
        try:
            chain = scheme.verify_chain(entries, user_id)
        except scheme.SchemeError as exc:
            raise E2EError(f"device list of user {user_id} does not verify: {exc}") from None
        assert self.state is not None
        pin = self.state.pins.get(user_id)
        changed = False
        if pin is not None:
            if chain.head.version < pin.version:
                raise E2EError(f"device list of user {user_id} rolled back")
            if entries[pin.version - 1].hash != pin.head_hash:
                raise E2EError(f"device list of user {user_id} forked")
            changed = chain.anchor != pin.anchor
            if changed and user_id not in self.identity_changes:
                self.identity_changes.append(user_id)
        self.state.pins[user_id] = Pin(chain.anchor, chain.head.version, chain.head_hash)
        self._save()
        ever: dict[bytes, scheme.Device] = {}
        for e in entries:
            ever.update((d.device_id, d) for d in scheme.decode_device_list(e.body).devices)
        verified = Verified(chain, ever, changed)
        self._chains[user_id] = verified
        return verified

    async def safety_number(self, other_user_id: int) -> str:
        """60 digits (12 groups of 5) both users see alike; compare them out of band."""
        mine = await self.devices(self.user_id)
        theirs = await self.devices(other_user_id, refresh=True)
        digits = scheme.safety_number(
            self.user_id, mine.chain.anchor, other_user_id, theirs.chain.anchor
        )
        return scheme.grouped(digits)

    # --- rooms and their keys -----------------------------------------------------------------
    async def create_room(
        self, name: str, member_ids: Sequence[int] = (), *, public: bool = False
    ) -> dict[str, Any]:
        """An encrypted room, with its first key (epoch 1) sealed to every member device."""
        q = (
            "mutation($n: String!, $m: [ID!], $p: Boolean) { createRoom(name: $n, memberIds: $m,"
            " public: $p, encrypted: true) { id name lastSeq encrypted keyEpoch } }"
        )
        variables = {"n": name, "m": [str(m) for m in member_ids], "p": public}
        room = dict((await self.edge.graphql(q, variables))["createRoom"])
        room["keyEpoch"] = await self.rotate_room_key(int(room["id"]))
        return room

    async def key_status(self, room_id: int) -> dict[str, Any]:
        q = (
            "query($r: ID!) { roomKeyStatus(roomId: $r) { epoch rotationDue changes memberIds"
            " missing { userId deviceId keyVersion } } }"
        )
        return dict((await self.edge.graphql(q, {"r": str(room_id)}))["roomKeyStatus"])

    def _seal(
        self, room_id: int, epoch: int, key: bytes, user_id: int, device: scheme.Device
    ) -> dict[str, Any]:
        sealed = scheme.seal_room_key(key, device.encryption_key)
        statement = scheme.KeyStatement(
            room_id, epoch, user_id, device.device_id, device.key_version,
            self.user_id, self.device_id, sealed,
        )  # fmt: skip
        return {
            "userId": str(user_id),
            "deviceId": scheme.b64e(device.device_id),
            "keyVersion": device.key_version,
            "sealed": scheme.b64e(sealed),
            "signature": scheme.b64e(scheme.sign(self.device.signing_seed, statement.encode())),
        }

    def _keep_key(self, room_id: int, epoch: int, key: bytes) -> None:
        assert self.state is not None
        self.state.room_keys.setdefault(room_id, {})[epoch] = key
        self._save()

    async def rotate_room_key(self, room_id: int) -> int:
        """A new epoch key sealed to every device of every current member; the new epoch."""
        status = await self.key_status(room_id)
        members = [int(u) for u in status["memberIds"]]
        epoch = int(status["epoch"]) + 1
        key = nacl.utils.random(scheme.KEY_BYTES)
        keys = []
        for uid in members:
            for device in (await self.devices(uid, refresh=True)).chain.head.devices:
                keys.append(self._seal(room_id, epoch, key, uid, device))
        q = (
            "mutation($r: ID!, $e: Int!, $m: [ID!]!, $c: Int!, $d: String!,"
            " $k: [SealedRoomKeyInput!]!) { rotateRoomKey(roomId: $r, epoch: $e, memberIds: $m,"
            " changes: $c, senderDevice: $d, keys: $k) }"
        )
        variables = {
            "r": str(room_id),
            "e": epoch,
            "m": [str(m) for m in members],
            "c": int(status["changes"]),
            "d": scheme.b64e(self.device_id),
            "k": keys,
        }
        await self.edge.graphql(q, variables)
        self._keep_key(room_id, epoch, key)
        return epoch

    async def _share(
        self, room_id: int, epoch: int, key: bytes, to: Sequence[dict[str, Any]]
    ) -> int:
        q = (
            "mutation($r: ID!, $e: Int!, $d: String!, $k: [SealedRoomKeyInput!]!)"
            " { shareRoomKeys(roomId: $r, epoch: $e, senderDevice: $d, keys: $k) }"
        )
        variables = {"r": str(room_id), "e": epoch, "d": scheme.b64e(self.device_id), "k": to}
        return int((await self.edge.graphql(q, variables))["shareRoomKeys"])

    async def ensure_key(self, room_id: int) -> int:
        """The epoch to send under: rotate when one is due (or this device lacks the current
        key), and seal the current key to member devices that have none yet (new devices)."""
        status = await self.key_status(room_id)
        epoch = int(status["epoch"])
        key = await self.room_key(room_id, epoch) if epoch > 0 else None
        if status["rotationDue"] or key is None:
            return await self.rotate_room_key(room_id)
        to = []
        for m in status["missing"]:
            uid, device_id = int(m["userId"]), scheme.b64d(m["deviceId"])
            device = (await self.devices(uid, refresh=True)).chain.head.device(device_id)
            if device is not None:  # only devices the user's own devices signed in
                to.append(self._seal(room_id, epoch, key, uid, device))
        if to:
            await self._share(room_id, epoch, key, to)
        return epoch

    async def share_history(self, device_id: bytes) -> int:
        """Seal every epoch key this device can open, in every encrypted room it is in, to
        another device of the same user (which then reads old messages too). Returns how many
        keys were stored."""
        device = (await self.devices(self.user_id, refresh=True)).chain.head.device(device_id)
        if device is None:
            raise E2EError("that device is not in your device list")
        rooms = (await self.edge.graphql("{ rooms { id encrypted } }"))["rooms"]
        shared = 0
        for room in rooms:
            if not room["encrypted"]:
                continue
            room_id = int(room["id"])
            for epoch, key in sorted((await self._fetch_keys(room_id, 0)).items()):
                sealed = self._seal(room_id, epoch, key, self.user_id, device)
                shared += await self._share(room_id, epoch, key, [sealed])
        return shared

    async def room_key(self, room_id: int, epoch: int) -> bytes | None:
        """The epoch key, from the key file or opened from the server's sealed keys (each
        checked: the sealing device must be in its user's verified device list)."""
        assert self.state is not None
        held = self.state.room_keys.get(room_id, {}).get(epoch)
        if held is not None:
            return held
        return (await self._fetch_keys(room_id, epoch - 1)).get(epoch)

    async def _fetch_keys(self, room_id: int, after_epoch: int) -> dict[int, bytes]:
        """Open (and keep) this device's sealed keys of the room after ``after_epoch``; all the
        keys held for the room afterwards."""
        assert self.state is not None
        q = (
            "query($r: ID!, $d: String!, $a: Int) { roomKeys(roomId: $r, deviceId: $d,"
            " afterEpoch: $a) { epoch userId deviceId keyVersion senderId senderDevice sealed"
            " signature } }"
        )
        variables = {"r": str(room_id), "d": scheme.b64e(self.device_id), "a": after_epoch}
        try:
            rows = (await self.edge.graphql(q, variables))["roomKeys"]
        except ShardchatError:
            rows = []  # not a member (any more): no key from the server
        held = self.state.room_keys.setdefault(room_id, {})
        for row in rows:
            epoch = int(row["epoch"])
            if epoch not in held:
                key = await self._open(room_id, row)
                if key is not None:
                    held[epoch] = key
        self._save()
        return dict(held)

    async def _open(self, room_id: int, row: Mapping[str, Any]) -> bytes | None:
        sender_id = int(row["senderId"])
        sender = (await self.devices(sender_id)).ever.get(scheme.b64d(row["senderDevice"]))
        if sender is None:
            sender = (await self.devices(sender_id, refresh=True)).ever.get(
                scheme.b64d(row["senderDevice"])
            )
        version = int(row["keyVersion"])
        secret = self.device.encryption_secrets.get(version)
        if sender is None or secret is None:
            return None
        sealed = scheme.b64d(row["sealed"])
        statement = scheme.KeyStatement(
            room_id, int(row["epoch"]), self.user_id, self.device_id, version,
            sender_id, sender.device_id, sealed,
        )  # fmt: skip
        if not scheme.verify(sender.signing_key, statement.encode(), scheme.b64d(row["signature"])):
            return None
        return scheme.open_room_key(sealed, secret)

    # --- messages -----------------------------------------------------------------------------
    async def encrypt(
        self, room_id: int, text: str, nonce: str, *, epoch: int | None = None
    ) -> dict[str, Any]:
        """The ``encrypted`` payload of a new message (gateway SEND form, snake_case)."""
        epoch = epoch if epoch is not None else await self.ensure_key(room_id)
        ctx = scheme.MessageContext.create(room_id, epoch, self.user_id, self.device_id, nonce)
        return await self._seal_message(room_id, ctx, text)

    async def _seal_message(
        self, room_id: int, ctx: scheme.MessageContext, text: str
    ) -> dict[str, Any]:
        key = await self.room_key(room_id, ctx.epoch)
        if key is None:
            raise E2EError(f"no key of epoch {ctx.epoch} for room {room_id}")
        nonce = nacl.utils.random(scheme.AEAD_NONCE_BYTES)
        env = scheme.encrypt_message(ctx, scheme.encode_plaintext(text), key, self.device, nonce)
        return env.wire()

    async def _store(
        self,
        room_id: int,
        ctx: Callable[[int], scheme.MessageContext],
        text: str,
        op: str,
        variables: dict[str, Any],
    ) -> dict[str, Any]:
        """Encrypt under the room's current epoch and run ``op`` (a mutation taking ``$e``);
        when the server answers an epoch reason (someone rotated, a member or device changed
        meanwhile), check the key again and retry."""
        for attempt in range(_SEND_ATTEMPTS):
            wire = await self._seal_message(room_id, ctx(await self.ensure_key(room_id)), text)
            try:
                payload = {"e": scheme.wire_to_graphql(wire)}
                data = await self.edge.graphql(op, variables | payload)
                return dict(next(iter(data.values())))
            except ShardchatError as exc:
                if exc.reason not in _RETRY_REASONS or attempt == _SEND_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def send(self, room_id: int, text: str, nonce: str | None = None) -> dict[str, Any]:
        """Encrypt and send over GraphQL; rotates or shares the room key first when needed."""
        nonce = nonce or secrets.token_hex(8)
        op = (
            "mutation($r: ID!, $n: String!, $e: EncryptedPayloadInput) { sendMessage(roomId: $r,"
            " nonce: $n, encrypted: $e) { id roomId seq authorId content nonce createdAt"
            " editedAt deleted encrypted { ciphertext nonce epoch senderDevice signature } } }"
        )

        def ctx(epoch: int) -> scheme.MessageContext:
            return scheme.MessageContext.create(room_id, epoch, self.user_id, self.device_id, nonce)

        return await self._store(room_id, ctx, text, op, {"r": str(room_id), "n": nonce})

    async def edit(self, room_id: int, message_id: int, text: str) -> dict[str, Any]:
        op = (
            "mutation($i: ID!, $e: EncryptedPayloadInput) { editMessage(id: $i, encrypted: $e)"
            " { id editedAt encrypted { ciphertext nonce epoch senderDevice signature } } }"
        )

        def ctx(epoch: int) -> scheme.MessageContext:
            return scheme.MessageContext.edit(
                room_id, epoch, self.user_id, self.device_id, message_id
            )

        return await self._store(room_id, ctx, text, op, {"i": str(message_id)})

    async def decrypt(
        self, message: Mapping[str, Any], *, author_id: int | None = None, edited: bool = False
    ) -> Decrypted:
        """A message as a GraphQL ``Message`` (``editedAt`` tells an edit) or a gateway
        MESSAGE_CREATE / MESSAGE_UPDATE ``d`` (pass ``edited=True`` and the ``author_id``, which
        MESSAGE_UPDATE does not carry)."""
        mid = int(message["id"])
        room_id = int(_field(message, "room_id", "roomId"))
        author = (
            author_id if author_id is not None else int(_field(message, "author_id", "authorId"))
        )
        wire = message.get("encrypted")
        if wire is None:
            return Decrypted(mid, author, "ok", str(message.get("content", "")))
        sender_device = _field(wire, "sender_device", "senderDevice")
        try:
            env = scheme.envelope_from_wire({**wire, "sender_device": sender_device}, 1 << 24)
        except scheme.SchemeError:
            return Decrypted(mid, author, "tampered", None)
        if edited or _field(message, "edited_at", "editedAt"):
            ctx = scheme.MessageContext.edit(room_id, env.epoch, author, env.sender_device, mid)
        else:
            nonce = str(message.get("nonce") or "")
            if not 1 <= len(nonce.encode()) <= scheme.MAX_SEND_NONCE_BYTES:
                return Decrypted(mid, author, "tampered", None, env.epoch)
            ctx = scheme.MessageContext.create(room_id, env.epoch, author, env.sender_device, nonce)
        try:
            known = (await self.devices(author)).ever
            if env.sender_device not in known:
                known = (await self.devices(author, refresh=True)).ever
        except E2EError:
            known = {}
        key = await self.room_key(room_id, env.epoch)
        status, text = scheme.open_message(ctx, env, known.get(env.sender_device), key)
        return Decrypted(mid, author, status, text, env.epoch)

    async def history(self, room_id: int, limit: int = 50) -> list[Decrypted]:
        """The newest messages, oldest first, decrypted (deleted ones left out)."""
        q = (
            "query($r: ID!, $l: Int) { messages(roomId: $r, limit: $l) { items { id roomId"
            " authorId content nonce editedAt deleted encrypted { ciphertext nonce epoch"
            " senderDevice signature } } } }"
        )
        items = (await self.edge.graphql(q, {"r": str(room_id), "l": limit}))["messages"]["items"]
        return [await self.decrypt(m) for m in reversed(items) if not m["deleted"]]
