"""KeyService: the server's rules of end-to-end encrypted rooms (docs/e2e.md sections 4-6).

The server cannot read a room key or forge a device list; what it does here is keep garbage
out (each device list version and sealed-key statement is checked exactly as a client will
check it) and keep the epoch rules: a rotation must seal the new key to every device of every
current member and to nobody else, and a key is shared after the fact only with devices of
current members (or, for an earlier epoch, with the sharer's own devices). Clients check
everything again; nothing here is trusted by them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from chat_core.models import Room, SealedKey
from shardchat.config import Settings
from shardchat.e2e import scheme
from shardchat.errors import BadInput, NotFound
from shardchat.keydirectory import DeviceListEntry, DeviceProposal, KeyDirectory
from shardchat.store import Store

MAX_PROPOSALS = 5  # pending proposals kept per user
MAX_KEYS_PAGE = 1000
MemberRoom = Callable[[int, int], Awaitable[tuple[Room, str]]]


class KeyInput(msgspec.Struct, frozen=True):
    """One sealed key as a client sends it (``rotateRoomKey``, ``shareRoomKeys``)."""

    user_id: int
    device_id: bytes
    key_version: int
    sealed: bytes
    signature: bytes


class KeyStatus(msgspec.Struct, frozen=True):
    """``missing``: ``(user_id, device_id, key_version)`` of member devices without a key of
    the current epoch (none before the first rotation)."""

    epoch: int
    rotation_due: bool
    changes: int  # Room.key_changes: what a rotation names
    member_ids: list[int]
    missing: list[tuple[int, bytes, int]]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _head(entry: DeviceListEntry) -> scheme.VerifiedChain:
    """The stored head as the base the next version is checked against (its signature was
    checked when it was stored; the anchor is a client's concern)."""
    signed = scheme.SignedDeviceList(entry.body, entry.signature)
    return scheme.VerifiedChain(scheme.decode_device_list(entry.body), signed.hash, b"", 0)


def _devices(entry: DeviceListEntry | None) -> tuple[scheme.Device, ...]:
    return () if entry is None else scheme.decode_device_list(entry.body).devices


class KeyService:
    def __init__(
        self,
        store: Store,
        keys: KeyDirectory,
        settings: Settings,
        member_room: MemberRoom,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.store = store
        self.keys = keys
        self.settings = settings
        self._member_room = member_room
        self._clock_ms = clock_ms

    # --- the key directory ------------------------------------------------------------------
    async def publish_device_list(self, actor: int, body: bytes, signature: bytes) -> int:
        """Append the actor's next device list version (docs/e2e.md 4.1); its version."""
        head = (await self.keys.heads([actor])).get(actor)
        try:
            checked = scheme.check_next(
                scheme.SignedDeviceList(body, signature),
                actor,
                None if head is None else _head(head),
            )
        except scheme.SchemeError as exc:
            raise BadInput(f"invalid device list: {exc}", reason="INVALID_DEVICE_LIST") from None
        version = checked.head.version
        if not await self.keys.append_device_list(
            actor, version, body, signature, self._clock_ms()
        ):
            raise BadInput(
                "the device list changed meanwhile: build on the new head",
                reason="DEVICE_LIST_CONFLICT",
            )
        await self.keys.drop_proposals(actor, [d.device_id for d in checked.head.devices])
        # A device came, went or changed its key: each of the actor's encrypted rooms needs a
        # new epoch, so a removed device reads nothing later and a new one nothing earlier.
        await self.store.mark_key_changes(actor)
        return version

    async def device_lists(self, user_id: int, after_version: int = 0) -> list[DeviceListEntry]:
        """Public keys: anyone signed in may read anyone's chain (it holds no secret)."""
        if after_version < 0:
            raise BadInput("afterVersion must be >= 0")
        return await self.keys.device_lists(user_id, after_version)

    async def propose_device(self, actor: int, body: bytes, signature: bytes) -> None:
        try:
            device = scheme.check_proposal(body, signature, actor)
        except scheme.SchemeError as exc:
            raise BadInput(f"invalid device proposal: {exc}") from None
        head = (await self.keys.heads([actor])).get(actor)
        if any(d.device_id == device.device_id for d in _devices(head)):
            raise BadInput("this device is in the device list already")
        await self.keys.put_proposal(
            actor, device.device_id, body, signature, self._clock_ms(), MAX_PROPOSALS
        )

    async def proposals(self, actor: int) -> list[DeviceProposal]:
        return await self.keys.proposals(actor)

    # --- room keys --------------------------------------------------------------------------
    async def _encrypted_room(self, actor: int, room_id: int) -> Room:
        room, _ = await self._member_room(actor, room_id)
        if not room.encrypted:
            raise BadInput("this room is not end-to-end encrypted")
        return room

    async def _signer(self, actor: int, sender_device: bytes) -> scheme.Device:
        head = (await self.keys.heads([actor])).get(actor)
        for d in _devices(head):
            if d.device_id == sender_device:
                return d
        raise BadInput("senderDevice is not in your device list")

    def _check_keys(
        self,
        room_id: int,
        epoch: int,
        actor: int,
        signer: scheme.Device,
        keys: Sequence[KeyInput],
    ) -> list[SealedKey]:
        """Signature and sizes of each statement, as a recipient will check them."""
        if len(keys) > self.settings.e2e_max_sealed_keys:
            raise BadInput(f"at most {self.settings.e2e_max_sealed_keys} keys per request")
        out = []
        for k in keys:
            sealed = SealedKey(
                room_id, epoch, k.user_id, k.device_id, k.key_version, actor,
                signer.device_id, k.sealed, k.signature,
            )  # fmt: skip
            if len(k.sealed) != scheme.SEALED_KEY_BYTES:
                raise BadInput(f"sealed must be {scheme.SEALED_KEY_BYTES} bytes")
            statement = scheme.KeyStatement(*msgspec.structs.astuple(sealed)[:8])
            if not scheme.verify(signer.signing_key, statement.encode(), k.signature):
                raise BadInput("a sealed key's signature does not verify")
            out.append(sealed)
        return out

    async def rotate_room_key(
        self,
        actor: int,
        room_id: int,
        epoch: int,
        member_ids: Sequence[int],
        changes: int,
        sender_device: bytes,
        keys: Sequence[KeyInput],
    ) -> int:
        """Move the room to ``epoch`` (current + 1) with ``keys`` sealed to exactly the devices
        of ``member_ids``, which must be the current members, as of ``changes`` (the
        ``key_changes`` the caller saw in ``key_status``; docs/e2e.md 6.1)."""
        room = await self._encrypted_room(actor, room_id)
        if epoch != room.key_epoch + 1:
            raise BadInput(f"the room is at epoch {room.key_epoch}", reason="STALE_EPOCH")
        signer = await self._signer(actor, sender_device)
        sealed = self._check_keys(room_id, epoch, actor, signer, keys)
        heads = await self.keys.heads(member_ids)
        lacking = [u for u in member_ids if u not in heads]
        if lacking:
            raise BadInput(
                f"member(s) without device keys: {', '.join(map(str, lacking))}",
                reason="NO_DEVICE_KEYS",
            )
        want = {(u, d.device_id, d.key_version) for u in member_ids for d in _devices(heads[u])}
        got = [(k.user_id, k.device_id, k.key_version) for k in keys]
        if set(got) != want or len(got) != len(want):
            missing = len(want - set(got))
            raise BadInput(
                f"keys must cover every member device exactly once ({missing} missing,"
                f" {len(got) - len(want) + missing} extra or repeated)",
                reason="DEVICES_CHANGED",
            )
        status = await self.store.rotate_room_key(
            room_id, actor, epoch, member_ids, changes, sealed, self._clock_ms()
        )
        if status == "stale_epoch":
            raise BadInput("someone rotated first: fetch the new key", reason="STALE_EPOCH")
        if status == "members_changed":
            raise BadInput(
                "the members or their devices changed: rotate again", reason="MEMBERS_CHANGED"
            )
        if status != "ok":
            raise NotFound("room not found")
        return epoch

    async def share_room_keys(
        self,
        actor: int,
        room_id: int,
        epoch: int,
        sender_device: bytes,
        keys: Sequence[KeyInput],
    ) -> int:
        """Seal an epoch key to devices that lack it: at the current epoch any current member's
        device; at an earlier one only the actor's own devices. Returns how many were new."""
        room = await self._encrypted_room(actor, room_id)
        if not 1 <= epoch <= room.key_epoch:
            raise BadInput(f"epoch must be from 1 to {room.key_epoch}")
        signer = await self._signer(actor, sender_device)
        sealed = self._check_keys(room_id, epoch, actor, signer, keys)
        allowed = await self.store.members_of(room_id) if epoch == room.key_epoch else [actor]
        heads = await self.keys.heads(allowed)
        devices = {(u, d.device_id, d.key_version) for u in heads for d in _devices(heads[u])}
        for k in keys:
            if (k.user_id, k.device_id, k.key_version) not in devices:
                raise BadInput(
                    "a key for a device that is not a current member's"
                    + ("" if epoch == room.key_epoch else " (earlier epochs: your own devices)")
                )
        return await self.store.add_room_keys(sealed, self._clock_ms())

    async def room_keys(
        self, actor: int, room_id: int, device_id: bytes, after_epoch: int = 0
    ) -> list[SealedKey]:
        await self._encrypted_room(actor, room_id)
        if after_epoch < 0:
            raise BadInput("afterEpoch must be >= 0")
        return await self.store.room_keys(room_id, actor, device_id, after_epoch, MAX_KEYS_PAGE)

    async def key_status(self, actor: int, room_id: int) -> KeyStatus:
        room = await self._encrypted_room(actor, room_id)
        members = await self.store.members_of(room_id)
        missing: list[tuple[int, bytes, int]] = []
        if room.key_epoch > 0:
            holders = await self.store.room_key_holders(room_id, room.key_epoch)
            heads = await self.keys.heads(members)
            missing = [
                (u, d.device_id, d.key_version)
                for u in members
                for d in _devices(heads.get(u))
                if (u, d.device_id) not in holders
            ]
        return KeyStatus(room.key_epoch, room.key_rotation_due, room.key_changes, members, missing)
