"""The GraphQL edge: queries, mutations and subscriptions over HTTP and graphql-transport-ws,
gateway discovery and the static web client. See ``graphql_edge.app.create_app``."""

from graphql_edge.app import create_app
from graphql_edge.settings import EdgeSettings, query_hash

__all__ = ["EdgeSettings", "create_app", "query_hash"]
