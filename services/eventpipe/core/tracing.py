"""Traces with OpenTelemetry: one trace follows an event from Envoy through ingest, the Kafka
headers (``traceparent``, see docs/kafka-topic-contract.md), the store consumer and enrichment.

Off by default. ``EVENTPIPE_OTEL_ENABLED=true`` switches it on, exporting over OTLP/gRPC to
``EVENTPIPE_OTEL_ENDPOINT`` (default ``http://127.0.0.1:4317``) with batching, sampled at
``EVENTPIPE_OTEL_SAMPLE_RATIO`` (default 1.0, parent-based: a sampled caller keeps its trace).
While it is off, ``span`` costs one attribute check and yields nothing, so the hot paths pay
nothing for it.

Usage, in a service's bootstrap: ``tracing.configure("ingest")``. On a path:

    with tracing.span("ingest.produce", parent=incoming_traceparent) as context:
        headers.append(("traceparent", tracing.traceparent_of(context) or incoming))

Tests call ``configure(..., exporter=InMemorySpanExporter())`` to read the spans back.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

HEADER = "traceparent"
ENV_ENABLED = "EVENTPIPE_OTEL_ENABLED"
ENV_ENDPOINT = "EVENTPIPE_OTEL_ENDPOINT"
ENV_SAMPLE_RATIO = "EVENTPIPE_OTEL_SAMPLE_RATIO"
DEFAULT_ENDPOINT = "http://127.0.0.1:4317"

_PROPAGATOR = TraceContextTextMapPropagator()
_lock = threading.Lock()
_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None


def _enabled_by_env() -> bool:
    return os.environ.get(ENV_ENABLED, "").strip().lower() in {"1", "true", "yes", "on"}


def _sample_ratio() -> float:
    raw = os.environ.get(ENV_SAMPLE_RATIO, "1.0")
    try:
        ratio = float(raw)
    except ValueError as exc:
        raise ValueError(f"{ENV_SAMPLE_RATIO}={raw!r} is not a number") from exc
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{ENV_SAMPLE_RATIO}={raw!r} must be within 0..1")
    return ratio


def configure(service_name: str, exporter: SpanExporter | None = None) -> bool:
    """Switches tracing on for this process when configured; returns whether it is on.

    With ``exporter`` (tests), spans go to it synchronously whatever the environment says;
    otherwise tracing is on only when ``EVENTPIPE_OTEL_ENABLED`` is true, with an OTLP exporter.
    A bad sample ratio raises ValueError at start-up.
    """
    global _tracer, _provider
    with _lock:
        if exporter is None and not _enabled_by_env():
            return _tracer is not None
        provider = TracerProvider(
            resource=Resource.create({"service.name": f"eventpipe-{service_name}"}),
            sampler=ParentBased(TraceIdRatioBased(_sample_ratio())),
        )
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            endpoint = os.environ.get(ENV_ENDPOINT, DEFAULT_ENDPOINT)
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        if _provider is not None:
            _provider.shutdown()
        _provider = provider
        _tracer = provider.get_tracer("eventpipe")
        return True


def shutdown() -> None:
    """Flushes and stops tracing (graceful shutdown; tests)."""
    global _tracer, _provider
    with _lock:
        if _provider is not None:
            _provider.shutdown()
        _provider = None
        _tracer = None


def enabled() -> bool:
    return _tracer is not None


def parent_context(traceparent: str | bytes | None) -> otel_context.Context | None:
    """The context a W3C ``traceparent`` value names; None when absent or malformed."""
    if not traceparent:
        return None
    value = (
        traceparent.decode("ascii", "replace") if isinstance(traceparent, bytes) else traceparent
    )
    extracted = _PROPAGATOR.extract({HEADER: value})
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None
    return extracted


@contextlib.contextmanager
def span(
    name: str,
    parent: str | bytes | None = None,
    attributes: Mapping[str, Any] | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
) -> Iterator[trace.Span | None]:
    """A span named ``name``, child of the ``parent`` traceparent (else of the current span).

    Yields None when tracing is off. Exceptions are recorded on the span and re-raised.
    """
    tracer = _tracer
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(
        name, context=parent_context(parent), kind=kind, attributes=dict(attributes or {})
    ) as current:
        yield current


def traceparent_of(current: trace.Span | None) -> str | None:
    """The W3C ``traceparent`` of a span (for the Kafka headers); None when tracing is off."""
    if current is None or not current.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(current))
    return carrier.get(HEADER)


def header_value(headers: list[tuple[str, bytes]] | None) -> bytes | None:
    """The ``traceparent`` header of a Kafka message, if any."""
    for key, value in headers or ():
        if key == HEADER:
            return value
    return None
