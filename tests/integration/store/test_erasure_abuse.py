"""Erasure under abuse, on real Kafka, the real emulator and a store process: hostile ids,
a flood of old events for an erased entity, and an erasure racing the consumer's writes."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest
from eventpipe.common.v1 import event_pb2
from eventpipe.core.config import CommonSettings
from eventpipe.core.storage.times import micros, timestamp_from_micros
from eventpipe.core.waiting import wait_until
from eventpipe.store.v1 import store_pb2

from tests.conftest import Isolation
from tests.helpers.rpc import field_violations
from tests.integration.store.conftest import consumer_status, make_event, produce_events

pytestmark = [pytest.mark.abuse]


def now_micros() -> int:
    return int(time.time() * 1_000_000)


def entity_event(tenant: str, entity: str, event_id: str, event_micros: int) -> event_pb2.Event:
    event = make_event(tenant, 0)
    event.entity_id = entity
    event.event_id = event_id
    event.event_time.CopyFrom(timestamp_from_micros(event_micros))
    event.ingest_time.CopyFrom(timestamp_from_micros(now_micros()))
    return event


def stored(stub: Any, tenant: str, entity: str) -> list[event_pb2.Event]:
    events: list[event_pb2.Event] = []
    token = ""
    while True:
        page = stub.ListRawEvents(
            store_pb2.ListRawEventsRequest(
                tenant_id=tenant, entity_id=entity, page_size=1000, page_token=token
            ),
            timeout=10,
        )
        events += page.events
        token = page.next_page_token
        if not token:
            return events


def caught_up(stub: Any, messages: int) -> bool:
    status = consumer_status(stub)
    return (
        bool(status.partitions)
        and all(p.lag == 0 for p in status.partitions)
        and sum(p.high_watermark for p in status.partitions) == messages
    )


def erase(stub: Any, tenant: str, entity: str) -> store_pb2.EntityErasure:
    request = store_pb2.DeleteEntityRequest(tenant_id=tenant, entity_id=entity)
    return stub.DeleteEntity(request, timeout=30).erasure


HOSTILE_IDS = [
    (None, "user#1", "entity_id"),  # '#' would widen the key prefix to other entities
    (None, "user-1#", "entity_id"),
    (None, "", "entity_id"),
    (None, "u" * 129, "entity_id"),
    (None, "user\n1", "entity_id"),
    ("acme#x", "user-1", "tenant_id"),
    ("", "user-1", "tenant_id"),
]


def test_an_erasure_with_a_hostile_id_is_refused_naming_the_field_and_deletes_nothing(
    store_stub: Any, common_settings: CommonSettings, isolation: Isolation
) -> None:
    tenant = isolation.tenant_id
    produced = produce_events(common_settings, [entity_event(tenant, "user-1", "e1", now_micros())])
    wait_until(lambda: caught_up(store_stub, produced), timeout=60, what="stored")
    for tenant_id, entity_id, field in HOSTILE_IDS:
        with pytest.raises(grpc.RpcError) as refused:
            erase(store_stub, tenant if tenant_id is None else tenant_id, entity_id)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, entity_id
        assert field_violations(refused.value) == [field], entity_id
    assert [e.event_id for e in stored(store_stub, tenant, "user-1")] == ["e1"]


def test_a_flood_of_old_and_re_sent_events_for_an_erased_entity_never_lands(
    store_stub: Any, common_settings: CommonSettings, isolation: Isolation
) -> None:
    tenant = isolation.tenant_id
    first = [entity_event(tenant, "victim", f"v{i}", now_micros() - i * 1000) for i in range(20)]
    produced = produce_events(common_settings, first)
    wait_until(lambda: caught_up(store_stub, produced), timeout=60, what="stored")
    erased_at = micros(erase(store_stub, tenant, "victim").erase_time)
    assert erase(store_stub, tenant, "victim").deleted_rows["events"] == 0  # idempotent

    flood = [
        entity_event(tenant, "victim", f"old-{i}", erased_at - i * 1_000_000) for i in range(400)
    ]
    flood += first  # re-sent copies of the erased events, ids and times unchanged
    flood += [entity_event(tenant, "bystander", f"b{i}", now_micros()) for i in range(50)]
    produced += produce_events(common_settings, flood)
    wait_until(lambda: caught_up(store_stub, produced), timeout=120, what="flood consumed")
    assert stored(store_stub, tenant, "victim") == []
    assert len(stored(store_stub, tenant, "bystander")) == 50
    records = store_stub.ListEntityErasures(
        store_pb2.ListEntityErasuresRequest(tenant_id=tenant), timeout=10
    ).erasures
    assert [r.entity_id for r in records] == ["victim", "victim"]


def test_an_erasure_racing_the_consumer_leaves_no_event_from_before_it(
    store_stub: Any, common_settings: CommonSettings, isolation: Isolation
) -> None:
    """Events of the entity stream in (event time = when produced) while it is erased: every
    event stored afterwards is newer than the erasure, whichever batch was in flight."""
    tenant = isolation.tenant_id
    stop = threading.Event()
    produced = 0

    def stream() -> None:
        nonlocal produced
        n = 0
        while not stop.is_set():
            batch = [entity_event(tenant, "racer", f"r{n + i}", now_micros()) for i in range(20)]
            n += len(batch)
            produced += produce_events(common_settings, batch)

    producer = threading.Thread(target=stream)
    producer.start()
    try:
        wait_until(lambda: len(stored(store_stub, tenant, "racer")) >= 100, timeout=60, what="flow")
        erased_at = micros(erase(store_stub, tenant, "racer").erase_time)
        wait_until(lambda: produced >= 400, timeout=60, what="more events after the erasure")
    finally:
        stop.set()
        producer.join(60)
    wait_until(lambda: caught_up(store_stub, produced), timeout=120, what="all consumed")
    left = stored(store_stub, tenant, "racer")
    assert left, "events produced after the erasure are new activity and are stored"
    assert all(micros(e.event_time) > erased_at for e in left), [
        (e.event_id, micros(e.event_time) - erased_at)
        for e in left
        if micros(e.event_time) <= erased_at
    ]
