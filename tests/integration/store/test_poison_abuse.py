"""Fault-and-abuse suite of the data path (issue 11), on real processes: nothing a client or
a direct producer sends stops the store for anyone, what ingest acknowledges is stored once,
and a consumer whose loop dies anyway is restarted."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from eventpipe.common.v1 import event_pb2, results_pb2
from eventpipe.core import topic_contract
from eventpipe.core.config import CommonSettings
from eventpipe.core.server import LIVENESS_SERVICE
from eventpipe.core.storage.attributes import ATTRIBUTE_FAMILIES, encode_int
from eventpipe.core.storage.rows import event_to_row
from eventpipe.core.storage.tables import META_FAMILY, RAW_EVENTS_TABLE
from eventpipe.core.storage.times import micros, timestamp_from_micros
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from eventpipe.stack.components import GrpcService
from eventpipe.stack.probes import free_port, grpc_health
from eventpipe.store.v1 import store_pb2, store_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from store.adapters.bigtable import BigtableRowWriter

from tests.conftest import Isolation, start_or_fail
from tests.helpers.rpc import field_violations, time_range
from tests.integration.store.conftest import (
    FAST_STORE_ENV,
    consumer_status,
    contract_message,
    dead_letters,
    produce,
)
from tests.integration.store.faulty_store import FAULT_KEY

pytestmark = [pytest.mark.abuse]

MINUTE = 60_000_000
# The four Timestamps binary gRPC let through: seconds 10^13, -10^13, 253402300800 (the
# first second of year 10000), and nanos -5.
OUT_OF_RANGE = [(10**13, 0), (-(10**13), 0), (253_402_300_800, 0), (1_700_000_000, -5)]


def _now() -> int:
    return int(time.time() * 1_000_000)


def _event(
    tenant: str, event_id: str, entity: str = "user-1", event_micros: int = 0
) -> event_pb2.Event:
    event = event_pb2.Event(
        tenant_id=tenant, event_id=event_id, event_type="page_view", entity_id=entity
    )
    event.event_time.CopyFrom(timestamp_from_micros(event_micros or _now()))
    event.ingest_time.CopyFrom(timestamp_from_micros(_now()))
    return event


def _refused(method: Callable[..., Any], request: Any) -> list[str]:
    """The field violations of ``method(request)``, which must be INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as error:
        method(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    return field_violations(error.value)


def _raw_events(stub: Any, tenant: str, entity: str) -> list[event_pb2.Event]:
    response = stub.ListRawEvents(
        store_pb2.ListRawEventsRequest(tenant_id=tenant, entity_id=entity, page_size=1000),
        timeout=10,
    )
    return list(response.events)


def _stored_ids(stub: Any, tenant: str, entity: str) -> list[str]:
    return [e.event_id for e in _raw_events(stub, tenant, entity)]


@pytest.fixture
def ingest_stub(start_service: Callable[..., GrpcService]) -> Iterator[Any]:
    service = start_service("ingest")
    with grpc.insecure_channel(service.address) as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel)


# ---------------------------------------------------------------- 1. poison events


def test_the_binary_grpc_poison_events_are_refused_by_ingest_naming_the_field(
    ingest_stub: Any, isolation: Isolation
) -> None:
    for seconds, nanos in OUT_OF_RANGE:
        in_attribute = _event("", f"a{seconds}{nanos}")
        in_attribute.ClearField("ingest_time")
        in_attribute.attributes["when"].timestamp_value.CopyFrom(
            Timestamp(seconds=seconds, nanos=nanos)
        )
        request = ingest_pb2.IngestEventRequest(tenant_id=isolation.tenant_id, event=in_attribute)
        assert _refused(ingest_stub.IngestEvent, request) == ["event.attributes[when]"]
        as_event_time = _event("", f"t{seconds}{nanos}")
        as_event_time.ClearField("ingest_time")
        as_event_time.event_time.CopyFrom(Timestamp(seconds=seconds, nanos=nanos))
        request = ingest_pb2.IngestEventRequest(tenant_id=isolation.tenant_id, event=as_event_time)
        assert _refused(ingest_stub.IngestEvent, request) == ["event.event_time"]


