"""kill -9 of one of three brokers while events stream in through Envoy and ingest: every
event ingest acknowledged is in Kafka and stored exactly once; what it did not acknowledge the
client sends again, and the store keeps that once too."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from confluent_kafka.admin import AdminClient
from eventpipe.common.v1 import event_pb2, results_pb2
from eventpipe.core.config import CommonSettings
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from eventpipe.stack.components import KafkaBroker
from eventpipe.stack.stack import Stack

from tests.cluster.conftest import (
    CLUSTER_TEST_TIMEOUT,
    raw_topic_event_ids,
    restored,
    wait_stored,
)
from tests.integration.store.conftest import assert_each_exactly_once

pytestmark = [pytest.mark.cluster, pytest.mark.abuse, pytest.mark.timeout(CLUSTER_TEST_TIMEOUT)]

BATCHES = 40
BATCH_SIZE = 100
# Codes a client retries: the write may or may not have happened, the id makes a retry safe.
RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def _event(tenant: str, index: int) -> event_pb2.Event:
    event = event_pb2.Event(
        tenant_id=tenant,
        event_id=f"e-{index:06d}",
        event_type="page_view",
        entity_id=f"user-{index % 97}",
    )
    event.event_time.CopyFrom(timestamp_from_micros(time.time_ns() // 1000 - 1_000_000))
    event.attributes["n"].int_value = index
    return event


class Sender:
    """Ingests batches through Envoy, resending whatever was not acknowledged, and records
    each event id ingest acknowledged (ACCEPTED), never resending those."""

    def __init__(self, address: str, tenant: str) -> None:
        self.address = address
        self.tenant = tenant
        self.acknowledged: set[str] = set()
        self.retried_errors: list[str] = []
        self.other_errors: list[str] = []
        self.lock = threading.Lock()

    def send_all(self, batches: int, deadline: float) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            for b in range(batches):
                pending = [_event(self.tenant, b * BATCH_SIZE + i) for i in range(BATCH_SIZE)]
                while pending:
                    if time.monotonic() > deadline:
                        self.other_errors.append(f"batch {b}: not acknowledged in time")
                        return
                    pending = self._send(stub, pending)

    def _send(self, stub: object, events: list[event_pb2.Event]) -> list[event_pb2.Event]:
        request = ingest_pb2.IngestEventsRequest(tenant_id=self.tenant, events=events)
        try:
            response = stub.IngestEvents(request, timeout=30)  # type: ignore[attr-defined]
        except grpc.RpcError as error:
            if error.code() not in RETRIED:
                self.other_errors.append(f"{error.code()}: {error.details()}")
                raise
            self.retried_errors.append(str(error.code()))
            time.sleep(0.2)  # backoff of a retrying client, not a wait for a condition
            return events
        by_id = {event.event_id: event for event in events}
        again = []
        with self.lock:
            for result in response.results:
                if result.status == results_pb2.ITEM_STATUS_ACCEPTED:
                    self.acknowledged.add(result.id)
                else:
                    self.retried_errors.append(f"item {result.id}: {result.code}")
                    again.append(by_id[result.id])
        return again

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)


def _leader_of_most_partitions(stack: Stack, settings: CommonSettings) -> KafkaBroker:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    topic = admin.list_topics(settings.raw_topic, timeout=10).topics[settings.raw_topic]
    leaders = [p.leader for p in topic.partitions.values()]
    node = max(set(leaders), key=leaders.count)
    return next(b for b in stack.brokers if b.node_id == node)


def test_killing_a_partition_leader_mid_stream_loses_and_doubles_nothing_acknowledged(
    cluster_stack: Stack, cluster_settings: CommonSettings, tenant: str
) -> None:
    victim = _leader_of_most_partitions(cluster_stack, cluster_settings)
    sender = Sender(cluster_stack.envoy.address, tenant)
    deadline = time.monotonic() + 600
    thread = threading.Thread(target=sender.send_all, args=(BATCHES, deadline))
    with restored(victim):
        thread.start()
        try:
            wait_until(
                lambda: sender.count() >= BATCHES * BATCH_SIZE // 4 or not thread.is_alive(),
                timeout=300,
                what="a quarter of the events acknowledged",
            )
            acknowledged_before_kill = sender.count()
            victim.kill()
        finally:
            thread.join()
        assert acknowledged_before_kill < BATCHES * BATCH_SIZE  # the kill came mid-stream

    assert not sender.other_errors
    sent = {f"e-{i:06d}" for i in range(BATCHES * BATCH_SIZE)}
    assert sender.acknowledged == sent
    in_kafka = raw_topic_event_ids(cluster_settings, tenant)
    not_taken = sender.acknowledged - in_kafka.keys()
    assert not not_taken, f"{len(not_taken)} acknowledged events are not in Kafka"
    assert_each_exactly_once(wait_stored(cluster_settings, tenant, sent), sent)
