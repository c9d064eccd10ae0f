"""Unreadable stored cells never fail an entity (issue 11): the query service, on the real
emulator, over gRPC and REST through the real Envoy. A timestamp cell outside 0001..9999 used
to make every read of its entity answer 502 through the JSON transcoder."""

from __future__ import annotations

import grpc
import pytest
from eventpipe.core.storage.attributes import ATTRIBUTE_FAMILIES, ENRICHED_FAMILIES, encode_int
from eventpipe.core.storage.rows import PROFILE_EVENT_COUNT_QUALIFIER, PROFILE_LAST_SEEN_QUALIFIER
from eventpipe.core.storage.tables import ENRICHED_EVENTS_TABLE, ENTITY_PROFILES_TABLE, META_FAMILY
from eventpipe.query.v1 import query_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from tests.helpers.rpc import time_range
from tests.integration.query.conftest import QueryUnderTest, Rest
from tests.unit.query.rows import (
    BASE_MICROS,
    HOUR,
    enriched_event_row,
    make_event,
    profile_row,
    string,
)

pytestmark = [pytest.mark.abuse]

YEAR_31700 = encode_int(10**12 * 1_000_000)  # fits int64, is no Timestamp


def unreadable(q: QueryUnderTest, table: str, skipped: str) -> float:
    name = f'eventpipe_unreadable_cells_total{{skipped="{skipped}",table="{table}"}}'
    return q.metrics().get(name, 0.0)


def test_a_profile_with_unreadable_cells_is_served_without_them_over_grpc_and_rest(
    query_service: QueryUnderTest, rest: Rest
) -> None:
    q, tenant = query_service, query_service.new_tenant()
    row = profile_row(
        tenant,
        "user-1",
        fields={"users.plan": string("pro")},
        first_seen=BASE_MICROS,
        last_seen=BASE_MICROS + HOUR,
        update_time=BASE_MICROS + HOUR,
        event_count=3,
        type_counts={"purchase": 3},
        totals={"revenue": 30.0},
    )
    row.cells[(META_FAMILY, PROFILE_LAST_SEEN_QUALIFIER)] = YEAR_31700
    row.cells[(ENRICHED_FAMILIES["timestamp_value"], b"users.since")] = YEAR_31700
    row.cells[(META_FAMILY, PROFILE_EVENT_COUNT_QUALIFIER)] = b"\x03"
    q.loader.write(ENTITY_PROFILES_TABLE, [row])
    before = unreadable(q, ENTITY_PROFILES_TABLE, "cell")

    status, body = rest(f"/v1/tenants/{tenant}/entities/user-1")
    assert status == 200, body
    profile = body["profile"]
    assert profile["dimension_fields"] == {"users.plan": {"string_value": "pro"}}
    assert "last_seen_time" not in profile
    assert profile.get("event_count", "0") == "0"  # Envoy may print the default
    assert profile["event_type_counts"] == {"purchase": "3"}
    assert unreadable(q, ENTITY_PROFILES_TABLE, "cell") - before == 3
    grpc_profile = q.stub.GetEntity(
        query_pb2.GetEntityRequest(tenant_id=tenant, entity_id="user-1"), timeout=10
    ).profile
    assert grpc_profile.totals["revenue"] == 30.0


def test_events_with_an_unreadable_cell_are_served_without_it_and_a_broken_row_is_skipped(
    query_service: QueryUnderTest, rest: Rest
) -> None:
    q, tenant = query_service, query_service.new_tenant()
    good, bad_attribute, broken = (
        make_event(tenant, "user-1", f"evt-{i}", "click", BASE_MICROS + i * HOUR) for i in range(3)
    )
    rows = [enriched_event_row(e, {"users.plan": string("pro")}) for e in (good, bad_attribute)]
    rows[1].cells[(ATTRIBUTE_FAMILIES["timestamp_value"], b"when")] = YEAR_31700
    broken_row = enriched_event_row(broken, {})
    broken_row.cells[(META_FAMILY, b"event_time")] = b"\x00\x01"
    q.loader.write(ENRICHED_EVENTS_TABLE, [*rows, broken_row])
    rows_before = unreadable(q, ENRICHED_EVENTS_TABLE, "row")

    status, body = rest(f"/v1/tenants/{tenant}/entities/user-1/events")
    assert status == 200, body
    assert [e["event"]["event_id"] for e in body["events"]] == ["evt-1", "evt-0"]
    assert body["events"][0]["event"].get("attributes", {}) == {}
    assert unreadable(q, ENRICHED_EVENTS_TABLE, "row") - rows_before == 1


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        (None, Timestamp(seconds=-(10**13)), "time_range.end_time"),
        (Timestamp(seconds=253_402_300_800), None, "time_range.start_time"),
        (Timestamp(seconds=1_700_000_000, nanos=-5), None, "time_range.start_time"),
    ],
)
def test_query_ranges_outside_protobufs_timestamp_range_are_refused_naming_the_field(
    query_service: QueryUnderTest, start: Timestamp | None, end: Timestamp | None, field: str
) -> None:
    request = query_pb2.ListEntityEventsRequest(
        tenant_id=query_service.new_tenant(),
        entity_id="user-1",
        time_range=time_range(start, end),
    )
    with pytest.raises(grpc.RpcError) as error:
        query_service.stub.ListEntityEvents(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.value.details() or "")