def test_poison_messages_straight_to_kafka_are_dead_lettered_and_another_tenants_event_is_stored(
    common_settings: CommonSettings, store_stub: Any, isolation: Isolation
) -> None:
    attacker, victim = isolation.tenant_id, f"{isolation.tenant_id}-b"
    # Every poison message carries the victim's key: same partition, ahead of its event.
    key = topic_contract.message_key(victim, "user-1")

    def poisoned(
        mutate: Callable[[event_pb2.Event], None],
    ) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        event = _event(attacker, f"p-{uuid.uuid4().hex[:8]}")
        mutate(event)
        _, value, headers = contract_message(event)
        return key, value or b"", headers

    def attribute_time(seconds: int, nanos: int) -> Callable[[event_pb2.Event], None]:
        def mutate(event: event_pb2.Event) -> None:
            event.attributes["when"].timestamp_value.CopyFrom(
                Timestamp(seconds=seconds, nanos=nanos)
            )

        return mutate

    def event_time_far(event: event_pb2.Event) -> None:
        event.event_time.seconds = 10**13

    valid_attacker = _event(attacker, "p-valid")
    _, valid_value, valid_headers = contract_message(valid_attacker)
    later_ingest = [
        (k, v if k != topic_contract.HEADER_INGEST_TIME else str(int(v) + 1).encode())
        for k, v in valid_headers
    ]
    poison: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (key, b"\xff\x00 garbage, not a protobuf", []),
        *(poisoned(attribute_time(s, n)) for s, n in OUT_OF_RANGE),
        poisoned(event_time_far),
        (key, valid_value, [(topic_contract.HEADER_TENANT, b"someone-else")]),
        (key, valid_value, [(topic_contract.HEADER_SCHEMA, b"eventpipe.common.v1.Event;v=9")]),
        (key, valid_value, later_ingest),
        (key, valid_value, valid_headers),  # a valid event under someone else's key
    ]
    expected_reasons = [
        "not a serialized eventpipe.common.v1.Event",
        *["attributes[when]"] * len(OUT_OF_RANGE),
        "event_time",
        "eventpipe-tenant header does not match",
        "unsupported eventpipe-schema",
        "eventpipe-ingest-time header does not match",
        "message key",
    ]
    good = _event(victim, "good-1")
    produce(common_settings, [*poison, contract_message(good)])

    letters = dead_letters(common_settings, expected=len(poison))
    reasons = [dict(m.headers())[topic_contract.HEADER_DLQ_ERROR].decode() for m in letters]
    assert len(reasons) == len(expected_reasons), reasons
    for reason, expected in zip(reasons, expected_reasons, strict=True):
        assert expected in reason, (expected, reason)
    wait_until(
        lambda: _stored_ids(store_stub, victim, "user-1") == ["good-1"],
        timeout=60,
        what="the victim's event to be stored",
    )
    assert _stored_ids(store_stub, attacker, "user-1") == []
    status = consumer_status(store_stub)
    assert status.state == store_pb2.CONSUMER_STATE_RUNNING
    assert status.dead_lettered_count == len(poison)


# ---------------------------------------------------------------- 3. bounds everywhere


