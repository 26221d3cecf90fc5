"""Media types of GraphQL over HTTP: Accept negotiation and the response Content-Type. Pure.

The edge answers in one of two media types: ``application/graphql-response+json`` (the spec's;
its status codes say what happened) or ``application/json`` (legacy clients). A client that
lists both with the same quality, or only the new one, gets the new one; ``*/*``, ``application/*``
and a missing Accept header get ``application/json``; an Accept that admits neither gets 406.
Following the current draft of the spec, a legacy client gets the same status codes as everyone
(a request error is 4xx) and only a 2xx response is labelled ``application/json``: a 4xx body is
still a GraphQL response and says so.
"""

from __future__ import annotations

from typing import Literal

Media = Literal["application/graphql-response+json", "application/json"]

GRAPHQL_RESPONSE: Media = "application/graphql-response+json"
JSON: Media = "application/json"


def _ranges(accept: str) -> list[tuple[str, float]]:
    """``(media range, q)`` of an Accept header, lower-cased; malformed q counts as 0."""
    out = []
    for item in accept.split(","):
        kind, *params = (part.strip() for part in item.split(";"))
        if not kind:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        out.append((kind.lower(), q))
    return out


def _quality(media: str, ranges: list[tuple[str, float]]) -> tuple[float, int]:
    """The q the most specific matching range gives ``media``, and how specific it was
    (2 exact, 1 ``type/*``, 0 ``*/*``); (0, -1) when nothing matches."""
    major = media.split("/", 1)[0]
    best = (0.0, -1)
    for kind, q in ranges:
        if kind == media:
            rank = 2
        elif kind == f"{major}/*":
            rank = 1
        elif kind == "*/*":
            rank = 0
        else:
            continue
        if rank > best[1]:
            best = (q, rank)
    return best


def negotiate(accept: str | None) -> Media | None:
    """The media type to answer in, or None when the Accept header admits neither (406)."""
    if not accept or not accept.strip():
        return JSON
    ranges = _ranges(accept)
    new_q, new_rank = _quality(GRAPHQL_RESPONSE, ranges)
    old_q, _ = _quality(JSON, ranges)
    if new_q <= 0 and old_q <= 0:
        return None
    # The new type wins a tie only when the client named it: a bare */* is a legacy client.
    if new_q > old_q or (new_q == old_q and new_rank == 2):
        return GRAPHQL_RESPONSE
    return JSON


def content_type(media: Media, status: int) -> str:
    """The response Content-Type for a GraphQL response body with this status."""
    if media == JSON and 200 <= status < 300:
        return f"{JSON}; charset=utf-8"
    return f"{GRAPHQL_RESPONSE}; charset=utf-8"
