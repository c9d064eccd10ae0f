"""The direct path: examples/direct_producer.py writes contract-conforming messages to Kafka,
and lands an entity on the same partition ingest does."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import grpc
from eventpipe.common.v1 import event_pb2
from eventpipe.core import topic_contract
from eventpipe.core.validation import EventLimits, validate_event
from eventpipe.ingest.v1 import ingest_pb2

from tests.integration.ingest.conftest import IngestUnderTest, read_topic
from tests.integration.ingest.events import now_micros, valid_event

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "direct_producer.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("direct_producer", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_producer_writes_decodable_contract_messages_on_ingests_partitions(
    ingest_service: IngestUnderTest, ingest_channel: grpc.Channel
) -> None:
    example = _example()
    tenant = f"{ingest_service.tenant_id}-direct"
    settings = ingest_service.settings
    now = now_micros()
    events = [example.make_event(tenant, n, now) for n in range(10)]
    confirmed = example.produce_events(
        settings.kafka_bootstrap_servers, settings.raw_topic, events, traceparent="00-aa-bb-01"
    )
    assert len(confirmed) == 10

    # The same entities through ingest: each must land where the direct producer put it.
    ingest_service.stub(ingest_channel).IngestEvents(
        ingest_pb2.IngestEventsRequest(
            tenant_id=tenant,
            events=[valid_event(f"via-ingest-{n}", entity_id=f"user-{n}") for n in range(5)],
        )
    )
    messages = read_topic(settings, 15, key_prefix=f"{tenant}#".encode())
    partition_of: dict[tuple[bytes, bool], set[int]] = {}
    for message in messages:
        event = event_pb2.Event.FromString(message.value())
        direct = event.event_id.startswith("direct-")
        partition_of.setdefault((message.key(), direct), set()).add(message.partition())
        if not direct:
            continue
        assert validate_event(event, now_micros(), EventLimits()) == []
        assert message.key() == topic_contract.message_key(tenant, event.entity_id)
        headers = dict(message.headers() or [])
        assert headers[topic_contract.HEADER_TENANT] == tenant.encode()
        assert headers[topic_contract.HEADER_SCHEMA] == b"eventpipe.common.v1.Event;v=1"
        assert int(headers[topic_contract.HEADER_INGEST_TIME]) == now
        assert headers[topic_contract.HEADER_TRACEPARENT] == b"00-aa-bb-01"
    for n in range(5):
        key = topic_contract.message_key(tenant, f"user-{n}")
        assert partition_of[(key, True)] == partition_of[(key, False)]
