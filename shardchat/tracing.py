"""OpenTelemetry tracing: setup and W3C trace-context propagation across processes.

Tracing is off unless ``SHARDCHAT_OTLP_ENDPOINT`` is set. Off means no SDK provider is installed:
the API's default tracer is a no-op, so spans cost a function call and nothing else, and
``inject_trace_headers()`` returns ``{}`` (no header travels).

One trace follows a message from ``sendMessage`` (edge) or op SEND (gateway) to every socket write:

    edge:    with tracer.start_as_current_span("sendMessage"):
                 headers = inject_trace_headers()          # {"traceparent": "00-…"}
             -> stored with the outbox row, then sent as Kafka record headers
                (``to_kafka_headers(headers)``)
    gateway: ctx = extract_context(from_kafka_headers(record.headers))
             with tracer.start_as_current_span("deliver", context=ctx): ...

The OTLP exporter (``opentelemetry-exporter-otlp-proto-http``) is not a dependency of shardchat;
it is imported only when an endpoint is configured.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any
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
    "extract_context",
    "from_kafka_headers",
    "get_tracer",
    "inject_trace_headers",
    "make_tracer_provider",
    "shutdown_tracing",
    "to_kafka_headers",
]

OTLP_EXPORTER_PACKAGE = "opentelemetry-exporter-otlp-proto-http"
_OTLP_EXPORTER_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"

# W3C Trace Context only (https://www.w3.org/TR/trace-context/): explicit rather than the global
# propagator, so OTEL_PROPAGATORS can't change what goes into our outbox rows and Kafka headers.
_PROPAGATOR = TraceContextTextMapPropagator()
TRACE_HEADERS: frozenset[str] = frozenset(_PROPAGATOR.fields)  # traceparent, tracestate

_provider: TracerProvider | None = None


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

    Empty ``otlp_endpoint``: do nothing (the no-op API tracer stays). Else: TracerProvider with
    ``service.name`` + BatchSpanProcessor + OTLP/HTTP exporter. Raises RuntimeError naming the
    package to install when the exporter is missing. A second call is ignored (OpenTelemetry
    allows one global provider per process).
    """
    global _provider
    if not otlp_endpoint.strip() or _provider is not None:
        return
    provider = make_tracer_provider(service_name, _otlp_exporter(otlp_endpoint))
    trace.set_tracer_provider(provider)
    _provider = provider


def shutdown_tracing() -> None:
    """Flush and stop the provider installed by configure_tracing (call at service shutdown)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


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
