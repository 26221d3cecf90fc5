"""graphql-core directly vs Ariadne: CPU cost of executing the edge's operations.

    python -m loadtest.graphql_libs [--seconds S] [--out loadtest/results/graphql_libs.json]

Why the GraphQL edge uses graphql-core directly (graphql_edge/app.py), by measurement. One
process, no network, no ASGI layer: shardchat's real SDL (``graphql_edge.sdl.SDL``) and the
edge's real resolvers (``graphql_edge.resolvers.RESOLVERS``) over in-memory services, bound two
ways and executed the same way a request reaches them:

- ``graphql-core``: the edge's own schema (``graphql_edge.schema.build``), the document parsed
  and validated once and then taken from the cache of ``graphql_edge.pipeline.Pipeline``, run
  with ``graphql.execute`` and shaped by ``graphql_edge.outcome.result_body``: the edge's path
  minus its depth/cost check, which an Ariadne edge would need too.
- ``ariadne``: ``ariadne.make_executable_schema`` with ``QueryType``/``MutationType``/
  ``ObjectType``/``SubscriptionType``/``UnionType`` bindings of the same resolvers, each
  operation through ``ariadne.graphql(schema, data)`` as Ariadne's server calls it: it parses
  and validates every request (introspection off, as on the edge).
- ``ariadne-cached``: the same, with the ``query_parser`` and ``query_validator`` hooks Ariadne
  offers (and its ASGI app exposes) serving a cached document and its cached validation result,
  so the remaining difference to ``graphql-core`` is Ariadne's own per-request layer (the
  memoized parser and validator that Ariadne's ``QueryValidator`` documentation suggests).
- ``graphql-core-uncached``: a control, graphql-core parsing and validating every request like
  ``ariadne``: it tells the parse/validate cache apart from the library.

Operations are those of ``loadtest.edge`` (``sendMessage`` returning ``{ id seq }``, a
``messages`` page of 50 items) and ``me``+``rooms`` (a DataLoader-backed ``me`` and a 3-room
list). Every operation gets a new request Context, as on the edge. All variants return the same
response body (tests/unit/test_graphql_libs.py checks it).

Measure: executions per CPU-second of this process (``time.process_time``, so other load on the
machine does not count), median of 5 samples of ``--seconds`` CPU-seconds each, after a warm-up
of half a sample that is not counted. Samples are interleaved round-robin over the variants and
operations, and each starts after ``gc.collect()`` with the collector enabled at its default
thresholds, so drift and GC state are shared alike. One event loop (uvloop, as the edge runs)
for the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from inspect import isawaitable
from pathlib import Path
from typing import Any, cast

import ariadne
import uvloop
from ariadne import (
    MutationType,
    ObjectType,
    QueryType,
    SubscriptionType,
    UnionType,
    make_executable_schema,
)
from ariadne.types import SchemaBindable
from graphql import (
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    TypeInfo,
    execute,
    parse,
    validate,
)
from graphql.validation import ASTValidationRule

from chat_core.models import Invitation, Message, ReadState, Room, RoomEvent
from graphql_edge import resolvers
from graphql_edge.context import Context, Services
from graphql_edge.convert import event_typename
from graphql_edge.outcome import result_body
from graphql_edge.pipeline import Pipeline
from graphql_edge.ports import Keys
from graphql_edge.ratelimit import TokenBuckets
from graphql_edge.schema import build
from graphql_edge.sdl import SDL
from graphql_edge.settings import EdgeSettings
from loadtest.edge import HISTORY, SEND
from shardchat.registry import GatewayRecord
from user_core.models import AuthTokens, SessionInfo, User
from user_core.tokens import Principal

DEFAULT_OUT = "loadtest/results/graphql_libs.json"
SAMPLES = 5
WARMUP_FRACTION = 0.5  # of one sample's CPU time, per variant and operation, not counted
BATCH = 10  # operations between two clock reads

USER_ID = 1001
ROOM_ID = 2001
PAGE = 50
ME_ROOMS = "query { me { id username status } rooms { id name lastSeq } }"

LIBRARIES = ("graphql-core", "ariadne", "ariadne-cached", "graphql-core-uncached")
BASELINE = "graphql-core"


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    query: str
    variables: dict[str, Any] | None

    @property
    def data(self) -> dict[str, Any]:
        """The request body, as decoded from JSON."""
        return {"query": self.query, "variables": self.variables}


OPERATIONS = (
    Operation("sendMessage", SEND, {"r": str(ROOM_ID), "c": "hello, world", "n": "nonce-1"}),
    Operation("messages", HISTORY, {"r": str(ROOM_ID)}),
    Operation("me+rooms", ME_ROOMS, None),
)


# --- in-memory services -----------------------------------------------------------------------


def _unused(what: str) -> NotImplementedError:
    return NotImplementedError(f"{what} is not part of the benchmark")


class MemoryAuth:
    def __init__(self) -> None:
        self.users = {USER_ID: User(id=USER_ID, username="bench", created_at_ms=1_700_000_000_000)}

    async def register(self, username: str, password: str, client: str | None = None) -> AuthTokens:
        raise _unused("register")

    async def login(
        self,
        username: str,
        password: str,
        totp_code: str | None = None,
        client: str | None = None,
    ) -> AuthTokens:
        raise _unused("login")

    async def refresh(self, refresh_token: str) -> AuthTokens:
        raise _unused("refresh")

    async def logout(self, refresh_token: str) -> bool:
        raise _unused("logout")

    async def authenticate(self, token: str) -> Principal:
        raise _unused("authenticate")

    async def check_revoked(self, principal: Principal) -> None:
        raise _unused("check_revoked")

    async def sessions(self, actor: Principal) -> list[SessionInfo]:
        raise _unused("sessions")

    async def revoke_session(self, actor: Principal, session_id: str) -> bool:
        raise _unused("revoke_session")

    async def change_password(
        self, actor: Principal, current: str, new: str, client: str | None = None
    ) -> AuthTokens:
        raise _unused("change_password")

    async def begin_two_factor(self, actor: Principal, password: str) -> tuple[str, str]:
        raise _unused("begin_two_factor")

    async def confirm_two_factor(self, actor: Principal, code: str) -> list[str]:
        raise _unused("confirm_two_factor")

    async def disable_two_factor(self, actor: Principal, code: str) -> bool:
        raise _unused("disable_two_factor")

    async def two_factor_status(self, actor: Principal) -> tuple[bool, int]:
        raise _unused("two_factor_status")

    async def find_user(self, username: str) -> User | None:
        raise _unused("find_user")

    async def get_user(self, user_id: int) -> User | None:
        return self.users.get(user_id)

    async def get_users(self, user_ids: Sequence[int]) -> dict[int, User]:
        return {i: self.users[i] for i in user_ids if i in self.users}

    async def search_users(self, prefix: str, limit: int = 10) -> list[User]:
        raise _unused("search_users")


class MemoryChat:
    """Constant answers: every call does the same work, so all samples measure the same thing."""

    def __init__(self) -> None:
        base = 1_700_000_000_000
        self.page = [
            Message(
                id=900_000 + seq,
                room_id=ROOM_ID,
                seq=seq,
                author_id=USER_ID,
                content=f"message number {seq}",
                nonce=None,
                created_at_ms=base + seq,
            )
            for seq in range(1000, 1000 - PAGE, -1)  # newest first, as ChatService.history
        ]
        self.rooms = [
            Room(id=ROOM_ID + i, name=f"room-{i}", last_seq=1000 + i, created_at_ms=base)
            for i in range(3)
        ]

    @property
    def keys(self) -> Keys:
        raise _unused("keys")

    async def send_message(
        self,
        actor: int,
        room_id: int,
        content: str | None,
        nonce: str,
        attachment_ids: Sequence[int] = (),
        encrypted: dict[str, Any] | None = None,
    ) -> Message:
        return Message(
            id=901_001,
            room_id=room_id,
            seq=1001,
            author_id=actor,
            content=content or "",
            nonce=nonce,
            created_at_ms=1_700_000_001_001,
        )

    async def history(
        self, actor: int, room_id: int, before: int | None, after: int | None, limit: int = 50
    ) -> tuple[list[Message], bool]:
        return self.page[:limit], True

    async def list_rooms(self, actor: int) -> list[Room]:
        return self.rooms

    async def create_room(
        self,
        actor: int,
        name: str,
        member_ids: Sequence[int] = (),
        *,
        public: bool = False,
        encrypted: bool = False,
    ) -> Room:
        raise _unused("create_room")

    async def join_room(self, actor: int, room_id: int) -> Room:
        raise _unused("join_room")

    async def leave_room(self, actor: int, room_id: int) -> bool:
        raise _unused("leave_room")

    async def get_room(self, actor: int, room_id: int) -> Room:
        raise _unused("get_room")

    async def room_members(self, actor: int, room_id: int) -> list[int]:
        raise _unused("room_members")

    async def edit_message(
        self,
        actor: int,
        message_id: int,
        content: str | None,
        encrypted: dict[str, Any] | None = None,
    ) -> Message:
        raise _unused("edit_message")

    async def delete_message(self, actor: int, message_id: int) -> bool:
        raise _unused("delete_message")

    async def add_reaction(self, actor: int, message_id: int, emoji: str) -> bool:
        raise _unused("add_reaction")

    async def remove_reaction(self, actor: int, message_id: int, emoji: str) -> bool:
        raise _unused("remove_reaction")

    async def events_after(self, room_id: int, after_seq: int, limit: int) -> list[RoomEvent]:
        raise _unused("events_after")

    async def open_direct_room(self, actor: int, other: int) -> Room:
        raise _unused("open_direct_room")

    async def accept_invitation(self, actor: int, room_id: int) -> Room:
        raise _unused("accept_invitation")

    async def decline_invitation(self, actor: int, room_id: int) -> bool:
        raise _unused("decline_invitation")

    async def invitations(self, actor: int) -> list[Invitation]:
        raise _unused("invitations")

    async def invite(self, actor: int, room_id: int, user_ids: Sequence[int]) -> list[int]:
        raise _unused("invite")

    async def remove_member(self, actor: int, room_id: int, user_id: int) -> bool:
        raise _unused("remove_member")

    async def set_member_role(self, actor: int, room_id: int, user_id: int, role: str) -> bool:
        raise _unused("set_member_role")

    async def public_rooms(self, after: int | None = None, limit: int = 50) -> list[Room]:
        raise _unused("public_rooms")

    async def member_roles(self, actor: int, room_id: int) -> list[tuple[int, str]]:
        raise _unused("member_roles")

    async def member_role(self, actor: int, room_id: int) -> str:
        raise _unused("member_role")

    async def shares_room_with(self, viewer: int, user_ids: Sequence[int]) -> set[int]:
        return set(user_ids)

    async def mark_read(self, actor: int, room_id: int, seq: int) -> ReadState:
        raise _unused("mark_read")

    async def set_room_muted(self, actor: int, room_id: int, muted: bool) -> ReadState:
        raise _unused("set_room_muted")

    async def read_states(self, actor: int, room_ids: Sequence[int]) -> dict[int, ReadState]:
        raise _unused("read_states")


class NoPlacement:
    async def choose(self, key: str | None) -> GatewayRecord:
        raise _unused("choose")


def memory_services() -> Services:
    return Services(
        auth=MemoryAuth(),
        chat=MemoryChat(),
        placement=NoPlacement(),
        events=None,
        presence=None,
        # the benchmark measures execution, not the limiters: buckets that never run dry
        mutation_limiter=TokenBuckets(10**12, 1e12),
        query_limiter=TokenBuckets(10**12, 1e12),
        auth_limiter=TokenBuckets(10**12, 1e12),
        search_limiter=TokenBuckets(10**12, 1e12),
    )


# --- the two bindings -------------------------------------------------------------------------


def ariadne_bindables() -> list[SchemaBindable]:
    """The edge's resolver table as Ariadne bindables (what graphql_edge/schema.py does by hand)."""
    query, mutation = QueryType(), MutationType()
    bindables: list[SchemaBindable] = [query, mutation]
    for type_name, fields in resolvers.RESOLVERS.items():
        if type_name == "Query":
            obj: ObjectType = query
        elif type_name == "Mutation":
            obj = mutation
        else:
            obj = ObjectType(type_name)
            bindables.append(obj)
        for field_name, fn in fields.items():
            obj.set_field(field_name, fn)
    subscription = SubscriptionType()
    # graphql-core takes a coroutine returning the stream, as the edge's is; Ariadne's stubs
    # only name generator functions
    subscription.set_source("roomEvents", cast(Any, resolvers.s_room_events))
    subscription.set_field("roomEvents", resolvers.s_identity)
    union = UnionType("RoomEvent", lambda value, *_: event_typename(value))
    return [*bindables, subscription, union]


