"""OpenTelemetry tracing: setup and W3C trace-context propagation across processes.

Tracing is off unless ``SHARDCHAT_OTLP_ENDPOINT`` is set (or an SDK provider was installed
process-wide by someone else, e.g. ``opentelemetry-instrument``, before ``configure_tracing``).
Off means no SDK provider: the API's default tracer is a no-op, and ``inject_trace_headers()``
returns ``{}`` (no header travels).

Hot path: shardchat's own spans go through :func:`start_span`, :func:`delivery_span` and
:func:`current_trace_headers`. Whether tracing is on is decided ONCE, when the provider is set
(:func:`configure_tracing`, or :func:`use_tracer_provider` in tests), and kept in a module
boolean; while it is off those helpers return a shared no-op context manager or ``{}`` without
calling OpenTelemetry at all (no span object, no context attach/detach, no propagator).

One trace follows a message from ``sendMessage`` (edge) or op SEND (gateway) to every socket write:

    edge:     with start_span("sendMessage"): chat.send_message(...)
    chat_core with start_span("chat.send_message"):
                  NewMessage(..., trace=current_trace_headers())   # {"traceparent": "00-…"}
              -> stored in room_events.trace with the outbox row (so the relay keeps it too),
                 then sent as Kafka record headers (``chat_core.outbox.event_record``)
    gateway:  with delivery_span(event.trace): ...write the frame...

The OTLP exporter (``opentelemetry-exporter-otlp-proto-http``) is not a dependency of shardchat;
it is imported only when an endpoint is configured.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "OTLP_EXPORTER_PACKAGE",
    "TRACE_HEADERS",
    "configure_tracing",
    "current_trace_headers",
    "delivery_span",
    "extract_context",
    "from_kafka_headers",
    "get_tracer",
    "inject_trace_headers",
    "make_tracer_provider",
    "shutdown_tracing",
    "start_span",
    "to_kafka_headers",
    "tracing_enabled",
    "use_tracer_provider",
]

OTLP_EXPORTER_PACKAGE = "opentelemetry-exporter-otlp-proto-http"
_OTLP_EXPORTER_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"

# W3C Trace Context only (https://www.w3.org/TR/trace-context/): explicit rather than the global
# propagator, so OTEL_PROPAGATORS can't change what goes into our outbox rows and Kafka headers.
_PROPAGATOR = TraceContextTextMapPropagator()
TRACE_HEADERS: frozenset[str] = frozenset(_PROPAGATOR.fields)  # traceparent, tracestate

_provider: TracerProvider | None = None

# The hot-path switch (see the module docstring): set only by use_tracer_provider().
_enabled: bool = False
_tracer: trace.Tracer | None = None
_SCOPE: Final = "shardchat"
# nullcontext keeps no state, so one instance serves every caller, nested or concurrent.
_NO_SPAN: Final[AbstractContextManager[None]] = contextlib.nullcontext()
_CONSUMER: Final = trace.SpanKind.CONSUMER


def make_tracer_provider(service_name: str, exporter: SpanExporter) -> TracerProvider:
    """An SDK provider that batches finished spans to ``exporter``; not installed globally."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _otlp_traces_url(endpoint: str) -> str:
    """Accept a collector base URL (``http://otel:4318``) or the full traces URL."""
    endpoint = endpoint.strip()
    if "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    if urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def _otlp_exporter(endpoint: str) -> SpanExporter:
    try:
        module = importlib.import_module(_OTLP_EXPORTER_MODULE)
    except ImportError as exc:
        raise RuntimeError(
            f"SHARDCHAT_OTLP_ENDPOINT is set ({endpoint!r}) but the OTLP exporter is not "
            f"installed: pip install {OTLP_EXPORTER_PACKAGE}  "
            "(or unset SHARDCHAT_OTLP_ENDPOINT to turn tracing off)"
        ) from exc
    exporter: SpanExporter = module.OTLPSpanExporter(endpoint=_otlp_traces_url(endpoint))
    return exporter


