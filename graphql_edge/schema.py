"""Build the executable schema: SDL plus the resolvers of graphql_edge.resolvers."""

from __future__ import annotations

from functools import cache

from graphql import GraphQLObjectType, GraphQLSchema, GraphQLUnionType, build_schema

from graphql_edge import resolvers
from graphql_edge.convert import event_typename
from graphql_edge.sdl import SDL


@cache
def build() -> GraphQLSchema:
    schema = build_schema(SDL)
    for type_name, fields in resolvers.RESOLVERS.items():
        gtype = schema.type_map[type_name]
        assert isinstance(gtype, GraphQLObjectType)
        for field_name, fn in fields.items():
            gtype.fields[field_name].resolve = fn
    sub = schema.subscription_type
    assert sub is not None
    sub.fields["roomEvents"].subscribe = resolvers.s_room_events
    sub.fields["roomEvents"].resolve = resolvers.s_identity
    union = schema.type_map["RoomEvent"]
    assert isinstance(union, GraphQLUnionType)
    union.resolve_type = lambda value, _info, _type: event_typename(value)
    return schema