def ariadne_schema() -> GraphQLSchema:
    return make_executable_schema(SDL, *ariadne_bindables())


Runner = Callable[[Operation], Awaitable[dict[str, Any]]]


@dataclass
class Variants:
    """The four ways of running one operation; each returns the response body."""

    services: Services = field(default_factory=memory_services)
    settings: EdgeSettings = field(default_factory=EdgeSettings)
    core_schema: GraphQLSchema = field(default_factory=build)
    ariadne_schema: GraphQLSchema = field(default_factory=ariadne_schema)

    def __post_init__(self) -> None:
        self.pipeline = Pipeline(self.core_schema, self.settings)
        self._hide_suggestions = not self.settings.enable_introspection
        self._ariadne_docs: dict[str, DocumentNode] = {}
        # keyed by id(document); the document itself lives in _ariadne_docs
        self._ariadne_valid: dict[int, list[GraphQLError]] = {}

    def runners(self) -> dict[str, Runner]:
        return {
            "graphql-core": self.graphql_core,
            "ariadne": self.ariadne,
            "ariadne-cached": self.ariadne_cached,
            "graphql-core-uncached": self.graphql_core_uncached,
        }

    def context(self) -> Context:
        return Context(self.services, Principal(USER_ID, "bench", 0, 2**40), None, "bench")

    async def _execute(self, doc: DocumentNode, op: Operation) -> dict[str, Any]:
        # the arguments of Pipeline.execute
        result = execute(
            self.core_schema,
            doc,
            None,
            self.context(),
            op.variables,
            None,
            hide_suggestions=self._hide_suggestions,
        )
        if isawaitable(result):
            result = await result
        return result_body(result)

    async def graphql_core(self, op: Operation) -> dict[str, Any]:
        doc = self.pipeline._document(op.query)  # the edge's parse+validate cache
        if isinstance(doc, list):
            raise RuntimeError(f"{op.name}: invalid document: {doc}")
        return await self._execute(doc, op)

    async def graphql_core_uncached(self, op: Operation) -> dict[str, Any]:
        doc = self.pipeline.parse_and_validate(op.query)  # what the edge caches, each time
        if isinstance(doc, list):
            raise RuntimeError(f"{op.name}: invalid document: {doc}")
        return await self._execute(doc, op)

    async def ariadne(self, op: Operation, **hooks: Any) -> dict[str, Any]:
        _ok, body = await ariadne.graphql(
            self.ariadne_schema,
            op.data,
            context_value=self.context(),
            introspection=self.settings.enable_introspection,
            **hooks,
        )
        return body

    async def ariadne_cached(self, op: Operation) -> dict[str, Any]:
        return await self.ariadne(
            op, query_parser=self._cached_parse, query_validator=self._cached_validate
        )

    def _cached_parse(self, _context: Any, data: dict[str, Any]) -> DocumentNode:
        query: str = data["query"]
        doc = self._ariadne_docs.get(query)
        if doc is None:
            doc = self._ariadne_docs[query] = parse(query, max_tokens=self.settings.max_tokens)
        return doc

    def _cached_validate(
        self,
        schema: GraphQLSchema,
        document_ast: DocumentNode,
        rules: Collection[type[ASTValidationRule]] | None = None,
        max_errors: int | None = None,
        type_info: TypeInfo | None = None,
    ) -> list[GraphQLError]:
        key = id(document_ast)
        errors = self._ariadne_valid.get(key)
        if errors is None:
            errors = self._ariadne_valid[key] = validate(
                schema, document_ast, rules, max_errors, type_info
            )
        return errors


