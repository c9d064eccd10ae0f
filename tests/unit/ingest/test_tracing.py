"""Ingest's spans: one per RPC, continuing the caller's traceparent (Envoy forwards it), and the
span's own traceparent in the Kafka headers; with tracing off the caller's goes through as it
came. Spans are read back from OpenTelemetry's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from eventpipe.core import tracing
from eventpipe.core.errors import InvalidArgument
from eventpipe.ingest.v1 import ingest_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.unit.ingest.test_backfill import servicer
from tests.unit.ingest.test_pipeline import FakeLog, event

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
CALLER = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"


class TracedContext:
    """What the servicer reads of a call: its metadata, with the caller's traceparent."""

    def __init__(self, traceparent: str | None = CALLER) -> None:
        self.traceparent = traceparent

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("traceparent", self.traceparent),) if self.traceparent else ()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    assert tracing.configure("ingest", exporter=spans)
    yield spans
    tracing.shutdown()


def kafka_traceparent(log: FakeLog) -> str:
    (headers,) = log.headers
    return dict(headers)["traceparent"].decode()


def assert_one_span_continuing_the_caller(
    exporter: InMemorySpanExporter, name: str, log: FakeLog
) -> None:
    (span,) = exporter.get_finished_spans()
    assert span.name == name
    assert span.kind is SpanKind.SERVER
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None and f"{span.parent.span_id:016x}" == CALLER_SPAN_ID
    # The messages carry the ingest span, so the store's span becomes its child, not a sibling.
    assert kafka_traceparent(log) == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"


def test_ingest_events_opens_a_span_under_the_callers_trace_and_hands_it_to_kafka(
    exporter: InMemorySpanExporter,
) -> None:
    log = FakeLog()
    request = ingest_pb2.IngestEventsRequest(tenant_id="acme", events=[event("a"), event("b")])
    servicer(log).IngestEvents(request, TracedContext())  # type: ignore[arg-type]
    assert_one_span_continuing_the_caller(exporter, "ingest.IngestEvents", log)
    (span,) = exporter.get_finished_spans()
    assert span.attributes == {"eventpipe.tenant_id": "acme"}


def test_ingest_event_opens_its_own_span(exporter: InMemorySpanExporter) -> None:
    log = FakeLog()
    request = ingest_pb2.IngestEventRequest(tenant_id="acme", event=event("a"))
    servicer(log).IngestEvent(request, TracedContext())  # type: ignore[arg-type]
    assert_one_span_continuing_the_caller(exporter, "ingest.IngestEvent", log)


def test_a_stream_is_one_span_whose_batches_carry_it(exporter: InMemorySpanExporter) -> None:
    log = FakeLog()
    requests = [
        ingest_pb2.StreamEventsRequest(batch_id="1", tenant_id="acme", events=[event("a")]),
        ingest_pb2.StreamEventsRequest(batch_id="2", tenant_id="acme", events=[event("b")]),
    ]
    replies = list(servicer(log).StreamEvents(iter(requests), TracedContext()))  # type: ignore[arg-type]
    assert [r.batch_id for r in replies] == ["1", "2"]
    (span,) = exporter.get_finished_spans()
    assert span.name == "ingest.StreamEvents"
    expected = f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    assert [dict(headers)["traceparent"].decode() for headers in log.headers] == [expected] * 2


def test_without_a_callers_traceparent_the_span_starts_a_trace_of_its_own(
    exporter: InMemorySpanExporter,
) -> None:
    log = FakeLog()
    request = ingest_pb2.IngestEventsRequest(tenant_id="acme", events=[event("a")])
    servicer(log).IngestEvents(request, TracedContext(None))  # type: ignore[arg-type]
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert kafka_traceparent(log).split("-")[2] == f"{span.context.span_id:016x}"


def test_a_refused_request_ends_its_span_as_an_error(exporter: InMemorySpanExporter) -> None:
    request = ingest_pb2.IngestEventsRequest(tenant_id="bad tenant", events=[event("a")])
    with pytest.raises(InvalidArgument, match="tenant_id"):
        servicer(FakeLog()).IngestEvents(request, TracedContext())  # type: ignore[arg-type]
    (span,) = exporter.get_finished_spans()
    assert not span.status.is_ok


def test_with_tracing_off_the_callers_traceparent_goes_to_kafka_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(tracing.ENV_ENABLED, raising=False)
    tracing.shutdown()
    assert not tracing.enabled()
    log = FakeLog()
    request = ingest_pb2.IngestEventsRequest(tenant_id="acme", events=[event("a")])
    servicer(log).IngestEvents(request, TracedContext())  # type: ignore[arg-type]
    assert kafka_traceparent(log) == CALLER
