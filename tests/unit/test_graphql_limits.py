"""Schema-level pieces of the edge that need no services: parsing, validation, limits."""

from __future__ import annotations

import asyncio

import pytest
from graphql import GraphQLError

from graphql_edge.errors import error_code, format_error
from graphql_edge.loaders import DataLoader
from graphql_edge.pipeline import Pipeline, Prepared, Request
from graphql_edge.ratelimit import TokenBuckets
from graphql_edge.schema import build
from graphql_edge.settings import EdgeSettings, query_hash
from shardchat.errors import Forbidden

PAGE = """query($room: ID!, $n: Int) { messages(roomId: $room, limit: $n) { hasMore
  items { id seq content createdAt author { id username } reactions { emoji count me } } } }"""


def prepare(
    query: str, variables: dict[str, object] | None = None, **edge
) -> Prepared | list[GraphQLError]:
    pipeline = Pipeline(build(), EdgeSettings(**edge))
    return pipeline.prepare(Request(query, variables, None, None))


def codes(result: Prepared | list[GraphQLError]) -> list[str]:
    assert isinstance(result, list), result
    return [format_error(e)["extensions"]["code"] for e in result]


def test_a_typical_history_page_fits_the_default_cost():
    assert isinstance(prepare(PAGE, {"room": "1", "n": 50}), Prepared)


PAGE_WITH_FILES = """query($room: ID!, $n: Int) { messages(roomId: $room, limit: $n) {
  items { id content author { id username } reactions { emoji count me }
    attachments { id filename contentType size width height url downloadUrl thumbnailUrl } } } }"""


def test_a_history_page_with_attachments_fits_at_40_messages():
    # Attachments (up to 10 per message) count like reactions: docs/protocol.md section 11
    # advises pages of 40 messages when both are asked for.
    assert isinstance(prepare(PAGE_WITH_FILES, {"room": "1", "n": 40}), Prepared)
    assert codes(prepare(PAGE_WITH_FILES, {"room": "1", "n": 50})) == ["BAD_USER_INPUT"]


def test_cost_follows_the_limit_variable():
    result = prepare(PAGE, {"room": "1", "n": 500})
    assert codes(result) == ["BAD_USER_INPUT"]
    assert "cost" in result[0].message  # type: ignore[index]


def test_depth_limit():
    deep = "{ rooms { members { id } } }"
    assert isinstance(prepare(deep, max_depth=3), Prepared)
    result = prepare(deep, max_depth=2)
    assert codes(result) == ["BAD_USER_INPUT"]
    assert "depth 3" in result[0].message  # type: ignore[index]


def test_depth_counts_through_fragments():
    q = "query { ...F } fragment F on Query { rooms { ... on Room { members { id } } } }"
    assert codes(prepare(q, max_depth=2)) == ["BAD_USER_INPUT"]


def test_introspection_is_off_by_default_and_on_when_enabled():
    q = "{ __schema { queryType { name } } }"
    result = prepare(q)
    assert set(codes(result)) == {"BAD_USER_INPUT"}
    assert "introspection" in result[0].message.lower()  # type: ignore[index]
    assert isinstance(prepare(q, enable_introspection=True), Prepared)
    assert isinstance(prepare("{ __typename }"), Prepared)  # __typename is not introspection


def test_no_field_suggestions_unless_introspection_is_on():
    hidden = prepare("{ mee { id } }")
    assert "Did you mean" not in hidden[0].message  # type: ignore[index]
    shown = prepare("{ mee { id } }", enable_introspection=True)
    assert "Did you mean" in shown[0].message  # type: ignore[index]


def test_parse_errors_are_bad_user_input():
    assert codes(prepare("{ me { ")) == ["BAD_USER_INPUT"]


def test_token_cap():
    q = "{ " + " ".join(["__typename"] * 100) + " }"
    assert codes(prepare(q, max_tokens=50)) == ["BAD_USER_INPUT"]


def test_operation_selection():
    two = "query A { __typename } query B { __typename }"
    assert codes(prepare(two)) == ["BAD_USER_INPUT"]
    pipeline = Pipeline(build(), EdgeSettings())
    ok = pipeline.prepare(Request(two, None, "B", None))
    assert isinstance(ok, Prepared) and ok.kind == "query"
    assert isinstance(pipeline.prepare(Request(two, None, "C", None)), list)


def test_persisted_query_allow_list():
    allowed = "{ me { id } }"
    pipeline = Pipeline(build(), EdgeSettings(persisted_queries=frozenset({query_hash(allowed)})))
    assert isinstance(pipeline.prepare(Request(allowed, None, None, None)), Prepared)
    rejected = pipeline.prepare(Request("{ rooms { id } }", None, None, None))
    assert codes(rejected) == ["FORBIDDEN"]
    # after one full send, the hash alone is enough (Apollo APQ)
    ext = {"persistedQuery": {"version": 1, "sha256Hash": query_hash(allowed)}}
    assert isinstance(pipeline.prepare(Request(None, None, None, ext)), Prepared)
    unknown = {"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}}
    assert codes(pipeline.prepare(Request(None, None, None, unknown))) == ["BAD_USER_INPUT"]
    mismatch = {"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}}
    assert codes(pipeline.prepare(Request(allowed, None, None, mismatch))) == ["BAD_USER_INPUT"]


def test_error_codes_map_chat_errors_and_hide_internals():
    assert error_code(GraphQLError("x", original_error=Forbidden("no"))) == "FORBIDDEN"
    internal = format_error(GraphQLError("x", original_error=KeyError("secret")))
    assert internal == {"message": "internal error", "extensions": {"code": "INTERNAL"}}


def test_token_bucket_refills():
    now = [0.0]
    buckets = TokenBuckets(burst=2, rate=1.0, clock=lambda: now[0])
    assert buckets.allow("a") and buckets.allow("a")
    assert not buckets.allow("a")
    assert buckets.allow("b")
    now[0] = 1.0
    assert buckets.allow("a")
    assert not buckets.allow("a")


async def test_dataloader_batches_one_tick_and_caches():
    calls: list[list[int]] = []

    async def batch(keys: list[int]) -> dict[int, str]:
        calls.append(keys)
        return {k: str(k) for k in keys if k != 3}

    loader: DataLoader[int, str] = DataLoader(batch)

    async def nested(k: int) -> str | None:
        await asyncio.sleep(0)
        return await loader.load(k)

    got = await asyncio.gather(*(nested(k) for k in (1, 2, 3, 1)))
    assert got == ["1", "2", None, "1"]
    assert calls == [[1, 2, 3]]
    assert await loader.load(2) == "2" and len(calls) == 1


async def test_dataloader_propagates_errors_and_retries():
    fail = [True]

    async def batch(keys: list[int]) -> dict[int, int]:
        if fail[0]:
            raise RuntimeError("store down")
        return {k: k for k in keys}

    loader: DataLoader[int, int] = DataLoader(batch)
    with pytest.raises(RuntimeError):
        await loader.load(1)
    fail[0] = False
    assert await loader.load(1) == 1
