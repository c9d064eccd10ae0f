"""One trace follows one event from ingest through Kafka to the store (issue 17, "Traces").

The ingest service and the store service (its consumer daemon included) run in this process,
each built by its own ``server.build`` and started by the shared ``create_server``, against the
session's real Kafka broker and Bigtable emulator, with tracing switched on with an in-memory
exporter. A caller sends the W3C ``traceparent`` that Envoy forwards; the test then reads back
the spans: ingest's server span continues the caller's trace, its traceparent rides the Kafka
message's header, and the store's span for the batch that wrote the event continues it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import pytest
from eventpipe.common.v1 import event_pb2, results_pb2
from eventpipe.core import tracing
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import message_headers
from eventpipe.core.server import RunningServer, create_server
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from eventpipe.store.v1 import store_pb2, store_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import Isolation
from tests.integration.ingest.conftest import read_topic

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN_ID = "b7ad6b7169203331"
CALLER = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"
INGEST_SPAN = "ingest.IngestEvents"
STORE_SPAN = "store.write_batch"
DEADLINE_SECONDS = 60.0


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    assert tracing.configure("e2e", exporter=spans)
    yield spans
    tracing.shutdown()


@pytest.fixture
def traced_services(
    common_settings: CommonSettings,
    service_env: dict[str, str],
    exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Ingest and store, built as their processes build them, serving on free ports here."""
    import ingest.server
    import store.server
    from ingest.config import IngestSettings
    from store.config import StoreSettings

    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    for key in ("EVENTPIPE_AUTH_JWKS_URL", "EVENTPIPE_AUTH_JWKS_FILE"):
        monkeypatch.delenv(key, raising=False)
    ingest_settings = IngestSettings(host="127.0.0.1", port=0, workers=1)
    store_settings = StoreSettings(host="127.0.0.1", port=0)
    started: list[RunningServer] = []
    try:
        for build, settings in (
            (ingest.server.build, ingest_settings),
            (store.server.build, store_settings),
        ):
            definition = build(settings, common_settings)  # type: ignore[operator]
            started.append(create_server(definition, settings, start_metrics=False))
        yield started[0], started[1]
    finally:
        for running in reversed(started):
            running.stop(5)


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def test_one_trace_covers_an_event_from_ingest_through_kafka_to_the_store_write(
    traced_services: tuple[RunningServer, RunningServer],
    exporter: InMemorySpanExporter,
    common_settings: CommonSettings,
    isolation: Isolation,
) -> None:
    ingest_server, store_server = traced_services
    event = event_pb2.Event(event_id="traced-1", event_type="page_view", entity_id="user-1")
    event.event_time.CopyFrom(timestamp_from_micros(int(datetime.now(UTC).timestamp() * 1e6)))

    with grpc.insecure_channel(f"127.0.0.1:{ingest_server.port}") as channel:
        reply = ingest_pb2_grpc.IngestServiceStub(channel).IngestEvents(
            ingest_pb2.IngestEventsRequest(tenant_id=isolation.tenant_id, events=[event]),
            metadata=[("traceparent", CALLER)],
            timeout=30,
        )
    assert [result.status for result in reply.results] == [results_pb2.ITEM_STATUS_ACCEPTED]

    with grpc.insecure_channel(f"127.0.0.1:{store_server.port}") as channel:
        store = store_pb2_grpc.StoreServiceStub(channel)

        def stored() -> bool:
            page = store.ListRawEvents(
                store_pb2.ListRawEventsRequest(tenant_id=isolation.tenant_id, entity_id="user-1"),
                timeout=10,
            )
            return [e.event_id for e in page.events] == ["traced-1"]

        wait_until(stored, timeout=DEADLINE_SECONDS, what="the store to write the event")

    # Ingest continued the caller's trace...
    (ingest_span,) = spans_named(exporter, INGEST_SPAN)
    assert hex_trace(ingest_span) == TRACE_ID
    assert ingest_span.parent is not None
    assert f"{ingest_span.parent.span_id:016x}" == CALLER_SPAN_ID
    # ...and handed its own span to Kafka in the message's traceparent header.
    (message,) = read_topic(common_settings, 1, key_prefix=f"{isolation.tenant_id}#".encode())
    assert ingest_span.context is not None
    assert dict(message_headers(message))["traceparent"].decode() == (
        f"00-{TRACE_ID}-{ingest_span.context.span_id:016x}-01"
    )

    def store_span_of_the_trace() -> bool:
        return any(hex_trace(span) == TRACE_ID for span in spans_named(exporter, STORE_SPAN))

    # The batch's span ends right after its rows are written, a moment after the row is readable.
    wait_until(store_span_of_the_trace, timeout=DEADLINE_SECONDS, what=f"a {STORE_SPAN} span")
    # The consumer reads this test's topic only, so the batch holds this one event: its span is
    # the ingest span's child, in the caller's trace.
    (store_span,) = spans_named(exporter, STORE_SPAN)
    assert hex_trace(store_span) == TRACE_ID
    assert store_span.parent is not None and ingest_span.context is not None
    assert store_span.parent.span_id == ingest_span.context.span_id
