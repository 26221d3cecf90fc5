"""Prometheus metrics of the write path (chat_core runs in the edge and in the gateway).

Names, types, labels and buckets are EXACTLY those of ``deploy/grafana/METRICS.md`` ("Write
path"): the write-path and Kafka dashboards query them. Counters are declared without
``_total``: prometheus_client appends it on export.

Every labelled child is bound here, once, at import: the hot path then only calls ``inc()`` /
``observe()`` on a ready child (``.labels()`` hashes and locks on every call), and every outcome
is exported from the start at 0, so a dashboard shows 0 rather than "no data".

``shardchat_outbox_pending`` is set by the relay at each sweep (about every
``outbox_relay_after_ms / 2``): the events this process's publisher holds queued (committed,
not yet acknowledged by the log) plus the unpublished rows older than the relay delay that the
sweep found in the partitions whose relay lease this process holds (a sweep reads at most its
``limit`` rows). Each partition has one lease owner, so ``sum()`` over instances is the
cluster's backlog; a healthy cluster shows about 0.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from shardchat.errors import ChatError, ErrorCode

SENDS: Final = Counter(
    "shardchat_chat_sends",
    "sendMessage / op SEND results: ok, duplicate (idempotent replay of a nonce) or an error code",
    ["outcome"],
)
SEND_LATENCY: Final = Histogram(
    "shardchat_chat_send_latency_seconds",
    "Send call to ack, the commit included (acknowledged sends: ok and duplicate)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
OUTBOX_PUBLISHED: Final = Counter(
    "shardchat_outbox_published",
    "Outbox events handed to the event log and acknowledged, by path (fast, relay)",
    ["path"],
)
OUTBOX_PENDING: Final = Gauge(
    "shardchat_outbox_pending",
    "Outbox rows not yet published, as last seen by this process's relay sweep",
)

# --- pre-bound children (the hot path never calls .labels()) -----------------------------------
SEND_OK: Final = SENDS.labels("ok")
SEND_DUPLICATE: Final = SENDS.labels("duplicate")
_ERROR_CODES: Final[tuple[ErrorCode, ...]] = (
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_FOUND",
    "BAD_USER_INPUT",
    "RATE_LIMITED",
    "INTERNAL",
)
#: ``ChatError.code`` -> its child; METRICS.md spells outcomes in lower case.
SEND_ERRORS: Final = {code: SENDS.labels(code.lower()) for code in _ERROR_CODES}
SEND_INTERNAL: Final = SEND_ERRORS["INTERNAL"]

PUBLISHED_FAST: Final = OUTBOX_PUBLISHED.labels("fast")
PUBLISHED_RELAY: Final = OUTBOX_PUBLISHED.labels("relay")


def count_send_error(exc: BaseException) -> None:
    """Count a failed send under its error code (anything not a ChatError is ``internal``).

    Also for callers that refuse a send before it reaches ChatService (a rate limit in the
    gateway or the edge): ``count_send_error(RateLimited(...))``.
    """
    if isinstance(exc, ChatError):
        SEND_ERRORS.get(exc.code, SEND_INTERNAL).inc()
    else:
        SEND_INTERNAL.inc()


# --- history cache (chat_core.history_cache) ----------------------------------------------------
HISTORY_CACHE: Final = Counter(
    "shardchat_history_cache_requests",
    "History cache lookups by kind (messages: the newest page; events: catch-up) and outcome",
    ["kind", "outcome"],
)
HISTORY_CACHE_DROPPED: Final = Counter(
    "shardchat_history_cache_dropped",
    "Cached rooms dropped or left behind because room events did not follow them without a gap",
)
HISTORY_HIT: Final = HISTORY_CACHE.labels("messages", "hit")
HISTORY_MISS: Final = HISTORY_CACHE.labels("messages", "miss")
EVENTS_HIT: Final = HISTORY_CACHE.labels("events", "hit")
EVENTS_MISS: Final = HISTORY_CACHE.labels("events", "miss")
