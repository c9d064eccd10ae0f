"""What an operator sees of a streaming job, on the real Kafka topic and Spark: each
micro-batch is a span ``enrich.stream_batch`` continuing the trace its events carry in the
``traceparent`` header, and the consumer lag per raw-topic partition is exported (0 once the
stream caught up)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from enrich.adapters.spark_engine import SparkEngine
from eventpipe.core import tracing
from eventpipe.core.storage.tables import ENRICHED_EVENTS_TABLE
from eventpipe.core.waiting import wait_until
from google.cloud.bigtable.table import Table
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from tests.integration.enrich import dataset
from tests.integration.enrich.conftest import (
    produce_events,
    recent,
    start_test_stream,
    write_dimensions,
)
from tests.integration.enrich.test_batch_enrichment import dump

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure("enrich", exporter=exporter)
    yield exporter
    tracing.shutdown()


def lags(topic: str) -> dict[str, float]:
    """partition -> eventpipe_enrich_streaming_lag of ``topic``."""
    found: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if metric.name == "eventpipe_enrich_streaming_lag":
            for s in metric.samples:
                if s.labels.get("topic") == topic:
                    found[s.labels["partition"]] = s.value
    return found


def test_a_micro_batch_continues_its_events_trace_and_the_lag_per_partition_is_exported(
    engine: SparkEngine,
    tables: dict[str, Table],
    common_settings: Any,
    isolation: Any,
    tmp_path: Any,
    spans: InMemorySpanExporter,
) -> None:
    data = recent(dataset.generate(isolation.tenant_id, events=10, seed=5))
    write_dimensions(tables, data)
    topic = common_settings.raw_topic
    handle = start_test_stream(
        engine, common_settings, isolation.tenant_id, tmp_path / "checkpoint", lambda _b: None
    )
    try:
        wait_until(handle.started, timeout=180, what="first micro-batch")
        produce_events(common_settings, data.events, TRACEPARENT)
        expected = set(dataset.expected_enriched(data))
        wait_until(
            lambda: set(dump(tables[ENRICHED_EVENTS_TABLE])) == expected,
            timeout=120,
            what="every streamed event enriched",
        )

        def batch_spans() -> list[Any]:
            return [
                s
                for s in spans.get_finished_spans()
                if s.name == "enrich.stream_batch"
                and s.attributes.get("eventpipe.tenant_id") == isolation.tenant_id
                and s.attributes.get("eventpipe.events_read")
            ]

        wait_until(
            lambda: (
                sum(s.attributes["eventpipe.events_read"] for s in batch_spans())
                == len(data.events)
            ),
            timeout=60,
            what="the micro-batches' spans",
        )
        wait_until(
            lambda: bool(lags(topic)) and all(v == 0 for v in lags(topic).values()),
            timeout=60,
            what="the lag of every partition, caught up",
        )
    finally:
        handle.stop()

    for span in batch_spans():
        assert format(span.context.trace_id, "032x") == TRACE_ID
        assert span.parent is not None
        assert format(span.parent.span_id, "016x") == PARENT_SPAN_ID
    # A stopped stream's partitions leave the gauge (no other stream reads this topic).
    wait_until(lambda: not lags(topic), timeout=60, what="the stopped stream's lag removed")
