"""What the consumer tells operators: freshness per stored event, dead letters by reason class,
and one ``store.write_batch`` span per batch continuing the messages' traces."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from eventpipe.core import tracing
from eventpipe.core.dead_letter_reasons import CLASS_NAMES, reason_class
from eventpipe.core.waiting import wait_until
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from store.consumer.batch import DeadLetter

from tests.unit.store.fakes import FakeMessage
from tests.unit.store.test_batch import event, message
from tests.unit.store.test_daemon import Harness

TRACES = [
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
]


def run(messages: list[FakeMessage]) -> Harness:
    harness = Harness(0)
    harness.consumer.queue = messages
    harness.start()
    try:
        wait_until(lambda: harness.committed() == len(messages), timeout=5, what="commits")
    finally:
        harness.stop()
    return harness


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_each_stored_event_is_observed_once_with_its_age_since_ingest_acknowledged_it() -> None:
    acked = int((time.time() - 3) * 1_000_000)  # ingest acknowledged 3 s ago
    count = sample("eventpipe_store_freshness_seconds_count")
    total = sample("eventpipe_store_freshness_seconds_sum")
    under_3s = sample("eventpipe_store_freshness_seconds_bucket", le="2.0")
    run([message(event(i), offset=i, produced_micros=acked) for i in range(4)])
    assert sample("eventpipe_store_freshness_seconds_count") - count == 4
    assert sample("eventpipe_store_freshness_seconds_sum") - total >= 4 * 3
    assert sample("eventpipe_store_freshness_seconds_bucket", le="2.0") == under_3s


def test_dead_letters_are_counted_by_reason_class() -> None:
    before = sample("eventpipe_store_dead_lettered_total", reason="undecodable")
    good = message(event(1), offset=1)
    run([message(event(0), offset=0, _value=b"\xff\x00 not a protobuf"), good])
    assert sample("eventpipe_store_dead_lettered_total", reason="undecodable") - before == 1
    for name in CLASS_NAMES:  # every class is exported, so a rate over it is defined
        labels = {"reason": name}
        assert REGISTRY.get_sample_value("eventpipe_store_dead_lettered_total", labels) is not None


def test_reason_classes_are_few_and_cover_every_reason() -> None:
    assert reason_class("invalid event: event_id: is required") == "invalid-event"
    assert reason_class("bigtable refused the row: INVALID_ARGUMENT: x") == "bigtable"
    assert reason_class("something nobody wrote") == "other"
    assert len(CLASS_NAMES) <= 16
    assert DeadLetter(None, None, [], "empty message value").reason == "empty message value"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure("store-test", exporter=exporter)
    yield exporter
    tracing.shutdown()


def test_one_write_batch_span_per_batch_continues_the_first_trace_and_links_the_others(
    spans: InMemorySpanExporter,
) -> None:
    messages = []
    for i in range(3):  # one batch of three (the harness consumes three at a time)
        m = message(event(i), offset=i)
        m._headers.append((tracing.HEADER, TRACES[min(i, 1)].encode()))
        messages.append(m)
    run(messages)
    finished = [s for s in spans.get_finished_spans() if s.name == "store.write_batch"]
    assert len(finished) == 1
    (span,) = finished
    assert f"{span.context.trace_id:032x}" == TRACES[0].split("-")[1]
    assert span.parent is not None and f"{span.parent.span_id:016x}" == TRACES[0].split("-")[2]
    assert [f"{link.context.trace_id:032x}" for link in span.links] == [TRACES[1].split("-")[1]]
    assert span.attributes is not None and span.attributes["rows"] == 3


def test_without_tracing_the_consumer_makes_no_span(spans: InMemorySpanExporter) -> None:
    tracing.shutdown()
    run([message(event(0), offset=0)])
    assert spans.get_finished_spans() == ()
