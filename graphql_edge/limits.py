"""Query depth and cost, measured on the validated operation before it runs.

Depth: nesting of field selections (``{ me { id } }`` is 2); fragments add none of their own.
Cost: what a query can make the edge fetch. Every object-typed field costs 1; a scalar costs
nothing (it is read from an object already fetched); a list multiplies its children's cost by its
size bound: the ``limit`` argument of the field or of the nearest ancestor that has one (a
``messages(limit: 50)`` page bounds ``items``), else ``default_list_size``. With variables known,
``limit: $n`` counts as its real value. Introspection fields (``__schema``, ``__type``) are only
reachable when introspection is on; they are bounded by the schema, so they are not counted.

A typical history page (50 messages with reactions) costs about 560 with the defaults; a
``rooms { members }`` listing about 110.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
    is_composite_type,
)
from graphql.type.definition import GraphQLInterfaceType


@dataclass(frozen=True, slots=True)
class Measure:
    depth: int
    cost: int


class _Walker:
    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, Any],
        default_list_size: int,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.default_list_size = default_list_size

    def walk(
        self, sel: SelectionSetNode, parent: GraphQLNamedType, depth: int, page: int | None
    ) -> Measure:
        max_depth, cost = depth, 0
        for node in sel.selections:
            if isinstance(node, FieldNode):
                m = self._field(node, parent, depth, page)
            elif isinstance(node, InlineFragmentNode):
                cond = node.type_condition
                target = self.schema.get_type(cond.name.value) if cond else parent
                m = self.walk(node.selection_set, target or parent, depth, page)
            elif isinstance(node, FragmentSpreadNode):
                frag = self.fragments.get(node.name.value)
                if frag is None:
                    continue
                target = self.schema.get_type(frag.type_condition.name.value) or parent
                m = self.walk(frag.selection_set, target, depth, page)
            else:  # pragma: no cover - no other selection kinds exist
                continue
            max_depth = max(max_depth, m.depth)
            cost += m.cost
        return Measure(max_depth, cost)

    def _field(
        self, node: FieldNode, parent: GraphQLNamedType, depth: int, page: int | None
    ) -> Measure:
        name = node.name.value
        if name.startswith("__"):
            return Measure(depth, 0)
        if not isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            return Measure(depth + 1, 0)
        field = parent.fields.get(name)
        if field is None:
            return Measure(depth + 1, 0)
        own_limit = self._limit(node)
        if own_limit is not None:
            page = own_limit
        field_type: GraphQLOutputType = field.type
        is_list = _is_list(field_type)
        named = get_named_type(field_type)
        if node.selection_set is None or not is_composite_type(named):
            return Measure(depth + 1, 0)
        child = self.walk(node.selection_set, named, depth + 1, None if is_list else page)
        unit = 1 + child.cost
        if is_list:
            size = page if page is not None else self.default_list_size
            return Measure(child.depth, max(size, 0) * unit)
        return Measure(child.depth, unit)

    def _limit(self, node: FieldNode) -> int | None:
        for arg in node.arguments:
            if arg.name.value != "limit":
                continue
            value = arg.value
            if isinstance(value, IntValueNode):
                return int(value.value)
            if isinstance(value, VariableNode):
                raw = self.variables.get(value.name.value)
                return raw if isinstance(raw, int) and not isinstance(raw, bool) else None
        return None


def _is_list(t: GraphQLOutputType) -> bool:
    if isinstance(t, GraphQLNonNull):
        t = t.of_type
    return isinstance(t, GraphQLList)


def measure(
    schema: GraphQLSchema,
    operation: OperationDefinitionNode,
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any],
    default_list_size: int = 10,
) -> Measure:
    root = schema.get_root_type(operation.operation)
    if root is None:
        return Measure(0, 0)
    walker = _Walker(schema, fragments, variables, default_list_size)
    return walker.walk(operation.selection_set, root, 0, None)


def check_limits(
    schema: GraphQLSchema,
    operation: OperationDefinitionNode,
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any],
    *,
    max_depth: int,
    max_cost: int,
    default_list_size: int,
) -> list[GraphQLError]:
    m = measure(schema, operation, fragments, variables, default_list_size)
    errors = []
    if m.depth > max_depth:
        errors.append(GraphQLError(f"Query depth {m.depth} exceeds the limit of {max_depth}."))
    if m.cost > max_cost:
        errors.append(GraphQLError(f"Query cost {m.cost} exceeds the limit of {max_cost}."))
    return errors


def root_field_count(
    operation: OperationDefinitionNode, fragments: Mapping[str, FragmentDefinitionNode]
) -> int:
    """Root fields of the operation, aliases and fragments included (``__typename`` too): what
    one request asks for at once, and what the per-user query rate limit charges."""

    def count(sel: SelectionSetNode, seen: frozenset[str]) -> int:
        n = 0
        for node in sel.selections:
            if isinstance(node, FieldNode):
                n += 1
            elif isinstance(node, InlineFragmentNode):
                n += count(node.selection_set, seen)
            elif isinstance(node, FragmentSpreadNode):
                frag = fragments.get(node.name.value)
                if frag is not None and frag.name.value not in seen:
                    n += count(frag.selection_set, seen | {frag.name.value})
        return n

    return count(operation.selection_set, frozenset())
