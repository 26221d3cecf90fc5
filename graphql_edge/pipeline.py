"""One GraphQL operation from request body to result: the transport-independent part.

Steps: resolve the query text (persisted-query allow-list), parse (token-capped), validate
(spec rules, introspection off unless enabled, no "Did you mean" hints unless enabled; parse and
validation are cached by query text), select the operation, check depth and cost with the real
variables, then execute or subscribe. HTTP and graphql-transport-ws both call this.

A refusal before execution is a ``Rejected`` list of errors that names the step that refused
(``Step``), which the HTTP transport turns into its status code.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from graphql import (
    DocumentNode,
    ExecutionResult,
    FragmentDefinitionNode,
    GraphQLError,
    GraphQLSchema,
    NoSchemaIntrospectionCustomRule,
    OperationDefinitionNode,
    execute,
    parse,
    specified_rules,
    subscribe,
    validate,
)

from graphql_edge.context import Context
from graphql_edge.limits import check_limits, root_field_count
from graphql_edge.settings import EdgeSettings, query_hash
from shardchat.errors import BadInput, Forbidden


@dataclass(frozen=True, slots=True)
class Request:
    query: str | None
    variables: dict[str, Any] | None
    operation_name: str | None
    extensions: dict[str, Any] | None


#: Which step refused an operation: ``request`` (malformed parameters, unknown persisted query),
#: ``parse`` (the document is not GraphQL), ``validation`` (spec rules, operation selection,
#: depth and cost limits), ``forbidden`` (not in the persisted-query allow-list).
Step = Literal["request", "parse", "validation", "forbidden"]


class Rejected(list[GraphQLError]):
    """The errors of an operation refused before execution, and the step that refused it."""

    def __init__(self, errors: list[GraphQLError], step: Step) -> None:
        super().__init__(errors)
        self.step: Step = step


@dataclass(frozen=True, slots=True)
class Prepared:
    document: DocumentNode
    operation: OperationDefinitionNode
    variables: dict[str, Any] | None
    operation_name: str | None
    root_fields: int = 1  # what the per-user query rate limit charges

    @property
    def kind(self) -> str:
        """``query``, ``mutation`` or ``subscription`` (metrics label)."""
        return self.operation.operation.value


def _bad(message: str) -> GraphQLError:
    return GraphQLError(message, original_error=BadInput(message))


def request_from_json(body: Any) -> Request | GraphQLError:
    if not isinstance(body, Mapping):
        return _bad("request body must be a JSON object")
    query, variables = body.get("query"), body.get("variables")
    name, extensions = body.get("operationName"), body.get("extensions")
    if query is not None and not isinstance(query, str):
        return _bad("query must be a string")
    if variables is not None and not isinstance(variables, dict):
        return _bad("variables must be an object")
    if name is not None and not isinstance(name, str):
        return _bad("operationName must be a string")
    if extensions is not None and not isinstance(extensions, dict):
        return _bad("extensions must be an object")
    return Request(query, variables, name, extensions)


class Pipeline:
    def __init__(self, schema: GraphQLSchema, settings: EdgeSettings, cache_size: int = 512):
        self.schema = schema
        self.settings = settings
        self._hide_suggestions = not settings.enable_introspection
        rules = list(specified_rules)
        if not settings.enable_introspection:
            rules.append(NoSchemaIntrospectionCustomRule)
        self._rules = tuple(rules)
        self._cache: OrderedDict[str, DocumentNode | Rejected] = OrderedDict()
        self._cache_size = cache_size
        # allow-listed texts seen so far, so a client may later send the hash alone (APQ)
        self._texts: dict[str, str] = {}

    def prepare(self, req: Request) -> Prepared | Rejected:
        query = self._query_text(req)
        if isinstance(query, Rejected):
            return query
        doc = self._document(query)
        if isinstance(doc, Rejected):
            return doc
        operation = _operation(doc, req.operation_name)
        if isinstance(operation, GraphQLError):
            return Rejected([operation], "validation")
        fragments = {
            d.name.value: d for d in doc.definitions if isinstance(d, FragmentDefinitionNode)
        }
        limit_errors = check_limits(
            self.schema,
            operation,
            fragments,
            req.variables or {},
            max_depth=self.settings.max_depth,
            max_cost=self.settings.max_cost,
            default_list_size=self.settings.default_list_size,
        )
        roots = root_field_count(operation, fragments)
        if roots > self.settings.max_root_fields:
            limit_errors.append(
                GraphQLError(
                    f"{roots} root fields exceed the limit of {self.settings.max_root_fields}"
                    " per operation (aliases count)."
                )
            )
        if limit_errors:
            return Rejected(limit_errors, "validation")
        return Prepared(doc, operation, req.variables, req.operation_name, roots)

    async def execute(self, prepared: Prepared, ctx: Context) -> ExecutionResult:
        result = execute(
            self.schema,
            prepared.document,
            None,
            ctx,
            prepared.variables,
            prepared.operation_name,
            hide_suggestions=self._hide_suggestions,
        )
        if isinstance(result, ExecutionResult):
            return result
        return await result

    async def subscribe(
        self, prepared: Prepared, ctx: Context
    ) -> AsyncIterator[ExecutionResult] | ExecutionResult:
        result = subscribe(
            self.schema,
            prepared.document,
            None,
            ctx,
            prepared.variables,
            prepared.operation_name,
            hide_suggestions=self._hide_suggestions,
        )
        return await result  # type: ignore[misc]  # graphql-core's stubs: it is a coroutine

    def _query_text(self, req: Request) -> str | Rejected:
        allowed = self.settings.persisted_queries
        pq = (req.extensions or {}).get("persistedQuery")
        wanted = pq.get("sha256Hash") if isinstance(pq, dict) else None
        if req.query is None:
            if not isinstance(wanted, str):
                return Rejected([_bad("query is required")], "request")
            text = self._texts.get(wanted)
            if text is None:
                # Apollo clients resend with the full text on this message
                return Rejected([_bad("PersistedQueryNotFound")], "request")
            return text
        if allowed is not None or wanted is not None:
            digest = query_hash(req.query)
            if wanted is not None and wanted != digest:
                return Rejected([_bad("provided sha256Hash does not match query")], "request")
            if allowed is not None and digest not in allowed:
                msg = "query is not in the persisted-query allow-list"
                return Rejected([GraphQLError(msg, original_error=Forbidden(msg))], "forbidden")
            if len(self._texts) < 10_000:
                self._texts[digest] = req.query
        return req.query

    def _document(self, query: str) -> DocumentNode | Rejected:
        cached = self._cache.get(query)
        if cached is not None:
            self._cache.move_to_end(query)
            return cached
        result = self.parse_and_validate(query)
        self._cache[query] = result
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result

    def parse_and_validate(self, query: str) -> DocumentNode | Rejected:
        """The document, or why it is invalid; uncached (``_document`` caches it per text)."""
        try:
            doc = parse(query, max_tokens=self.settings.max_tokens)
        except GraphQLError as exc:
            return Rejected([exc], "parse")
        errors = validate(
            self.schema,
            doc,
            self._rules,
            max_errors=20,
            hide_suggestions=self._hide_suggestions,
        )
        return Rejected(errors, "validation") if errors else doc


def is_request_error(result: ExecutionResult) -> bool:
    """A request error raised by execution itself (variable values that do not coerce):
    graphql-core reports it as ``data=None`` with errors that have no path, whereas a field
    error always has one. The response then has no ``data`` entry (GraphQL spec)."""
    errors = result.errors or []
    return result.data is None and bool(errors) and all(e.path is None for e in errors)


def _operation(doc: DocumentNode, name: str | None) -> OperationDefinitionNode | GraphQLError:
    ops = [d for d in doc.definitions if isinstance(d, OperationDefinitionNode)]
    if name is None:
        if len(ops) == 1:
            return ops[0]
        return _bad("operationName is required when the document has several operations")
    for op in ops:
        if op.name is not None and op.name.value == name:
            return op
    return _bad(f"unknown operation named '{name}'")
