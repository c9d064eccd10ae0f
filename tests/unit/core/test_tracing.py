"""Tracing: off costs nothing and yields no span; on, a child continues its parent's trace."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from eventpipe.core import tracing
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    assert tracing.configure("test", exporter=spans)
    yield spans
    tracing.shutdown()


def test_tracing_is_off_by_default_and_a_span_is_then_none(monkeypatch) -> None:
    monkeypatch.delenv(tracing.ENV_ENABLED, raising=False)
    tracing.shutdown()
    assert tracing.configure("test") is False
    with tracing.span("work", parent=PARENT) as current:
        assert current is None
    assert tracing.traceparent_of(None) is None


def test_a_span_continues_the_trace_of_its_traceparent(exporter) -> None:
    with tracing.span("ingest.produce", parent=PARENT) as current:
        child = tracing.traceparent_of(current)
    assert child is not None and child.split("-")[1] == PARENT.split("-")[1]
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "ingest.produce"
    assert finished.parent is not None and f"{finished.parent.span_id:016x}" == PARENT.split("-")[2]


def test_a_malformed_traceparent_starts_a_new_trace(exporter) -> None:
    with tracing.span("store.write", parent=b"not-a-traceparent") as current:
        assert current is not None
    (finished,) = exporter.get_finished_spans()
    assert finished.parent is None


def test_the_traceparent_header_is_found_among_kafka_headers() -> None:
    headers = [("tenant", b"t1"), ("traceparent", PARENT.encode())]
    assert tracing.header_value(headers) == PARENT.encode()
    assert tracing.header_value(None) is None


def test_a_bad_sample_ratio_fails_at_start(monkeypatch) -> None:
    monkeypatch.setenv(tracing.ENV_ENABLED, "true")
    monkeypatch.setenv(tracing.ENV_SAMPLE_RATIO, "2")
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        tracing.configure("test")
    tracing.shutdown()
