"""Turn execution results into response bodies and metric outcomes."""

from __future__ import annotations

from typing import Any

from graphql import ExecutionResult, GraphQLError

from graphql_edge.errors import error_code, format_error


def result_body(result: ExecutionResult) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if result.errors:
        body["errors"] = [format_error(e) for e in result.errors]
    body["data"] = result.data
    return body


def errors_body(errors: list[GraphQLError]) -> dict[str, Any]:
    return {"errors": [format_error(e) for e in errors]}


def outcome_of(errors: list[GraphQLError] | None) -> str:
    """ "ok" or the first error's code in lower case (the label values of METRICS.md)."""
    return error_code(errors[0]).lower() if errors else "ok"
