"""Field resolvers: thin glue from GraphQL arguments to AuthService/ChatService calls.

Business rules (membership, limits, idempotency) live in chat_core/user_core; here we only parse
ids, require a caller where the schema needs one, rate-limit mutations and shape results.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any

from graphql import GraphQLResolveInfo

from chat_core.models import Message, Room, RoomEvent
from graphql_edge.context import Context
from graphql_edge.convert import event_object, iso_ms, parse_id
from shardchat.errors import BadInput, NotFound
from shardchat.registry import GatewayRecord
from shardchat.tracing import start_span
from user_core.models import AuthTokens, User

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


async def q_rooms(_: Any, info: GraphQLResolveInfo) -> list[Room]:
    ctx = ctx_of(info)
    return await ctx.services.chat.list_rooms(ctx.require_user())


async def q_room(_: Any, info: GraphQLResolveInfo, id: str) -> Room | None:
    ctx = ctx_of(info)
    actor = ctx.require_user()
    try:
        return await ctx.services.chat.get_room(actor, parse_id(id))
    except NotFound:
        return None  # nullable field: an unknown room is null; a non-member still gets FORBIDDEN


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


# --- Mutation ---------------------------------------------------------------------------------


@mutation
async def m_register(_: Any, info: GraphQLResolveInfo, username: str, password: str) -> AuthTokens:
    return await ctx_of(info).services.auth.register(username, password)


@mutation
async def m_login(_: Any, info: GraphQLResolveInfo, username: str, password: str) -> AuthTokens:
    return await ctx_of(info).services.auth.login(username, password)


@mutation
async def m_refresh(_: Any, info: GraphQLResolveInfo, refreshToken: str) -> AuthTokens:
    return await ctx_of(info).services.auth.refresh(refreshToken)


@mutation
async def m_logout(_: Any, info: GraphQLResolveInfo, refreshToken: str) -> bool:
    return await ctx_of(info).services.auth.logout(refreshToken)


@mutation
async def m_create_room(
    _: Any, info: GraphQLResolveInfo, name: str, memberIds: list[str] | None = None
) -> Room:
    ctx = ctx_of(info)
    actor = ctx.require_user()
    members = [parse_id(m, "memberIds") for m in memberIds or ()]
    return await ctx.services.chat.create_room(actor, name, members)


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
    _: Any, info: GraphQLResolveInfo, roomId: str, content: str, nonce: str
) -> Message:
    # The root of a message's trace when tracing is on (a shared no-op when off): ChatService
    # stores its context with the event and the gateways continue it at delivery.
    with start_span("sendMessage"):
        ctx = ctx_of(info)
        actor = ctx.require_user()
        room_id = parse_id(roomId, "roomId")
        return await ctx.services.chat.send_message(actor, room_id, content, nonce)


@mutation
async def m_edit(_: Any, info: GraphQLResolveInfo, id: str, content: str) -> Message:
    ctx = ctx_of(info)
    return await ctx.services.chat.edit_message(ctx.require_user(), parse_id(id), content)


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
    await ctx.services.chat.get_room(actor, room_id)  # NotFound / Forbidden
    events = ctx.services.events
    if events is None:
        raise RuntimeError("subscriptions are not configured on this edge")
    return _as_objects(events.subscribe(room_id, afterSeq))


async def _as_objects(source: AsyncIterator[RoomEvent]) -> AsyncIterator[Any]:
    try:
        async for event in source:
            yield event_object(event)
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


def s_identity(event: Any, _info: GraphQLResolveInfo, **_args: Any) -> Any:
    return event


# --- object fields ----------------------------------------------------------------------------


async def user_status(user: User, info: GraphQLResolveInfo) -> str:
    ctx = ctx_of(info)
    status = await ctx.statuses.load(user.id)
    if status is None or (status == "invisible" and user.id != ctx.user_id):
        return "offline"
    return status


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
        "rooms": q_rooms,
        "room": q_room,
        "messages": q_messages,
        "gateway": q_gateway,
    },
    "Mutation": {
        "register": m_register,
        "login": m_login,
        "refreshToken": m_refresh,
        "logout": m_logout,
        "createRoom": m_create_room,
        "joinRoom": m_join_room,
        "leaveRoom": m_leave_room,
        "sendMessage": m_send,
        "editMessage": m_edit,
        "deleteMessage": m_delete,
        "addReaction": m_add_reaction,
        "removeReaction": m_remove_reaction,
    },
    "AuthPayload": {
        "accessToken": _attr("access_token"),
        "refreshToken": _attr("refresh_token"),
        "expiresIn": _attr("expires_in"),
        "user": _attr("user"),
    },
    "User": {"id": _attr("id", str), "status": user_status},
    "Room": {"id": _attr("id", str), "lastSeq": _attr("last_seq"), "members": room_members},
    "Message": {
        "id": _attr("id", str),
        "roomId": _attr("room_id", str),
        "authorId": _attr("author_id", str),
        "author": message_author,
        "createdAt": _attr("created_at_ms", iso_ms),
        "editedAt": _attr("edited_at_ms", _opt_iso),
        "reactions": _attr("reactions", list),
    },
    "GatewayInfo": {"gatewayId": _attr("gateway_id")},
}
