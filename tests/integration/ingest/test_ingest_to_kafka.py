"""Ingest writes to real Kafka and acknowledges only what Kafka confirmed."""

from __future__ import annotations

import itertools
import urllib.request
from collections.abc import Iterator

import grpc
from eventpipe.common.v1 import event_pb2, results_pb2
from eventpipe.core import topic_contract
from eventpipe.ingest.v1 import ingest_pb2
from google.rpc.code_pb2 import INVALID_ARGUMENT, OK

from tests.integration.ingest.conftest import IngestUnderTest, read_topic
from tests.integration.ingest.events import now_micros, valid_event

ACCEPTED = results_pb2.ITEM_STATUS_ACCEPTED
DUPLICATE = results_pb2.ITEM_STATUS_DUPLICATE
REJECTED = results_pb2.ITEM_STATUS_REJECTED


def test_events_produced_are_consumed_back_byte_for_byte(
    ingest_service: IngestUnderTest, ingest_channel: grpc.Channel
) -> None:
    tenant = ingest_service.tenant_id
    sent = [valid_event(f"rt-{i}", entity_id=f"user-{i % 3}", price=1.5, qty=i) for i in range(20)]
    before = now_micros()
    response = ingest_service.stub(ingest_channel).IngestEvents(
        ingest_pb2.IngestEventsRequest(tenant_id=tenant, events=sent),
        metadata=[("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
    )
    assert [r.status for r in response.results] == [ACCEPTED] * 20

    messages = read_topic(ingest_service.settings, 20, key_prefix=f"{tenant}#".encode())
    by_id = {event_pb2.Event.FromString(m.value()).event_id: m for m in messages}
    assert sorted(by_id) == sorted(e.event_id for e in sent)
    for original in sent:
        message = by_id[original.event_id]
        stored = event_pb2.Event.FromString(message.value())
        # The server stamps tenant and ingest time; everything else is the client's, unchanged.
        assert before <= stored.ingest_time.ToMicroseconds() <= now_micros()
        expected = event_pb2.Event()
        expected.CopyFrom(original)
        expected.tenant_id = tenant
        expected.ingest_time.CopyFrom(stored.ingest_time)
        assert message.value() == expected.SerializeToString(deterministic=True)
        assert message.key() == topic_contract.message_key(tenant, original.entity_id)
        headers = dict(message.headers() or [])
        assert headers[topic_contract.HEADER_TENANT] == tenant.encode()
        assert headers[topic_contract.HEADER_SCHEMA] == b"eventpipe.common.v1.Event;v=1"
        assert (
            int(headers[topic_contract.HEADER_INGEST_TIME]) == stored.ingest_time.ToMicroseconds()
        )
        assert headers[topic_contract.HEADER_TRACEPARENT].startswith(b"00-0af7651916cd43dd")


def test_one_entitys_events_land_in_one_partition_in_order(
    ingest_service: IngestUnderTest, ingest_channel: grpc.Channel
) -> None:
    tenant = ingest_service.tenant_id
    entity = "ordered-entity"
    sent = [valid_event(f"order-{i:03d}", entity_id=entity) for i in range(50)]
    stub = ingest_service.stub(ingest_channel)
    for chunk in (sent[:25], sent[25:]):
        stub.IngestEvents(ingest_pb2.IngestEventsRequest(tenant_id=tenant, events=chunk))
    key = topic_contract.message_key(tenant, entity)
    mine = read_topic(ingest_service.settings, 50, key_prefix=key)
    assert len({m.partition() for m in mine}) == 1
    assert [
        event_pb2.Event.FromString(m.value()).event_id
        for m in sorted(mine, key=lambda m: m.offset())
    ] == [e.event_id for e in sent]


def test_a_mixed_batch_gets_exact_results_per_event(
    ingest_service: IngestUnderTest, ingest_channel: grpc.Channel
) -> None:
    tenant = ingest_service.tenant_id
    bad_type = valid_event("mixed-2")
    bad_type.event_type = "Not Valid"
    no_time = valid_event("mixed-3")
    no_time.ClearField("event_time")
    other_tenant = valid_event("mixed-5")
    other_tenant.tenant_id = "someone-else"
    events = [
        valid_event("mixed-0"),
        valid_event("mixed-1"),
        bad_type,
        no_time,
        valid_event("mixed-0"),  # duplicate of index 0
        other_tenant,
        valid_event("mixed-6", entity_id="user-9"),
    ]
    response = ingest_service.stub(ingest_channel).IngestEvents(
        ingest_pb2.IngestEventsRequest(tenant_id=tenant, events=events)
    )
    results = [
        (r.index, r.id, r.status, r.code, [v.field for v in r.violations]) for r in response.results
    ]
    assert results == [
        (0, "mixed-0", ACCEPTED, OK, []),
        (1, "mixed-1", ACCEPTED, OK, []),
        (2, "mixed-2", REJECTED, INVALID_ARGUMENT, ["event_type"]),
        (3, "mixed-3", REJECTED, INVALID_ARGUMENT, ["event_time"]),
        (4, "mixed-0", DUPLICATE, OK, []),
        (5, "mixed-5", REJECTED, INVALID_ARGUMENT, ["tenant_id"]),
        (6, "mixed-6", ACCEPTED, OK, []),
    ]
    assert (
        response.summary.accepted_count,
        response.summary.duplicate_count,
        response.summary.rejected_count,
    ) == (3, 1, 3)
    stored_ids = {
        event_pb2.Event.FromString(m.value()).event_id
        for m in read_topic(ingest_service.settings, 3, key_prefix=f"{tenant}#".encode())
        if b"mixed" in m.value()
    }
    assert stored_ids == {"mixed-0", "mixed-1", "mixed-6"}


def test_a_single_event_is_acknowledged_after_it_is_written(
    ingest_service: IngestUnderTest, ingest_channel: grpc.Channel
) -> None:
    tenant = ingest_service.tenant_id
    response = ingest_service.stub(ingest_channel).IngestEvent(
        ingest_pb2.IngestEventRequest(tenant_id=tenant, event=valid_event("single-1"))
    )
    assert (response.result.id, response.result.status) == ("single-1", ACCEPTED)
    ids = {
        event_pb2.Event.FromString(m.value()).event_id
        for m in read_topic(ingest_service.settings, 1, key_prefix=f"{tenant}#".encode())
    }
    assert "single-1" in ids


def test_a_stream_of_100k_events_all_arrives(
    ingest_service: IngestUnderTest, ingest_channel: grpc.Channel
) -> None:
    tenant = f"{ingest_service.tenant_id}-stream"
    batches, per_batch = 100, 1000
    template = valid_event("template")

    def requests() -> Iterator[ingest_pb2.StreamEventsRequest]:
        counter = itertools.count()
        for b in range(batches):
            request = ingest_pb2.StreamEventsRequest(batch_id=f"b{b}", tenant_id=tenant)
            for _ in range(per_batch):
                n = next(counter)
                event = request.events.add()
                event.CopyFrom(template)
                event.event_id = f"s-{n}"
                event.entity_id = f"user-{n % 997}"
            yield request

    responses = list(ingest_service.stub(ingest_channel).StreamEvents(requests()))
    assert [r.batch_id for r in responses] == [f"b{b}" for b in range(batches)]
    assert sum(r.summary.accepted_count for r in responses) == batches * per_batch

    arrived = read_topic(
        ingest_service.settings, batches * per_batch, key_prefix=f"{tenant}#".encode(), timeout=180
    )
    ids = {event_pb2.Event.FromString(m.value()).event_id for m in arrived}
    assert len(ids) == batches * per_batch


def test_metrics_count_outcomes_per_tenant_and_reason(
    ingest_service: IngestUnderTest, ingest_channel: grpc.Channel
) -> None:
    tenant = f"{ingest_service.tenant_id}-metrics"
    bad = valid_event("m-2")
    bad.event_type = ""
    ingest_service.stub(ingest_channel).IngestEvents(
        ingest_pb2.IngestEventsRequest(
            tenant_id=tenant, events=[valid_event("m-1"), valid_event("m-1"), bad]
        )
    )
    url = f"http://127.0.0.1:{ingest_service.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()

    def counted(outcome: str, reason: str) -> str:
        labels = f'outcome="{outcome}",reason="{reason}",tenant="{tenant}"'
        return f"eventpipe_ingest_events_total{{{labels}}} 1.0"

    assert counted("accepted", "") in text
    assert counted("duplicate", "") in text
    assert counted("rejected", "INVALID_ARGUMENT:event_type") in text
    assert "eventpipe_ingest_produce_latency_seconds_count" in text
    assert "eventpipe_ingest_producer_queue_depth" in text