# --- measurement ------------------------------------------------------------------------------


async def _spin(runner: Runner, op: Operation, cpu_s: float) -> tuple[int, float]:
    """Run ``op`` until ``cpu_s`` CPU-seconds have passed; (operations, CPU-seconds)."""
    clock = time.process_time
    n = 0
    start = clock()
    while True:
        for _ in range(BATCH):
            await runner(op)
        n += BATCH
        spent = clock() - start
        if spent >= cpu_s:
            return n, spent


async def measure(
    seconds: float, variants: Variants | None = None
) -> tuple[dict[tuple[str, str], list[float]], dict[tuple[str, str], float]]:
    """ops per CPU-second for every (library, operation): SAMPLES samples each, interleaved.
    Also the wall/CPU factor of each pair, to show how contended the machine was."""
    v = variants or Variants()
    runners = v.runners()
    pairs = [(lib, op) for op in OPERATIONS for lib in LIBRARIES]
    for lib, op in pairs:  # a failing operation must fail the run, not be timed
        body = await runners[lib](op)
        if body.get("errors") or not body.get("data"):
            raise RuntimeError(f"{lib} {op.name}: {body}")
    for lib, op in pairs:
        gc.collect()
        await _spin(runners[lib], op, seconds * WARMUP_FRACTION)
    rates: dict[tuple[str, str], list[float]] = {(lib, op.name): [] for lib, op in pairs}
    cpu: dict[tuple[str, str], float] = dict.fromkeys(rates, 0.0)
    wall: dict[tuple[str, str], float] = dict.fromkeys(rates, 0.0)
    for _ in range(SAMPLES):
        for lib, op in pairs:
            gc.collect()
            w0 = time.perf_counter()
            n, spent = await _spin(runners[lib], op, seconds)
            wall[(lib, op.name)] += time.perf_counter() - w0
            cpu[(lib, op.name)] += spent
            rates[(lib, op.name)].append(n / spent)
    return rates, {k: wall[k] / cpu[k] for k in cpu}