def test_bad_time_bounds_are_refused_naming_the_field_on_every_store_rpc(
    store_stub: Any, isolation: Isolation
) -> None:
    tenant = isolation.tenant_id

    def list_raw(bounds: event_pb2.TimeRange) -> list[str]:
        request = store_pb2.ListRawEventsRequest(
            tenant_id=tenant, entity_id="user-1", time_range=bounds
        )
        return _refused(store_stub.ListRawEvents, request)

    assert list_raw(time_range(end=Timestamp(seconds=-(10**13)))) == ["time_range.end_time"]
    for seconds, nanos in OUT_OF_RANGE:
        assert list_raw(time_range(start=Timestamp(seconds=seconds, nanos=nanos))) == [
            "time_range.start_time"
        ]
    assert list_raw(time_range(Timestamp(seconds=100), Timestamp(seconds=100))) == ["time_range"]

    for seconds, nanos in OUT_OF_RANGE:
        request = store_pb2.GetDimensionRecordRequest(
            tenant_id=tenant,
            dimension="users",
            key="u1",
            as_of_time=Timestamp(seconds=seconds, nanos=nanos),
        )
        assert _refused(store_stub.GetDimensionRecord, request) == ["as_of_time"]

    records = [store_pb2.DimensionRecord(key="ok", valid_from=Timestamp(seconds=1_700_000_000))]
    for seconds, nanos in OUT_OF_RANGE:
        records.append(
            store_pb2.DimensionRecord(key="bad", valid_from=Timestamp(seconds=seconds, nanos=nanos))
        )
        in_attribute = store_pb2.DimensionRecord(key="bad", valid_from=Timestamp(seconds=1))
        in_attribute.attributes["when"].timestamp_value.CopyFrom(
            Timestamp(seconds=seconds, nanos=nanos)
        )
        records.append(in_attribute)
    response = store_stub.UpsertDimensionRecords(
        store_pb2.UpsertDimensionRecordsRequest(
            tenant_id=tenant, dimension="users", records=records
        ),
        timeout=10,
    )
    statuses = [r.status for r in response.results]
    assert statuses[0] == results_pb2.ITEM_STATUS_ACCEPTED
    assert set(statuses[1:]) == {results_pb2.ITEM_STATUS_REJECTED}
    fields = [[v.field for v in r.violations] for r in response.results[1:]]
    assert fields == [
        [f"records[{i}].valid_from" if i % 2 else f"records[{i}].attributes[when]"]
        for i in range(1, len(records))
    ]


# ---------------------------------------------------------------- 4. stored, once


def test_events_ingest_acknowledged_at_the_five_minute_bound_are_all_stored(
    ingest_stub: Any, store_stub: Any, isolation: Isolation
) -> None:
    tenant = isolation.tenant_id
    accepted: list[str] = []
    refused = 0
    # event_time within a few ms of ingest's "now + 5 minutes": the store's old re-check
    # against the millisecond Kafka timestamp dead-lettered some of these.
    for i in range(150):
        event = _event("", f"edge-{i:03d}", event_micros=_now() + 5 * MINUTE + 1500 - i * 50)
        event.ClearField("ingest_time")
        request = ingest_pb2.IngestEventRequest(tenant_id=tenant, event=event)
        try:
            ingest_stub.IngestEvent(request, timeout=10)
            accepted.append(event.event_id)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field_violations(error) == ["event.event_time"]
            refused += 1
    assert accepted, "ingest accepted none: the test did not reach the bound"
    wait_until(
        lambda: sorted(_stored_ids(store_stub, tenant, "user-1")) == sorted(accepted),
        timeout=60,
        what="every acknowledged event to be stored",
    )
    assert consumer_status(store_stub).dead_lettered_count == 0


def test_a_re_sent_event_id_is_stored_once_whatever_its_event_time_or_entity(
    ingest_stub: Any, store_stub: Any, isolation: Isolation
) -> None:
    tenant = isolation.tenant_id
    first_time = _now() - 10 * MINUTE

    def ingest(event_id: str, entity: str, event_micros: int) -> None:
        event = _event("", event_id, entity, event_micros)
        event.ClearField("ingest_time")
        response = ingest_stub.IngestEvent(
            ingest_pb2.IngestEventRequest(tenant_id=tenant, event=event), timeout=10
        )
        assert response.result.status == results_pb2.ITEM_STATUS_ACCEPTED

    ingest("order-1", "user-1", first_time)
    wait_until(
        lambda: _stored_ids(store_stub, tenant, "user-1") == ["order-1"],
        timeout=60,
        what="the first copy to be stored",
    )
    ingest("order-1", "user-1", first_time - 60 * MINUTE)  # another event_time
    ingest("order-1", "user-2", first_time)  # another entity
    ingest("marker-1", "user-1", first_time - 120 * MINUTE)  # behind them in each partition
    ingest("marker-2", "user-2", first_time - 120 * MINUTE)
    wait_until(
        lambda: (
            "marker-1" in _stored_ids(store_stub, tenant, "user-1")
            and "marker-2" in _stored_ids(store_stub, tenant, "user-2")
        ),
        timeout=60,
        what="the markers to be stored",
    )
    user_1 = _raw_events(store_stub, tenant, "user-1")
    assert [(e.event_id, micros(e.event_time)) for e in user_1] == [
        ("order-1", first_time),
        ("marker-1", first_time - 120 * MINUTE),
    ]
    assert _stored_ids(store_stub, tenant, "user-2") == ["marker-2"]


