"""StoreService over real gRPC against the real emulator: dimensions and raw-event listing."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from eventpipe.common.v1 import event_pb2, results_pb2
from eventpipe.core.config import CommonSettings
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.core.waiting import wait_until
from eventpipe.store.v1 import store_pb2
from google.rpc import code_pb2

from tests.conftest import Isolation
from tests.helpers.rpc import field_violations
from tests.integration.store.conftest import consumer_status, make_event, produce_events

DAY = 86_400_000_000
T0 = 1_700_000_000_000_000


def _record(key: str, valid_from: int, **attributes: Any) -> store_pb2.DimensionRecord:
    record = store_pb2.DimensionRecord(key=key)
    record.valid_from.CopyFrom(timestamp_from_micros(valid_from))
    for name, value in attributes.items():
        if isinstance(value, bool):
            record.attributes[name].bool_value = value
        elif isinstance(value, int):
            record.attributes[name].int_value = value
        elif isinstance(value, float):
            record.attributes[name].double_value = value
        else:
            record.attributes[name].string_value = value
    return record


def _get(stub: Any, tenant: str, key: str, as_of: int | None = None) -> store_pb2.DimensionRecord:
    request = store_pb2.GetDimensionRecordRequest(tenant_id=tenant, dimension="users", key=key)
    if as_of is not None:
        request.as_of_time.CopyFrom(timestamp_from_micros(as_of))
    return stub.GetDimensionRecord(request, timeout=10).record


def test_dimension_versions_come_back_as_of_different_times(
    store_stub: Any, isolation: Isolation
) -> None:
    tenant = isolation.tenant_id
    response = store_stub.UpsertDimensionRecords(
        store_pb2.UpsertDimensionRecordsRequest(
            tenant_id=tenant,
            dimension="users",
            records=[
                _record("u1", T0, tier="bronze", score=1),
                _record("u1", T0 + 10 * DAY, tier="silver", score=2, vip=False),
                _record("u1", T0 + 20 * DAY, tier="gold", score=3.5),
                _record("u2", T0 + 5 * DAY, tier="bronze"),
            ],
        ),
        timeout=10,
    )
    assert response.summary.accepted_count == 4

    assert _get(store_stub, tenant, "u1", T0 + 5 * DAY).attributes["tier"].string_value == "bronze"
    silver = _get(store_stub, tenant, "u1", T0 + 10 * DAY)  # valid_from is inclusive
    assert silver.attributes["tier"].string_value == "silver"
    assert silver.attributes["vip"].bool_value is False
    assert silver.valid_from.seconds * 1_000_000 == T0 + 10 * DAY
    latest = _get(store_stub, tenant, "u1")
    assert latest.attributes["score"].double_value == 3.5
    assert set(latest.attributes) == {"tier", "score"}
    with pytest.raises(grpc.RpcError) as before_first:
        _get(store_stub, tenant, "u1", T0 - 1)
    assert before_first.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as other_key:
        _get(store_stub, tenant, "u3")
    assert other_key.value.code() == grpc.StatusCode.NOT_FOUND

    # Re-upserting a version replaces it whole: the dropped attribute does not linger.
    store_stub.UpsertDimensionRecords(
        store_pb2.UpsertDimensionRecordsRequest(
            tenant_id=tenant, dimension="users", records=[_record("u1", T0 + 10 * DAY, tier="x")]
        ),
        timeout=10,
    )
    replaced = _get(store_stub, tenant, "u1", T0 + 15 * DAY)
    assert dict(replaced.attributes) == {"tier": event_pb2.AttributeValue(string_value="x")}


def test_invalid_dimension_records_get_field_level_errors_and_valid_ones_are_written(
    store_stub: Any, isolation: Isolation
) -> None:
    bad_key = _record("has space", T0, tier="a")
    no_time = store_pb2.DimensionRecord(key="u9")
    bad_attribute = _record("u8", T0, tier="a")
    bad_attribute.attributes["9lives"].string_value = "x"
    bad_attribute.attributes["big"].string_value = "x" * 5000
    response = store_stub.UpsertDimensionRecords(
        store_pb2.UpsertDimensionRecordsRequest(
            tenant_id=isolation.tenant_id,
            dimension="users",
            records=[
                _record("u1", T0, tier="a"),
                bad_key,
                no_time,
                bad_attribute,
                _record("u1", T0, tier="b"),
            ],
        ),
        timeout=10,
    )
    statuses = [r.status for r in response.results]
    assert statuses == [
        results_pb2.ITEM_STATUS_ACCEPTED,
        results_pb2.ITEM_STATUS_REJECTED,
        results_pb2.ITEM_STATUS_REJECTED,
        results_pb2.ITEM_STATUS_REJECTED,
        results_pb2.ITEM_STATUS_DUPLICATE,
    ]
    fields = {r.index: {v.field for v in r.violations} for r in response.results}
    assert fields[1] == {"records[1].key"}
    assert fields[2] == {"records[2].valid_from"}
    assert fields[3] == {"records[3].attributes[9lives]", "records[3].attributes[big]"}
    assert [r.code for r in response.results] == [
        code_pb2.OK,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.OK,
    ]
    assert response.results[2].message == "records[2].valid_from: is required"
    assert (response.summary.accepted_count, response.summary.rejected_count) == (1, 3)
    assert _get(store_stub, isolation.tenant_id, "u1").attributes["tier"].string_value == "a"


def test_a_bad_dimension_name_refuses_the_whole_request_with_a_field_violation(
    store_stub: Any, isolation: Isolation
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        store_stub.UpsertDimensionRecords(
            store_pb2.UpsertDimensionRecordsRequest(
                tenant_id=isolation.tenant_id, dimension="Users!", records=[_record("u1", T0)]
            ),
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused.value) == ["dimension"]


def test_raw_events_of_one_entity_page_newest_first_within_the_time_range(
    common_settings: CommonSettings, store_stub: Any, isolation: Isolation
) -> None:
    events = [make_event(isolation.tenant_id, i, entity_count=2) for i in range(60)]
    produce_events(common_settings, events)
    wait_until(
        lambda: consumer_status(store_stub).rows_written == 60, timeout=60, what="the events"
    )
    mine = [e for e in events if e.entity_id == "user-0"]  # event_time descends with index
    time_range = event_pb2.TimeRange()
    time_range.start_time.CopyFrom(mine[-5].event_time)  # inclusive
    time_range.end_time.CopyFrom(mine[2].event_time)  # exclusive
    expected = [e.event_id for e in mine[3:-4]]

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = store_stub.ListRawEvents(
            store_pb2.ListRawEventsRequest(
                tenant_id=isolation.tenant_id,
                entity_id="user-0",
                time_range=time_range,
                page_size=7,
                page_token=token,
            ),
            timeout=10,
        )
        seen += [e.event_id for e in page.events]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == expected
    assert pages == -(-len(expected) // 7)
    first = store_stub.ListRawEvents(
        store_pb2.ListRawEventsRequest(
            tenant_id=isolation.tenant_id, entity_id="user-0", page_size=1
        ),
        timeout=10,
    )
    assert first.events[0] == mine[0]  # the stored event round-trips whole

    tampered = first.next_page_token[:-2] + ("AA" if first.next_page_token[-2:] != "AA" else "BB")
    with pytest.raises(grpc.RpcError) as refused:
        store_stub.ListRawEvents(
            store_pb2.ListRawEventsRequest(
                tenant_id=isolation.tenant_id, entity_id="user-0", page_token=tampered
            ),
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
