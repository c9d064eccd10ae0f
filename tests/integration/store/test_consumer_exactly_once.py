"""Every acknowledged event ends up in Bigtable exactly once, however the consumer stops."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import grpc
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient
from eventpipe.core.config import CommonSettings
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from eventpipe.stack.components import GrpcService
from eventpipe.store.v1 import store_pb2_grpc

from tests.conftest import Isolation
from tests.integration.store.conftest import (
    assert_each_exactly_once,
    consumer_status,
    make_event,
    produce_events,
    stored_event_cells,
)


def _rows_written(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return consumer_status(store_pb2_grpc.StoreServiceStub(channel)).rows_written


def test_events_produced_by_the_topic_contract_appear_in_bigtable_exactly_once(
    common_settings: CommonSettings, store_stub: Any, isolation: Isolation
) -> None:
    events = [make_event(isolation.tenant_id, i) for i in range(2000)]
    assert produce_events(common_settings, events) == len(events)
    # Replaying the same events (a producer retry, a re-sent file) must not duplicate them:
    # they are new messages with stored event ids, dropped by the idempotency index.
    assert produce_events(common_settings, events[:500]) == 500

    wait_until(
        lambda: consumer_status(store_stub).rows_written >= 2000,
        timeout=120,
        what="the consumer to write 2,000 rows",
    )
    wait_until(
        lambda: all(p.lag == 0 for p in consumer_status(store_stub).partitions),
        timeout=60,
        what="every partition to be committed",
    )
    assert consumer_status(store_stub).rows_written == 2000  # the 500 re-sent ones were not
    assert_each_exactly_once(stored_event_cells(common_settings), {e.event_id for e in events})


def _wait_all_committed(address: str, partitions: int, timeout: float = 180) -> None:
    def committed() -> bool:
        with grpc.insecure_channel(address) as channel:
            status = consumer_status(store_pb2_grpc.StoreServiceStub(channel))
        return len(status.partitions) == partitions and all(p.lag == 0 for p in status.partitions)

    wait_until(committed, timeout=timeout, what="every partition to be committed")


def test_a_consumer_killed_mid_stream_replays_on_restart_without_loss_or_duplicates(
    common_settings: CommonSettings, start_store: Callable[..., GrpcService], isolation: Isolation
) -> None:
    total = 50_000
    events = [make_event(isolation.tenant_id, i, entity_count=500) for i in range(total)]
    first = start_store()
    producer = threading.Thread(target=produce_events, args=(common_settings, events))
    producer.start()
    try:
        wait_until(
            lambda: _rows_written(first.address) >= 10_000,
            timeout=180,
            what="the consumer to be mid-way",
        )
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
        wait_until(lambda: not first.process.is_running(), timeout=30, what="the kill")
        assert len(stored_event_cells(common_settings)) < total  # it really was mid-way
    finally:
        producer.join()

    second = start_store()
    _wait_all_committed(second.address, common_settings.raw_topic_partitions)
    assert_each_exactly_once(stored_event_cells(common_settings), {e.event_id for e in events})


def test_sigterm_finishes_the_batch_commits_leaves_the_group_and_exits_zero(
    common_settings: CommonSettings, start_store: Callable[..., GrpcService], isolation: Isolation
) -> None:
    events = [make_event(isolation.tenant_id, i) for i in range(20_000)]
    service = start_store()
    producer = threading.Thread(target=produce_events, args=(common_settings, events))
    producer.start()
    try:
        wait_until(lambda: _rows_written(service.address) >= 2_000, timeout=120, what="consumption")
        popen = service.process._popen
        assert popen is not None
        popen.send_signal(signal.SIGTERM)
        assert popen.wait(timeout=60) == 0
    finally:
        producer.join()

    # Left the group: no member holds partitions waiting for a session timeout.
    admin = AdminClient({"bootstrap.servers": common_settings.kafka_bootstrap_servers})
    group = f"{common_settings.topic_prefix}store"
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    assert description.members == []
    # Everything it wrote was committed: what is stored is exactly what is below the offsets.
    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
    committed = sum(
        tp.offset for tp in offsets[group].result(timeout=30).topic_partitions if tp.offset > 0
    )
    assert committed == len(stored_event_cells(common_settings))

    restarted = start_store()
    _wait_all_committed(restarted.address, common_settings.raw_topic_partitions)
    assert_each_exactly_once(stored_event_cells(common_settings), {e.event_id for e in events})


def test_events_ingested_through_the_api_all_appear_in_bigtable_exactly_once(
    common_settings: CommonSettings,
    start_service: Callable[..., GrpcService],
    store_stub: Any,
    isolation: Isolation,
) -> None:
    ingest = start_service("ingest")
    events = [make_event(isolation.tenant_id, i) for i in range(3000)]
    for event in events:
        event.ClearField("tenant_id")  # taken from the request
        event.ClearField("ingest_time")  # set by ingest
    with grpc.insecure_channel(ingest.address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for start in range(0, len(events), 1000):
            response = stub.IngestEvents(
                ingest_pb2.IngestEventsRequest(
                    tenant_id=isolation.tenant_id, events=events[start : start + 1000]
                ),
                timeout=60,
            )
            assert response.summary.accepted_count == 1000, response.results[0]

    wait_until(
        lambda: (
            consumer_status(store_stub).rows_written == len(events)
            and all(p.lag == 0 for p in consumer_status(store_stub).partitions)
        ),
        timeout=120,
        what="every ingested event to be stored and committed",
    )
    assert_each_exactly_once(stored_event_cells(common_settings), {e.event_id for e in events})