# ---------------------------------------------------------------- 1. a loop that dies


class FaultyStore(GrpcService):
    """``python -m store`` with the fault of tests/integration/store/faulty_store.py."""

    def argv(self) -> list[str]:
        return [sys.executable, str(Path(__file__).with_name("faulty_store.py"))]


@pytest.fixture
def faulty_store(run_dir: Path, service_env: dict[str, str]) -> Iterator[GrpcService]:
    port = free_port()
    service = FaultyStore(
        "store",
        run_dir / "services" / f"faulty-store-{port}",
        port,
        {
            **service_env,
            **FAST_STORE_ENV,
            "EVENTPIPE_STORE_HOST": "127.0.0.1",
            "EVENTPIPE_STORE_PORT": str(port),
            "EVENTPIPE_STORE_METRICS_PORT": str(free_port()),
        },
    )
    start_or_fail(service, 90)
    yield service
    service.stop()


def test_a_store_whose_consumer_loop_dies_is_not_alive_says_why_and_a_restart_resumes(
    common_settings: CommonSettings,
    faulty_store: GrpcService,
    start_store: Callable[..., GrpcService],
    isolation: Isolation,
) -> None:
    tenant = isolation.tenant_id
    address = faulty_store.address
    assert grpc_health(address, LIVENESS_SERVICE) == "SERVING"
    produce(common_settings, [(FAULT_KEY, b"the loop dies here", [])])
    wait_until(
        lambda: grpc_health(address, LIVENESS_SERVICE) == "NOT_SERVING",
        timeout=60,
        what="liveness to turn NOT_SERVING",
    )
    wait_until(lambda: grpc_health(address) == "NOT_SERVING", timeout=30, what="readiness")
    with grpc.insecure_channel(address) as channel:
        status = consumer_status(store_pb2_grpc.StoreServiceStub(channel))
    assert status.state == store_pb2.CONSUMER_STATE_STOPPED
    assert "injected fault: the consumer loop dies" in status.last_error
    log = faulty_store.process.log_path.read_text()
    assert "not ready" in log and "consumer loop failed" in log

    # What Kubernetes does on a failed liveness probe: a new process in its place.
    good = _event(tenant, "after-restart")
    produce(common_settings, [contract_message(good)])
    faulty_store.stop()
    restarted = start_store()
    with grpc.insecure_channel(restarted.address) as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        wait_until(
            lambda: _stored_ids(stub, tenant, "user-1") == ["after-restart"],
            timeout=90,
            what="the restarted store to resume",
        )
    letters = dead_letters(common_settings, expected=1)
    assert [m.key() for m in letters] == [FAULT_KEY]  # for a sound loop, a poison message
    assert grpc_health(restarted.address, LIVENESS_SERVICE) == "SERVING"


# ---------------------------------------------------------------- 1. defensive reads


def test_raw_events_with_unreadable_cells_are_listed_without_them_and_a_broken_row_skipped(
    common_settings: CommonSettings, store_stub: Any, isolation: Isolation
) -> None:
    tenant = isolation.tenant_id
    events = [_event(tenant, f"stored-{i}", event_micros=_now() - i * MINUTE) for i in range(3)]
    for event in events:
        event.attributes["url"].string_value = "/"
    rows = [event_to_row(e) for e in events]
    # Written as no validated path would write them: a timestamp cell of year ~31,700 and an
    # event_time cell of two bytes.
    rows[0].cells[(ATTRIBUTE_FAMILIES["timestamp_value"], b"when")] = encode_int(10**18)
    rows[1].cells[(META_FAMILY, b"event_time")] = b"\x00\x01"
    writer = BigtableRowWriter(common_settings, 10.0, lambda: None)
    try:
        assert not writer.write_rows(RAW_EVENTS_TABLE, rows)
    finally:
        writer.close()

    listed = _raw_events(store_stub, tenant, "user-1")
    assert [e.event_id for e in listed] == ["stored-0", "stored-2"]
    assert set(listed[0].attributes) == {"url"}