def build_report(
    rates: dict[tuple[str, str], list[float]],
    wall_per_cpu: dict[tuple[str, str], float],
    seconds: float,
    elapsed_s: float,
) -> dict[str, Any]:
    runs = []
    medians: dict[tuple[str, str], float] = {}
    for (lib, op), samples in rates.items():
        med = statistics.median(samples)
        medians[(lib, op)] = med
        runs.append(
            {
                "library": lib,
                "operation": op,
                "ops_per_cpu_s": round(med, 1),
                "us_per_op": round(1e6 / med, 2),
                "samples": [round(s, 1) for s in samples],
                "wall_per_cpu_s": round(wall_per_cpu[(lib, op)], 3),
            }
        )
    ratio = {
        op.name: {
            f"{BASELINE}/{lib}": round(medians[(BASELINE, op.name)] / medians[(lib, op.name)], 3)
            for lib in LIBRARIES
            if lib != BASELINE
        }
        for op in OPERATIONS
    }
    return {
        "benchmark": "graphql_libs",
        "method": (
            "single process, one uvloop event loop; shardchat's SDL (graphql_edge/sdl.py) and "
            "the edge's resolvers (graphql_edge/resolvers.py) over constant in-memory services, "
            "a new request Context per operation; graphql-core: the edge's schema, document "
            "from the edge Pipeline's parse+validate cache, graphql.execute, result_body; "
            "ariadne: make_executable_schema with QueryType/MutationType/ObjectType bindings, "
            "ariadne.graphql(schema, data) per operation (parses and validates every time); "
            "ariadne-cached: the same with query_parser/query_validator caches; "
            "graphql-core-uncached: parse+validate+execute every time (control). "
            f"Introspection off for all. Measure: operations per CPU-second (time.process_time) "
            f"of the median of {SAMPLES} samples of {seconds} CPU-s each after an uncounted "
            f"warm-up of {seconds * WARMUP_FRACTION} CPU-s; samples interleaved round-robin; "
            "gc.collect() before each sample, collector enabled at default thresholds for all. "
            "ratio = ops_per_cpu_s of graphql-core / that of the other (above 1: graphql-core "
            "is cheaper)."
        ),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": {
            "graphql-core": version("graphql-core"),
            "ariadne": version("ariadne"),
            "uvloop": version("uvloop"),
        },
        "params": {
            "seconds": seconds,
            "samples": SAMPLES,
            "warmup_s": seconds * WARMUP_FRACTION,
            "gc_thresholds": list(gc.get_threshold()),
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "elapsed_s": round(elapsed_s, 1),
        "runs": runs,
        "ratio": ratio,
    }


