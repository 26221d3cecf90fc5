"""shardchat.tracing against the real OpenTelemetry SDK (InMemorySpanExporter, no mocks)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest
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


def _exporter_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


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


@pytest.mark.skipif(_exporter_installed(), reason="the OTLP exporter is installed")
def test_endpoint_without_exporter_says_what_to_install() -> None:
    result = _run(
        """
        from shardchat.tracing import configure_tracing
        configure_tracing("edge", "http://127.0.0.1:4318")
        """
    )
    assert result.returncode != 0
    assert "RuntimeError" in result.stderr
    assert OTLP_EXPORTER_PACKAGE in result.stderr


@pytest.mark.skipif(not _exporter_installed(), reason="the OTLP exporter is not installed")
def test_endpoint_with_exporter_installs_sdk_provider() -> None:
    result = _run(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from shardchat.tracing import configure_tracing, shutdown_tracing
        configure_tracing("edge", "http://127.0.0.1:4318")
        assert isinstance(trace.get_tracer_provider(), TracerProvider)
        shutdown_tracing()
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr


def test_otlp_url_accepts_base_or_full_url() -> None:
    from shardchat.tracing import _otlp_traces_url

    assert _otlp_traces_url("http://otel:4318") == "http://otel:4318/v1/traces"
    assert _otlp_traces_url("otel:4318/") == "http://otel:4318/v1/traces"
    assert _otlp_traces_url("https://x/custom/traces") == "https://x/custom/traces"
