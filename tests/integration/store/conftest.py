"""Helpers of the store's integration tests: events produced by the topic contract straight
into the raw topic (as ingest and direct producers do), stored rows read back with every cell
version, and a store service process started with short timeouts."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
import pytest
from confluent_kafka import Consumer, Producer
from eventpipe.common.v1 import event_pb2
from eventpipe.core import topic_contract
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import consumer_config, producer_config
from eventpipe.core.storage.tables import RAW_EVENTS_TABLE
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.stack.components import GrpcService
from eventpipe.store.v1 import store_pb2, store_pb2_grpc
from google.cloud.bigtable.data import BigtableDataClient, ReadRowsQuery, RowRange

# Short enough that a restarted consumer gets a killed one's partitions quickly.
FAST_STORE_ENV = {
    "EVENTPIPE_STORE_SESSION_TIMEOUT_MS": "6000",
    "EVENTPIPE_STORE_BACKOFF_MAX_SECONDS": "1.0",
    "EVENTPIPE_STORE_WRITE_ATTEMPT_TIMEOUT_SECONDS": "3",
    "EVENTPIPE_STORE_SHUTDOWN_GRACE_SECONDS": "10",
}


def make_event(tenant_id: str, index: int, entity_count: int = 50) -> event_pb2.Event:
    now = int(time.time() * 1_000_000)
    event = event_pb2.Event(
        tenant_id=tenant_id,
        event_id=f"ev-{index:07d}",
        event_type="page_view",
        entity_id=f"user-{index % entity_count}",
    )
    event.event_time.CopyFrom(timestamp_from_micros(now - index * 1000))
    event.ingest_time.CopyFrom(timestamp_from_micros(now))
    event.attributes["url"].string_value = f"/products/{index % 97}"
    event.attributes["position"].int_value = index
    return event


def produce(
    common: CommonSettings,
    messages: Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
) -> int:
    """Produces (key, value, headers) to the raw topic; returns how many were acknowledged."""
    producer = Producer(producer_config(common))
    acked = 0
    errors: list[str] = []

    def on_delivery(error: Any, _message: Any) -> None:
        nonlocal acked
        if error is None:
            acked += 1
        else:
            errors.append(str(error))

    for key, value, headers in messages:
        while True:
            try:
                producer.produce(
                    common.raw_topic, key=key, value=value, headers=headers, on_delivery=on_delivery
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:3]
    return acked


def contract_message(
    event: event_pb2.Event,
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    return (
        topic_contract.message_key(event.tenant_id, event.entity_id),
        event.SerializeToString(),
        topic_contract.message_headers(event),
    )


def produce_events(common: CommonSettings, events: Iterable[event_pb2.Event]) -> int:
    return produce(common, (contract_message(e) for e in events))


def stored_event_cells(common: CommonSettings) -> dict[str, Counter[tuple[str, bytes]]]:
    """event_id -> number of cell versions per column, for every row of the raw table."""
    client = BigtableDataClient(project=common.bigtable_project)
    try:
        table = client.get_table(common.bigtable_instance, common.table_prefix + RAW_EVENTS_TABLE)
        rows = table.read_rows(ReadRowsQuery(row_ranges=[RowRange(b"", None)]))
        result: dict[str, Counter[tuple[str, bytes]]] = {}
        for row in rows:
            event_id = row.row_key.rsplit(b"#", 1)[1].decode()
            assert event_id not in result, f"event {event_id} stored in two rows"
            result[event_id] = Counter((c.family, c.qualifier) for c in row.cells)
        return result
    finally:
        client.close()


def assert_each_exactly_once(
    stored: dict[str, Counter[tuple[str, bytes]]], event_ids: set[str]
) -> None:
    missing = event_ids - stored.keys()
    assert not missing, f"{len(missing)} events missing, e.g. {sorted(missing)[:5]}"
    extra = stored.keys() - event_ids
    assert not extra, f"{len(extra)} unexpected rows, e.g. {sorted(extra)[:5]}"
    versions = {eid: c for eid, c in stored.items() if any(n != 1 for n in c.values())}
    assert not versions, f"duplicated cell versions, e.g. {next(iter(versions.items()))}"


def dead_letters(common: CommonSettings, expected: int, timeout: float = 60) -> list[Any]:
    """Reads ``expected`` messages from the dead-letter topic (fails after ``timeout``)."""
    consumer = Consumer(consumer_config(common, f"{common.topic_prefix}dlq-reader"))
    consumer.subscribe([common.dead_letter_topic])
    found: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < expected and time.monotonic() < deadline:
            found += [m for m in consumer.consume(100, timeout=0.5) if m.error() is None]
    finally:
        consumer.close()
    return found


@pytest.fixture
def start_store(start_service: Callable[..., GrpcService]) -> Callable[..., GrpcService]:
    def start(env: dict[str, str] | None = None) -> GrpcService:
        return start_service("store", env={**FAST_STORE_ENV, **(env or {})}, timeout=90)

    return start


@pytest.fixture
def store_stub(start_store: Callable[..., GrpcService]) -> Iterator[Any]:
    service = start_store()
    with grpc.insecure_channel(service.address) as channel:
        yield store_pb2_grpc.StoreServiceStub(channel)


def consumer_status(stub: Any) -> store_pb2.GetConsumerStatusResponse:
    return stub.GetConsumerStatus(store_pb2.GetConsumerStatusRequest(), timeout=5)