def write_report(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'operation':<12} {'library':<22} {'ops/CPU-s':>10} {'us/op':>9}  vs graphql-core"]
    for op in OPERATIONS:
        for run in report["runs"]:
            if run["operation"] != op.name:
                continue
            lib = run["library"]
            vs = "" if lib == BASELINE else f"x{report['ratio'][op.name][f'{BASELINE}/{lib}']}"
            lines.append(
                f"{op.name:<12} {lib:<22} {run['ops_per_cpu_s']:>10.0f} "
                f"{run['us_per_op']:>9.1f}  {vs}"
            )
    v = report["versions"]
    lines.append(
        f"{report['python']}, graphql-core {v['graphql-core']}, ariadne {v['ariadne']}; "
        f"median of {SAMPLES} x {report['params']['seconds']} CPU-s"
    )
    return "\n".join(lines)


async def _collect(seconds: float, variants: Variants | None) -> dict[str, Any]:
    started = time.perf_counter()
    rates, wall_per_cpu = await measure(seconds, variants)
    return build_report(rates, wall_per_cpu, seconds, time.perf_counter() - started)


def run(seconds: float, variants: Variants | None = None) -> dict[str, Any]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_collect(seconds, variants))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.graphql_libs", description=__doc__)
    ap.add_argument(
        "--seconds", type=float, default=1.0, help="CPU-seconds per sample (default 1.0)"
    )
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"JSON result (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    if args.seconds <= 0:
        ap.error("--seconds must be > 0")
    report = run(args.seconds)
    path = write_report(report, args.out)
    print(format_table(report))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
