"""Field resolvers: thin glue from GraphQL arguments to AuthService/ChatService calls.

Business rules (membership, limits, idempotency) live in chat_core/user_core; here we only parse
ids, require a caller where the schema needs one, rate-limit mutations and shape results.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any

from graphql import GraphQLResolveInfo

from chat_core.e2e import KeyInput
from chat_core.events import attachment_url
from chat_core.files.service import ThumbnailPending
from chat_core.models import (
    Attachment,
    Invitation,
    Message,
    ReadState,
    Room,
    RoomEvent,
    SealedKey,
    Upload,
)
from graphql_edge.context import Context
from graphql_edge.convert import (
    b64_arg,
    encrypted_input,
    encrypted_object,
    event_object,
    iso_ms,
    parse_id,
)
from shardchat.e2e.scheme import DEVICE_ID_BYTES, SIGNATURE_BYTES, b64e
from shardchat.errors import BadInput, NotFound
from shardchat.keydirectory import DeviceListEntry, DeviceProposal
from shardchat.objectstore import PresignedPut
from shardchat.registry import GatewayRecord
from shardchat.tracing import start_span
from user_core.models import AuthTokens, SessionInfo, User

Resolver = Callable[..., Any]


def ctx_of(info: GraphQLResolveInfo) -> Context:
    ctx: Context = info.context
    return ctx


def mutation(fn: Callable[..., Awaitable[Any]]) -> Resolver:
    """Every mutation spends one token of the caller's bucket before doing anything."""

    @wraps(fn)
    async def wrapper(root: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
        ctx_of(info).take_mutation_token()
        return await fn(root, info, **args)

    return wrapper


def auth_mutation(fn: Callable[..., Awaitable[Any]]) -> Resolver:
    """Sign-in mutations spend a token of the client address's bucket (never the caller's
    user bucket); the per-account backoff of AuthService comes on top."""

    @wraps(fn)
    async def wrapper(root: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
        ctx_of(info).take_auth_token()
        return await fn(root, info, **args)

    return wrapper


# --- Query ------------------------------------------------------------------------------------


async def q_me(_: Any, info: GraphQLResolveInfo) -> User:
    ctx = ctx_of(info)
    user = await ctx.users.load(ctx.require_user())
    if user is None:
        raise NotFound("user not found")
    return user


async def q_user(_: Any, info: GraphQLResolveInfo, id: str) -> User | None:
    ctx = ctx_of(info)
    ctx.require_user()
    return await ctx.users.load(parse_id(id))


async def q_user_by_username(_: Any, info: GraphQLResolveInfo, username: str) -> User | None:
    ctx = ctx_of(info)
    ctx.require_user()
    return await ctx.services.auth.find_user(username)


async def q_public_rooms(
    _: Any, info: GraphQLResolveInfo, after: str | None = None, limit: int = 50
) -> list[Room]:
    ctx = ctx_of(info)
    ctx.require_user()
    cursor = parse_id(after, "after") if after is not None else None
    return await ctx.services.chat.public_rooms(cursor, limit)


async def q_invitations(_: Any, info: GraphQLResolveInfo) -> list[Invitation]:
    ctx = ctx_of(info)
    return await ctx.services.chat.invitations(ctx.require_user())


async def q_sessions(_: Any, info: GraphQLResolveInfo) -> list[dict[str, Any]]:
    ctx = ctx_of(info)
    me = ctx.require_principal()
    return [_session(s, s.id == me.session_id) for s in await ctx.services.auth.sessions(me)]


def _session(s: SessionInfo, current: bool) -> dict[str, Any]:
    return {
        "id": s.id,
        "createdAt": iso_ms(s.created_at_ms),
        "lastUsedAt": _opt_iso(s.last_used_at_ms),
        "client": s.client,
        "current": current,
    }


async def q_two_factor(_: Any, info: GraphQLResolveInfo) -> dict[str, Any]:
    ctx = ctx_of(info)
    enabled, left = await ctx.services.auth.two_factor_status(ctx.require_principal())
    return {"enabled": enabled, "recoveryCodesLeft": left}


async def q_rooms(_: Any, info: GraphQLResolveInfo) -> list[Room]:
    ctx = ctx_of(info)
    return await ctx.services.chat.list_rooms(ctx.require_user())


async def q_room(_: Any, info: GraphQLResolveInfo, id: str) -> Room | None:
    ctx = ctx_of(info)
    actor = ctx.require_user()
    try:
        return await ctx.services.chat.get_room(actor, parse_id(id))
    except NotFound:
        return None  # nullable field: null for an unknown room and for one the caller is not in


async def q_messages(
    _: Any,
    info: GraphQLResolveInfo,
    roomId: str,
    before: str | None = None,
    after: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    ctx = ctx_of(info)
    actor = ctx.require_user()
    items, has_more = await ctx.services.chat.history(
        actor,
        parse_id(roomId, "roomId"),
        parse_id(before, "before") if before is not None else None,
        parse_id(after, "after") if after is not None else None,
        limit,
    )
    return {"items": items, "hasMore": has_more}


async def q_gateway(_: Any, info: GraphQLResolveInfo, key: str | None = None) -> GatewayRecord:
    return await ctx_of(info).services.placement.choose(key)


async def q_search_users(
    _: Any, info: GraphQLResolveInfo, prefix: str, limit: int = 10
) -> list[User]:
    ctx = ctx_of(info)
    ctx.require_user()
    ctx.take_search_token()
    return await ctx.services.auth.search_users(prefix, limit)


# --- Mutation ---------------------------------------------------------------------------------


@auth_mutation
async def m_register(_: Any, info: GraphQLResolveInfo, username: str, password: str) -> AuthTokens:
    ctx = ctx_of(info)
    return await ctx.services.auth.register(username, password, ctx.client)


@auth_mutation
async def m_login(
    _: Any, info: GraphQLResolveInfo, username: str, password: str, totpCode: str | None = None
) -> AuthTokens:
    ctx = ctx_of(info)
    return await ctx.services.auth.login(username, password, totpCode, ctx.client)


@auth_mutation
async def m_refresh(_: Any, info: GraphQLResolveInfo, refreshToken: str) -> AuthTokens:
    return await ctx_of(info).services.auth.refresh(refreshToken)


@auth_mutation
async def m_logout(_: Any, info: GraphQLResolveInfo, refreshToken: str) -> bool:
    return await ctx_of(info).services.auth.logout(refreshToken)


@mutation
async def m_revoke_session(_: Any, info: GraphQLResolveInfo, id: str) -> bool:
    ctx = ctx_of(info)
    return await ctx.services.auth.revoke_session(ctx.require_principal(), id)


@auth_mutation
async def m_change_password(
    _: Any, info: GraphQLResolveInfo, currentPassword: str, newPassword: str
) -> AuthTokens:
    ctx = ctx_of(info)
    me = ctx.require_principal()
    return await ctx.services.auth.change_password(me, currentPassword, newPassword, ctx.client)


@auth_mutation
async def m_begin_two_factor(_: Any, info: GraphQLResolveInfo, password: str) -> dict[str, str]:
    ctx = ctx_of(info)
    secret, uri = await ctx.services.auth.begin_two_factor(ctx.require_principal(), password)
    return {"secret": secret, "otpauthUri": uri}


@auth_mutation
async def m_confirm_two_factor(_: Any, info: GraphQLResolveInfo, code: str) -> list[str]:
    ctx = ctx_of(info)
    return await ctx.services.auth.confirm_two_factor(ctx.require_principal(), code)


@auth_mutation
async def m_disable_two_factor(_: Any, info: GraphQLResolveInfo, code: str) -> bool:
    ctx = ctx_of(info)
    return await ctx.services.auth.disable_two_factor(ctx.require_principal(), code)


@mutation
async def m_create_room(
    _: Any,
    info: GraphQLResolveInfo,
    name: str,
    memberIds: list[str] | None = None,
    public: bool | None = False,
    encrypted: bool | None = False,
) -> Room:
    ctx = ctx_of(info)
    actor = ctx.require_user()
    members = [parse_id(m, "memberIds") for m in memberIds or ()]
    return await ctx.services.chat.create_room(
        actor, name, members, public=bool(public), encrypted=bool(encrypted)
    )


@mutation
async def m_open_direct_room(_: Any, info: GraphQLResolveInfo, userId: str) -> Room:
    ctx = ctx_of(info)
    return await ctx.services.chat.open_direct_room(ctx.require_user(), parse_id(userId, "userId"))


@mutation
async def m_invite(_: Any, info: GraphQLResolveInfo, roomId: str, userIds: list[str]) -> list[str]:
    ctx = ctx_of(info)
    users = [parse_id(u, "userIds") for u in userIds]
    invited = await ctx.services.chat.invite(ctx.require_user(), parse_id(roomId, "roomId"), users)
    return [str(u) for u in invited]


@mutation
async def m_accept_invitation(_: Any, info: GraphQLResolveInfo, roomId: str) -> Room:
    ctx = ctx_of(info)
    return await ctx.services.chat.accept_invitation(ctx.require_user(), parse_id(roomId, "roomId"))


@mutation
async def m_decline_invitation(_: Any, info: GraphQLResolveInfo, roomId: str) -> bool:
    ctx = ctx_of(info)
    return await ctx.services.chat.decline_invitation(
        ctx.require_user(), parse_id(roomId, "roomId")
    )


@mutation
async def m_remove_member(_: Any, info: GraphQLResolveInfo, roomId: str, userId: str) -> bool:
    ctx = ctx_of(info)
    return await ctx.services.chat.remove_member(
        ctx.require_user(), parse_id(roomId, "roomId"), parse_id(userId, "userId")
    )


@mutation
async def m_set_member_role(
    _: Any, info: GraphQLResolveInfo, roomId: str, userId: str, role: str
) -> bool:
    ctx = ctx_of(info)
    return await ctx.services.chat.set_member_role(
        ctx.require_user(), parse_id(roomId, "roomId"), parse_id(userId, "userId"), role.lower()
    )


@mutation
async def m_join_room(_: Any, info: GraphQLResolveInfo, roomId: str) -> Room:
    ctx = ctx_of(info)
    return await ctx.services.chat.join_room(ctx.require_user(), parse_id(roomId, "roomId"))


@mutation
async def m_leave_room(_: Any, info: GraphQLResolveInfo, roomId: str) -> bool:
    ctx = ctx_of(info)
    return await ctx.services.chat.leave_room(ctx.require_user(), parse_id(roomId, "roomId"))


@mutation
async def m_send(
    _: Any,
    info: GraphQLResolveInfo,
    roomId: str,
    nonce: str,
    content: str | None = None,
    attachmentIds: list[str] | None = None,
    encrypted: dict[str, Any] | None = None,
) -> Message:
    # The root of a message's trace when tracing is on (a shared no-op when off): ChatService
    # stores its context with the event and the gateways continue it at delivery.
    with start_span("sendMessage"):
        ctx = ctx_of(info)
        actor = ctx.require_user()
        room_id = parse_id(roomId, "roomId")
        files = [parse_id(a, "attachmentIds") for a in attachmentIds or ()]
        return await ctx.services.chat.send_message(
            actor, room_id, content, nonce, files, encrypted_input(encrypted)
        )


@mutation
async def m_create_upload(
    _: Any,
    info: GraphQLResolveInfo,
    roomId: str,
    filename: str,
    contentType: str,
    size: int,
    sha256: str,
) -> tuple[Upload, PresignedPut]:
    ctx = ctx_of(info)
    actor = ctx.require_user()
    room_id = parse_id(roomId, "roomId")
    return await ctx.require_files().create_upload(
        actor, room_id, filename, contentType, size, sha256
    )


@mutation
async def m_edit(
    _: Any,
    info: GraphQLResolveInfo,
    id: str,
    content: str | None = None,
    encrypted: dict[str, Any] | None = None,
) -> Message:
    ctx = ctx_of(info)
    return await ctx.services.chat.edit_message(
        ctx.require_user(), parse_id(id), content, encrypted_input(encrypted)
    )


@mutation
async def m_delete(_: Any, info: GraphQLResolveInfo, id: str) -> bool:
    ctx = ctx_of(info)
    return await ctx.services.chat.delete_message(ctx.require_user(), parse_id(id))


@mutation
async def m_add_reaction(_: Any, info: GraphQLResolveInfo, messageId: str, emoji: str) -> bool:
    ctx = ctx_of(info)
    mid = parse_id(messageId, "messageId")
    return await ctx.services.chat.add_reaction(ctx.require_user(), mid, emoji)


@mutation
async def m_remove_reaction(_: Any, info: GraphQLResolveInfo, messageId: str, emoji: str) -> bool:
    ctx = ctx_of(info)
    mid = parse_id(messageId, "messageId")
    return await ctx.services.chat.remove_reaction(ctx.require_user(), mid, emoji)


@mutation
async def m_mark_read(_: Any, info: GraphQLResolveInfo, roomId: str, seq: int) -> ReadState:
    ctx = ctx_of(info)
    return await ctx.services.chat.mark_read(ctx.require_user(), parse_id(roomId, "roomId"), seq)


@mutation
async def m_set_room_muted(_: Any, info: GraphQLResolveInfo, roomId: str, muted: bool) -> ReadState:
    ctx = ctx_of(info)
    room_id = parse_id(roomId, "roomId")
    return await ctx.services.chat.set_room_muted(ctx.require_user(), room_id, muted)


# --- end-to-end encryption: key directory and sealed room keys (docs/e2e.md) -------------------


async def q_device_list(
    _: Any, info: GraphQLResolveInfo, userId: str, afterVersion: int = 0
) -> list[DeviceListEntry]:
    ctx = ctx_of(info)
    ctx.require_user()
    return await ctx.services.chat.keys.device_lists(parse_id(userId, "userId"), afterVersion)


async def q_device_proposals(_: Any, info: GraphQLResolveInfo) -> list[DeviceProposal]:
    ctx = ctx_of(info)
    return await ctx.services.chat.keys.proposals(ctx.require_user())


async def q_room_keys(
    _: Any, info: GraphQLResolveInfo, roomId: str, deviceId: str, afterEpoch: int = 0
) -> list[SealedKey]:
    ctx = ctx_of(info)
    return await ctx.services.chat.keys.room_keys(
        ctx.require_user(),
        parse_id(roomId, "roomId"),
        b64_arg(deviceId, "deviceId", DEVICE_ID_BYTES),
        afterEpoch,
    )


async def q_room_key_status(_: Any, info: GraphQLResolveInfo, roomId: str) -> dict[str, Any]:
    ctx = ctx_of(info)
    st = await ctx.services.chat.keys.key_status(ctx.require_user(), parse_id(roomId, "roomId"))
    return {
        "epoch": st.epoch,
        "rotationDue": st.rotation_due,
        "changes": st.changes,
        "memberIds": [str(u) for u in st.member_ids],
        "missing": [
            {"userId": str(u), "deviceId": b64e(d), "keyVersion": v} for u, d, v in st.missing
        ],
    }


@mutation
async def m_publish_device_list(_: Any, info: GraphQLResolveInfo, body: str, signature: str) -> int:
    ctx = ctx_of(info)
    return await ctx.services.chat.keys.publish_device_list(
        ctx.require_user(), b64_arg(body, "body"), b64_arg(signature, "signature", SIGNATURE_BYTES)
    )


@mutation
async def m_propose_device(_: Any, info: GraphQLResolveInfo, body: str, signature: str) -> bool:
    ctx = ctx_of(info)
    await ctx.services.chat.keys.propose_device(
        ctx.require_user(), b64_arg(body, "body"), b64_arg(signature, "signature", SIGNATURE_BYTES)
    )
    return True


def _key_inputs(keys: list[dict[str, Any]]) -> list[KeyInput]:
    return [
        KeyInput(
            parse_id(k["userId"], "userId"),
            b64_arg(k["deviceId"], "deviceId", DEVICE_ID_BYTES),
            k["keyVersion"],
            b64_arg(k["sealed"], "sealed"),
            b64_arg(k["signature"], "signature", SIGNATURE_BYTES),
        )
        for k in keys
    ]


@mutation
async def m_rotate_room_key(
    _: Any,
    info: GraphQLResolveInfo,
    roomId: str,
    epoch: int,
    memberIds: list[str],
    changes: int,
    senderDevice: str,
    keys: list[dict[str, Any]],
) -> int:
    ctx = ctx_of(info)
    return await ctx.services.chat.keys.rotate_room_key(
        ctx.require_user(),
        parse_id(roomId, "roomId"),
        epoch,
        [parse_id(m, "memberIds") for m in memberIds],
        changes,
        b64_arg(senderDevice, "senderDevice", DEVICE_ID_BYTES),
        _key_inputs(keys),
    )


@mutation
async def m_share_room_keys(
    _: Any,
    info: GraphQLResolveInfo,
    roomId: str,
    epoch: int,
    senderDevice: str,
    keys: list[dict[str, Any]],
) -> int:
    ctx = ctx_of(info)
    return await ctx.services.chat.keys.share_room_keys(
        ctx.require_user(),
        parse_id(roomId, "roomId"),
        epoch,
        b64_arg(senderDevice, "senderDevice", DEVICE_ID_BYTES),
        _key_inputs(keys),
    )


def _b64_attr(name: str) -> Resolver:
    return _attr(name, b64e)


# --- Subscription -----------------------------------------------------------------------------


async def s_room_events(
    _: Any, info: GraphQLResolveInfo, roomId: str, afterSeq: int | None = None
) -> AsyncIterator[Any]:
    """Checks run here, before the stream exists, so a non-member gets a GraphQL ``error``
    message (FORBIDDEN) instead of a stream that dies on its first item."""
    ctx = ctx_of(info)
    actor = ctx.require_user()
    room_id = parse_id(roomId, "roomId")
    if afterSeq is not None and afterSeq < 0:
        raise BadInput("afterSeq must be >= 0")
    await ctx.services.chat.get_room(actor, room_id)  # NotFound for non-members too
    events = ctx.services.events
    if events is None:
        raise RuntimeError("subscriptions are not configured on this edge")
    return _as_objects(events.subscribe(room_id, afterSeq), str(actor))


async def _as_objects(source: AsyncIterator[RoomEvent], subscriber: str) -> AsyncIterator[Any]:
    """The events as union members, up to and including the subscriber's own MEMBER_LEAVE (a
    leave or a removal): then the stream ends, so nothing later of the room reaches them."""
    try:
        async for event in source:
            yield event_object(event)
            if event.type == "MEMBER_LEAVE" and event.data.get("user_id") == subscriber:
                return
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


def s_identity(event: Any, _info: GraphQLResolveInfo, **_args: Any) -> Any:
    return event


# --- object fields ----------------------------------------------------------------------------


async def user_status(user: User, info: GraphQLResolveInfo) -> str:
    """Live presence for the caller and users sharing a room with them; "offline" to anyone
    else (as the gateway sends PRESENCE_UPDATE only to users sharing a room)."""
    ctx = ctx_of(info)
    if ctx.user_id is None or not await ctx.shared.load(user.id):
        return "offline"
    status = await ctx.statuses.load(user.id)
    if status is None or (status == "invisible" and user.id != ctx.user_id):
        return "offline"
    return status


async def room_my_role(room: Room, info: GraphQLResolveInfo) -> str:
    ctx = ctx_of(info)
    return (await ctx.services.chat.member_role(ctx.require_user(), room.id)).upper()


async def room_member_roles(room: Room, info: GraphQLResolveInfo) -> list[dict[str, Any]]:
    ctx = ctx_of(info)
    roles = await ctx.services.chat.member_roles(ctx.require_user(), room.id)
    users = await ctx.users.load_many([uid for uid, _ in roles])
    return [
        {"user": u, "role": role.upper()}
        for u, (_, role) in zip(users, roles, strict=True)
        if u is not None
    ]


async def invitation_inviter(inv: Invitation, info: GraphQLResolveInfo) -> User:
    user = await ctx_of(info).users.load(inv.inviter_id)
    if user is None:
        raise NotFound("inviter not found")
    return user


async def room_members(room: Room, info: GraphQLResolveInfo) -> list[User]:
    ctx = ctx_of(info)
    ids = await ctx.members.load(room.id) or []
    users = await ctx.users.load_many(ids)
    return [u for u in users if u is not None]


async def message_author(message: Message, info: GraphQLResolveInfo) -> User:
    user = await ctx_of(info).users.load(message.author_id)
    if user is None:
        raise NotFound("author not found")
    return user


def room_read_state(name: str) -> Resolver:
    """A field of the caller's ReadState of the room (one batched Store call per request)."""

    async def resolve(room: Room, info: GraphQLResolveInfo) -> Any:
        state = await ctx_of(info).read_states.load(room.id)
        if state is None:  # not a member (any more): nothing read, nothing new
            state = ReadState(room.id, 0, 0, 0, False)
        return getattr(state, name)

    return resolve


async def attachment_download_url(a: Attachment, info: GraphQLResolveInfo) -> str:
    # Only members ever get a Message (history and subscriptions check): sign at once.
    return await ctx_of(info).require_files().presign(a)


async def attachment_thumbnail_url(a: Attachment, info: GraphQLResolveInfo) -> str | None:
    ctx = ctx_of(info)
    upload = await ctx.uploads.load(a.id)  # one query for a page's attachments
    if upload is None:
        return None
    try:
        return await ctx.require_files().presign(a, thumbnail=True, thumb=upload.thumb)
    except (ThumbnailPending, NotFound):
        return None  # not made yet (ask again, or GET /files/{id}/thumbnail) or never


def _upload_field(fn: Callable[[Upload, PresignedPut], Any]) -> Resolver:
    def resolve(obj: tuple[Upload, PresignedPut], _info: GraphQLResolveInfo) -> Any:
        return fn(*obj)

    return resolve


def _ids(values: Any) -> list[str]:
    return [str(v) for v in values]


def _attr(name: str, fmt: Callable[[Any], Any] = lambda v: v) -> Resolver:
    def resolve(obj: Any, _info: GraphQLResolveInfo) -> Any:
        return fmt(getattr(obj, name))

    return resolve


def _opt_iso(ms: int | None) -> str | None:
    return None if ms is None else iso_ms(ms)


RESOLVERS: dict[str, dict[str, Resolver]] = {
    "Query": {
        "me": q_me,
        "user": q_user,
        "userByUsername": q_user_by_username,
        "rooms": q_rooms,
        "room": q_room,
        "publicRooms": q_public_rooms,
        "invitations": q_invitations,
        "sessions": q_sessions,
        "twoFactor": q_two_factor,
        "deviceList": q_device_list,
        "deviceProposals": q_device_proposals,
        "roomKeys": q_room_keys,
        "roomKeyStatus": q_room_key_status,
        "messages": q_messages,
        "gateway": q_gateway,
        "searchUsers": q_search_users,
    },
    "Mutation": {
        "register": m_register,
        "login": m_login,
        "refreshToken": m_refresh,
        "logout": m_logout,
        "revokeSession": m_revoke_session,
        "changePassword": m_change_password,
        "beginTwoFactorSetup": m_begin_two_factor,
        "confirmTwoFactor": m_confirm_two_factor,
        "disableTwoFactor": m_disable_two_factor,
        "createRoom": m_create_room,
        "openDirectRoom": m_open_direct_room,
        "joinRoom": m_join_room,
        "leaveRoom": m_leave_room,
        "inviteToRoom": m_invite,
        "acceptInvitation": m_accept_invitation,
        "declineInvitation": m_decline_invitation,
        "removeMember": m_remove_member,
        "setMemberRole": m_set_member_role,
        "sendMessage": m_send,
        "createUpload": m_create_upload,
        "editMessage": m_edit,
        "deleteMessage": m_delete,
        "addReaction": m_add_reaction,
        "removeReaction": m_remove_reaction,
        "markRead": m_mark_read,
        "setRoomMuted": m_set_room_muted,
        "publishDeviceList": m_publish_device_list,
        "proposeDevice": m_propose_device,
        "rotateRoomKey": m_rotate_room_key,
        "shareRoomKeys": m_share_room_keys,
    },
    "AuthPayload": {
        "accessToken": _attr("access_token"),
        "refreshToken": _attr("refresh_token"),
        "expiresIn": _attr("expires_in"),
        "user": _attr("user"),
    },
    "User": {"id": _attr("id", str), "status": user_status},
    "Room": {
        "id": _attr("id", str),
        "lastSeq": _attr("last_seq"),
        "members": room_members,
        "myRole": room_my_role,
        "memberRoles": room_member_roles,
        "lastReadSeq": room_read_state("last_read_seq"),
        "unreadCount": room_read_state("unread_count"),
        "mentionCount": room_read_state("mention_count"),
        "muted": room_read_state("muted"),
        "keyEpoch": _attr("key_epoch"),
        "keyRotationDue": _attr("key_rotation_due"),
    },
    "Invitation": {
        "roomId": _attr("room_id", str),
        "roomName": _attr("room_name"),
        "inviter": invitation_inviter,
        "createdAt": _attr("created_at_ms", iso_ms),
    },
    "ReadState": {
        "roomId": _attr("room_id", str),
        "lastReadSeq": _attr("last_read_seq"),
        "unreadCount": _attr("unread_count"),
        "mentionCount": _attr("mention_count"),
    },
    "Message": {
        "id": _attr("id", str),
        "roomId": _attr("room_id", str),
        "authorId": _attr("author_id", str),
        "author": message_author,
        "createdAt": _attr("created_at_ms", iso_ms),
        "editedAt": _attr("edited_at_ms", _opt_iso),
        "reactions": _attr("reactions", list),
        "mentions": _attr("mentions", _ids),
        "attachments": _attr("attachments", list),
        "encrypted": _attr("encrypted", encrypted_object),
    },
    "Attachment": {
        "id": _attr("id", str),
        "contentType": _attr("content_type"),
        "url": _attr("id", attachment_url),
        "downloadUrl": attachment_download_url,
        "thumbnailUrl": attachment_thumbnail_url,
    },
    "Upload": {
        "id": _upload_field(lambda u, _: str(u.id)),
        "url": _upload_field(lambda _, put: put.url),
        "method": _upload_field(lambda _, put: put.method),
        "headers": _upload_field(
            lambda _, put: [{"name": k, "value": v} for k, v in put.headers.items()]
        ),
        "expiresAt": _upload_field(lambda _, put: iso_ms(put.expires_at_ms)),
    },
    "SignedDeviceList": {
        "userId": _attr("user_id", str),
        "body": _b64_attr("body"),
        "signature": _b64_attr("signature"),
        "createdAt": _attr("created_at_ms", iso_ms),
    },
    "DeviceProposal": {
        "deviceId": _b64_attr("device_id"),
        "body": _b64_attr("body"),
        "signature": _b64_attr("signature"),
        "createdAt": _attr("created_at_ms", iso_ms),
    },
    "SealedRoomKey": {
        "roomId": _attr("room_id", str),
        "userId": _attr("user_id", str),
        "deviceId": _b64_attr("device_id"),
        "keyVersion": _attr("key_version"),
        "senderId": _attr("sender_id", str),
        "senderDevice": _b64_attr("sender_device"),
        "sealed": _b64_attr("sealed"),
        "signature": _b64_attr("signature"),
    },
    "GatewayInfo": {"gatewayId": _attr("gateway_id")},
}
