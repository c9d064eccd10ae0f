"""kill -9 of one of the two store consumers mid-stream: the group gives its partitions to the
other, which replays what the dead one had written but not committed; nothing is lost and
nothing is written twice."""

from __future__ import annotations

import threading

import grpc
import pytest
from confluent_kafka.admin import AdminClient
from eventpipe.core.config import CommonSettings
from eventpipe.core.waiting import wait_until
from eventpipe.stack.stack import Stack
from eventpipe.store.v1 import store_pb2_grpc

from tests.cluster.conftest import CLUSTER_TEST_TIMEOUT, restored, stored_rows, wait_stored
from tests.integration.store.conftest import (
    assert_each_exactly_once,
    consumer_status,
    make_event,
    produce_events,
)

pytestmark = [pytest.mark.cluster, pytest.mark.abuse, pytest.mark.timeout(CLUSTER_TEST_TIMEOUT)]

TOTAL = 20_000


def _rows_written(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return consumer_status(store_pb2_grpc.StoreServiceStub(channel)).rows_written


def _members(settings: CommonSettings) -> list[set[int]]:
    """The partitions each member of the store's group holds."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    group = f"{settings.topic_prefix}store"
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return [
        {tp.partition for tp in member.assignment.topic_partitions}
        for member in description.members
    ]


def test_killing_one_of_two_consumers_mid_stream_rebalances_without_loss_or_doubles(
    cluster_stack: Stack, cluster_settings: CommonSettings, tenant: str
) -> None:
    survivor, victim = cluster_stack.replicas["store"]
    partitions = set(range(cluster_settings.raw_topic_partitions))
    wait_until(
        lambda: len(members := _members(cluster_settings)) == 2 and all(members),
        timeout=120,
        what="both consumers to hold partitions",
    )
    events = [make_event(tenant, i, entity_count=500) for i in range(TOTAL)]
    victim_rows_before = _rows_written(victim.address)
    producer = threading.Thread(target=produce_events, args=(cluster_settings, events))
    with restored(victim):
        producer.start()
        try:
            wait_until(
                lambda: _rows_written(victim.address) - victim_rows_before >= 1_000,
                timeout=300,
                what="the second consumer to be writing",
            )
            victim.kill()
            assert len(stored_rows(cluster_settings, tenant)) < TOTAL  # it really was mid-way
        finally:
            producer.join()
        wait_until(
            lambda: _members(cluster_settings) == [partitions],
            timeout=180,
            what="the survivor to hold every partition",
        )
        ids = {event.event_id for event in events}
        assert_each_exactly_once(wait_stored(cluster_settings, tenant, ids), ids)
    assert survivor.safe_is_healthy()
