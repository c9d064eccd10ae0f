"""Kafka stops: ingest answers UNAVAILABLE and acknowledges nothing it did not write. Kafka
comes back on the same port: ingest recovers without a restart.

Uses a broker of its own, so stopping it disturbs no other test.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from confluent_kafka import Message
from eventpipe.common.v1 import event_pb2, results_pb2
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2
from eventpipe.stack.components import KafkaBroker
from eventpipe.stack.probes import free_port
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.conftest import Isolation, install_or_fail, start_or_fail
from tests.helpers.http import metric_values
from tests.integration.ingest.conftest import IngestUnderTest, read_topic, start_ingest
from tests.integration.ingest.events import valid_event

PRODUCE_TIMEOUT_SECONDS = 3


@pytest.fixture
def own_broker(run_dir: Path) -> Iterator[KafkaBroker]:
    install_or_fail("kafka")
    broker = KafkaBroker(run_dir, free_port(), free_port(), name="kafka-outage")
    start_or_fail(broker)
    yield broker
    broker.stop()


@pytest.fixture
def ingest_on_own_broker(run_dir: Path, own_broker: KafkaBroker) -> Iterator[IngestUnderTest]:
    running = start_ingest(
        run_dir,
        own_broker,
        Isolation.new(),
        env={
            "EVENTPIPE_INGEST_PRODUCE_TIMEOUT_SECONDS": str(PRODUCE_TIMEOUT_SECONDS),
            "EVENTPIPE_INGEST_MAX_IN_FLIGHT_EVENTS": "10",
        },
    )
    yield running
    running.service.stop()


def _batch(tenant: str, prefix: str, count: int = 10) -> ingest_pb2.IngestEventsRequest:
    return ingest_pb2.IngestEventsRequest(
        tenant_id=tenant,
        events=[valid_event(f"{prefix}-{i}", entity_id=f"user-{i}") for i in range(count)],
    )


def test_a_stopped_broker_means_unavailable_and_no_false_ack_and_a_restart_means_recovery(
    own_broker: KafkaBroker, ingest_on_own_broker: IngestUnderTest
) -> None:
    ingest = ingest_on_own_broker
    tenant = ingest.tenant_id
    acknowledged: set[str] = set()
    with ingest.channel() as channel:
        stub = ingest.stub(channel)
        before = stub.IngestEvents(_batch(tenant, "before"), timeout=30)
        acknowledged |= {
            r.id for r in before.results if r.status == results_pb2.ITEM_STATUS_ACCEPTED
        }
        assert len(acknowledged) == 10

        own_broker.stop()

        with pytest.raises(grpc.RpcError) as batch_error:
            stub.IngestEvents(_batch(tenant, "down"), timeout=60)
        assert batch_error.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as single_error:
            stub.IngestEvent(
                ingest_pb2.IngestEventRequest(tenant_id=tenant, event=valid_event("down-single")),
                timeout=60,
            )
        assert single_error.value.code() == grpc.StatusCode.UNAVAILABLE
        stream_batches = [
            ingest_pb2.StreamEventsRequest(
                batch_id="s0", tenant_id=tenant, events=_batch(tenant, "down-stream").events
            )
        ]
        with pytest.raises(grpc.RpcError) as stream_error:
            list(stub.StreamEvents(iter(stream_batches), timeout=60))
        assert stream_error.value.code() == grpc.StatusCode.UNAVAILABLE

        own_broker.start()

        recovered: list[ingest_pb2.IngestEventsResponse] = []

        def accepts_again() -> bool:
            try:
                recovered.append(
                    stub.IngestEvents(_batch(tenant, f"after{len(recovered)}"), timeout=30)
                )
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                return False
            return True

        wait_until(
            accepts_again, timeout=120, what="ingest accepting again after the broker restart"
        )
        last = recovered[-1]
        assert last.summary.accepted_count == 10
        for response in recovered:
            acknowledged |= {
                r.id for r in response.results if r.status == results_pb2.ITEM_STATUS_ACCEPTED
            }

    def ids(messages: list[Message]) -> set[str]:
        return {event_pb2.Event.FromString(m.value()).event_id for m in messages}

    # Every acknowledged event is in Kafka (events refused may be there too: at least once).
    written = ids(
        read_topic(
            ingest.settings,
            len(acknowledged),
            key_prefix=f"{tenant}#".encode(),
            until=lambda messages: acknowledged <= ids(messages),
        )
    )
    assert acknowledged <= written


def _in_flight_events(ingest: IngestUnderTest) -> float:
    return metric_values(ingest.metrics_port).get("eventpipe_ingest_in_flight_events", 0.0)


def test_a_full_in_flight_bound_answers_resource_exhausted_with_retry_advice(
    own_broker: KafkaBroker, ingest_on_own_broker: IngestUnderTest
) -> None:
    ingest = ingest_on_own_broker
    tenant = ingest.tenant_id
    own_broker.stop()  # nothing gets confirmed: the first batch holds the whole bound
    with ingest.channel() as channel, futures.ThreadPoolExecutor(1) as pool:
        stub = ingest.stub(channel)
        first = pool.submit(stub.IngestEvents, _batch(tenant, "holder"), timeout=60)
        wait_until(
            lambda: _in_flight_events(ingest) >= 10, timeout=30, what="the first batch in flight"
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.IngestEvents(_batch(tenant, "refused", 1), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
        assert status is not None
        assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        assert dict(refused.value.trailing_metadata() or ()).get("retry-after") == "1"
        with pytest.raises(grpc.RpcError) as unconfirmed:
            first.result()
        assert unconfirmed.value.code() == grpc.StatusCode.UNAVAILABLE
    # Once the first batch was answered, its share of the bound is free again.
    wait_until(lambda: _in_flight_events(ingest) == 0, timeout=30, what="the bound released")
