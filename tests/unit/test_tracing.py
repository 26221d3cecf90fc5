"""shardchat.tracing against the real OpenTelemetry SDK (InMemorySpanExporter, no mocks)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import textwrap
import threading
from typing import ClassVar

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shardchat.tracing import (
    OTLP_EXPORTER_PACKAGE,
    extract_context,
    from_kafka_headers,
    inject_trace_headers,
    make_tracer_provider,
    to_kafka_headers,
)

_EXPORTER_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


def _service(name: str) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return make_tracer_provider(name, exporter), exporter


def test_trace_crosses_edge_outbox_kafka_gateway() -> None:
    edge_provider, edge_spans = _service("edge")
    gw_provider, gw_spans = _service("gateway")
    edge_tracer = edge_provider.get_tracer("graphql_edge")
    gw_tracer = gw_provider.get_tracer("gateway")

    with edge_tracer.start_as_current_span("sendMessage") as parent:
        headers = inject_trace_headers()
    assert set(headers) <= {"traceparent", "tracestate"}
    assert headers["traceparent"].startswith("00-")

    # outbox row -> Kafka record headers -> gateway consumer
    record_headers = [("content-type", b"application/json"), *to_kafka_headers(headers)]
    carried = from_kafka_headers(record_headers)
    assert carried == headers

    with gw_tracer.start_as_current_span("deliver", context=extract_context(carried)) as child:
        pass

    edge_provider.force_flush()
    gw_provider.force_flush()
    (sent,) = edge_spans.get_finished_spans()
    (delivered,) = gw_spans.get_finished_spans()
    assert sent.name == "sendMessage" and delivered.name == "deliver"
    assert sent.resource.attributes["service.name"] == "edge"
    assert delivered.resource.attributes["service.name"] == "gateway"
    parent_ctx = parent.get_span_context()
    child_ctx = child.get_span_context()
    assert child_ctx.trace_id == parent_ctx.trace_id
    assert child_ctx.span_id != parent_ctx.span_id
    assert delivered.parent is not None
    assert delivered.parent.span_id == parent_ctx.span_id
    assert delivered.parent.is_remote


def test_extract_is_case_insensitive_and_ignores_other_headers() -> None:
    provider, _ = _service("edge")
    with provider.get_tracer("t").start_as_current_span("s") as span:
        headers = inject_trace_headers()
    ctx = extract_context({"TraceParent": headers["traceparent"], "X-Other": "1"})
    remote = trace.get_current_span(ctx).get_span_context()
    assert remote.trace_id == span.get_span_context().trace_id


def test_no_span_means_no_headers_and_garbage_starts_a_new_trace() -> None:
    assert inject_trace_headers() == {}
    ctx = extract_context({"traceparent": "not-a-traceparent"})
    assert not trace.get_current_span(ctx).get_span_context().is_valid
    assert from_kafka_headers(None) == {}
    assert from_kafka_headers([("traceparent", None)]) == {}


def _run(code: str) -> subprocess.CompletedProcess[str]:
    # configure_tracing sets the process-wide provider: run it in a fresh interpreter.
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_empty_endpoint_installs_nothing() -> None:
    result = _run(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from shardchat.tracing import configure_tracing, inject_trace_headers, get_tracer
        configure_tracing("edge", "")
        assert not isinstance(trace.get_tracer_provider(), TracerProvider)
        with get_tracer("x").start_as_current_span("noop"):
            assert inject_trace_headers() == {}
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_endpoint_without_exporter_says_what_to_install() -> None:
    # The exporter is a test dependency; a None entry in sys.modules makes its import fail as
    # it does where the package is not installed.
    result = _run(
        f"""
        import sys
        sys.modules[{_EXPORTER_MODULE!r}] = None
        from shardchat.tracing import configure_tracing
        configure_tracing("edge", "http://127.0.0.1:4318")
        """
    )
    assert result.returncode != 0
    assert "RuntimeError" in result.stderr
    assert OTLP_EXPORTER_PACKAGE in result.stderr


class _Collector(http.server.BaseHTTPRequestHandler):
    """The receiving end of OTLP/HTTP: records every POST (path, content type, body)."""

    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_endpoint_with_exporter_sends_spans_to_the_collector() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Collector.received.clear()
    try:
        result = _run(
            f"""
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            from shardchat.tracing import configure_tracing, get_tracer, shutdown_tracing
            configure_tracing("edge", "127.0.0.1:{server.server_port}")
            assert isinstance(trace.get_tracer_provider(), TracerProvider)
            with get_tracer("t").start_as_current_span("otlp-probe-span"):
                pass
            shutdown_tracing()  # flushes the batch processor
            print("ok")
            """
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert len(_Collector.received) == 1
    path, content_type, body = _Collector.received[0]
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    assert b"otlp-probe-span" in body
    assert b"edge" in body  # the service.name resource attribute


def test_otlp_url_accepts_base_or_full_url() -> None:
    from shardchat.tracing import _otlp_traces_url

    assert _otlp_traces_url("http://otel:4318") == "http://otel:4318/v1/traces"
    assert _otlp_traces_url("otel:4318/") == "http://otel:4318/v1/traces"
    assert _otlp_traces_url("https://x/custom/traces") == "https://x/custom/traces"