def configure_tracing(service_name: str, otlp_endpoint: str) -> None:
    """Install the process-wide tracer provider, once, at service start.

    Empty ``otlp_endpoint``: install nothing (the no-op API tracer stays). Else: TracerProvider
    with ``service.name`` + BatchSpanProcessor + OTLP/HTTP exporter. Raises RuntimeError naming
    the package to install when the exporter is missing. A second call installs nothing more
    (OpenTelemetry allows one global provider per process). Either way it then decides, once,
    whether shardchat's hot-path spans are on (:func:`tracing_enabled`).
    """
    global _provider
    if otlp_endpoint.strip() and _provider is None:
        provider = make_tracer_provider(service_name, _otlp_exporter(otlp_endpoint))
        trace.set_tracer_provider(provider)
        _provider = provider
    # Decided once, here, from the provider really installed: an SDK provider set by someone
    # else (``opentelemetry-instrument``) turns our spans on too; the API's proxy/no-op one
    # keeps them off, and then the hot path never calls OpenTelemetry.
    installed = trace.get_tracer_provider()
    use_tracer_provider(installed if isinstance(installed, TracerProvider) else None)


def shutdown_tracing() -> None:
    """Flush and stop the provider installed by configure_tracing (call at service shutdown)."""
    global _provider
    if _provider is not None:
        use_tracer_provider(None)
        _provider.shutdown()
        _provider = None


def use_tracer_provider(provider: trace.TracerProvider | None) -> None:
    """Route shardchat's spans through ``provider`` (None: tracing off, the helpers are no-ops).

    It does not install ``provider`` process-wide (OpenTelemetry allows that once per process),
    which is what lets tests switch an SDK provider with an InMemorySpanExporter on and off.
    """
    global _enabled, _tracer
    _tracer = provider.get_tracer(_SCOPE) if provider is not None else None
    _enabled = _tracer is not None


def tracing_enabled() -> bool:
    """True when shardchat's spans are real (an SDK provider is in use)."""
    return _enabled


def start_span(name: str) -> AbstractContextManager[object]:
    """A span that is the current one inside the ``with`` block; a shared no-op when off."""
    if _tracer is None:
        return _NO_SPAN
    return _tracer.start_as_current_span(name)


def delivery_span(
    trace: Mapping[str, str], name: str = "gateway.deliver"
) -> AbstractContextManager[object]:
    """A CONSUMER span whose parent is the remote send span named by ``trace`` (the record's
    W3C headers, e.g. ``RoomEvent.trace``). No-op when tracing is off or ``trace`` is empty: an
    event sent untraced starts no new trace per delivery."""
    if _tracer is None or not trace:
        return _NO_SPAN
    return _tracer.start_as_current_span(name, context=extract_context(trace), kind=_CONSUMER)


def current_trace_headers() -> dict[str, str]:
    """``inject_trace_headers()`` when tracing is on, else ``{}`` without touching the API."""
    if not _enabled:
        return {}
    return inject_trace_headers()


def get_tracer(name: str) -> trace.Tracer:
    """The tracer for an instrumentation scope (use the module name: ``get_tracer(__name__)``)."""
    return trace.get_tracer(name)


def inject_trace_headers(context: Context | None = None) -> dict[str, str]:
    """W3C ``traceparent`` (and ``tracestate`` if any) of the current span, or of ``context``.

    Returns ``{}`` when there is no valid span (tracing off, or outside any span).
    """
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def extract_context(headers: Mapping[str, str]) -> Context:
    """A Context whose parent is the remote span named by ``headers`` (case-insensitive keys).

    Missing or malformed headers give an empty Context: the next span starts a new trace.
    Pass it as ``tracer.start_as_current_span(name, context=ctx)``.
    """
    carrier = {key.lower(): value for key, value in headers.items() if key.lower() in TRACE_HEADERS}
    return _PROPAGATOR.extract(carrier)


def to_kafka_headers(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """Trace headers as Kafka record headers (aiokafka's ``headers=[(str, bytes)]``)."""
    return [(key, value.encode("ascii")) for key, value in headers.items()]


def from_kafka_headers(headers: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """The trace headers found among Kafka record headers (values bytes or None); others dropped."""
    out: dict[str, str] = {}
    for key, value in headers or ():
        if key.lower() not in TRACE_HEADERS or value is None:
            continue
        out[key.lower()] = (
            value.decode("ascii", "replace") if isinstance(value, bytes | bytearray) else str(value)
        )
    return out
