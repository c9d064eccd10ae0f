"""The query service process on the real emulator and Kafka, over gRPC and REST through Envoy."""

from __future__ import annotations

import base64
import time

import grpc
import pytest
from eventpipe.core.storage import granularity, keys, rows, tables, times
from eventpipe.core.waiting import wait_until
from eventpipe.query.v1 import query_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from tests.helpers.rpc import field_violations
from tests.integration.query.conftest import QueryUnderTest, Rest
from tests.unit.query.rows import (
    BASE_MICROS,
    HOUR,
    enriched_event_row,
    make_event,
    metric_row,
    number,
    profile_row,
    string,
)

TYPES = ("page_view", "purchase", "click")
INVALIDATION_BOUND_SECONDS = 2.0
"""The stated bound (docs/query.md): an entity change produced to Kafka stops the cached
answers for that entity from being served within this time."""


def iso(value_micros: int) -> str:
    return times.timestamp_from_micros(value_micros).ToJsonString()


def seed_profile(q: QueryUnderTest, tenant: str, entity: str, plan: str, count: int) -> None:
    q.loader.write(
        tables.ENTITY_PROFILES_TABLE,
        [
            profile_row(
                tenant,
                entity,
                fields={"users.plan": string(plan), "users.score": number(2.5)},
                first_seen=BASE_MICROS,
                last_seen=BASE_MICROS + HOUR,
                update_time=BASE_MICROS + 2 * HOUR + count,
                event_count=count,
                type_counts={"purchase": count},
                totals={"revenue": 10.0 * count},
            )
        ],
    )


def seed_events(q: QueryUnderTest, tenant: str, entity: str, count: int) -> list[str]:
    """Enriched and raw rows of ``count`` events a minute apart; ids newest first."""
    events = [
        make_event(tenant, entity, f"evt-{i:04d}", TYPES[i % 3], BASE_MICROS + i * 60_000_000)
        for i in range(count)
    ]
    q.loader.write(
        tables.ENRICHED_EVENTS_TABLE,
        [
            enriched_event_row(e, {"users.plan": string("pro")}, unmatched=("products",))
            for e in events
        ],
    )
    q.loader.write(tables.RAW_EVENTS_TABLE, [rows.event_to_row(e) for e in events])
    return [e.event_id for e in reversed(events)]


def grpc_pages(q: QueryUnderTest, request: query_pb2.ListEntityEventsRequest) -> list[str]:
    ids: list[str] = []
    while True:
        page = q.stub.ListEntityEvents(request, timeout=10)
        ids += [e.event.event_id for e in page.events]
        if not page.next_page_token:
            return ids
        request.page_token = page.next_page_token


def rest_pages(rest: Rest, path: str, params: list[tuple[str, str]]) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        status, body = rest(path, params + ([("page_token", token)] if token else []))
        assert status == 200, body
        ids += [e["event"]["event_id"] for e in body.get("events", [])]
        token = body.get("next_page_token", "")
        if not token:
            return ids


# ---------------------------------------------------------------- GetEntity


def test_get_entity_returns_the_profile_over_grpc_and_rest(
    query_service: QueryUnderTest, rest: Rest
) -> None:
    q, tenant = query_service, query_service.new_tenant()
    seed_profile(q, tenant, "user-1", "pro", 3)

    profile = q.stub.GetEntity(
        query_pb2.GetEntityRequest(tenant_id=tenant, entity_id="user-1"), timeout=10
    ).profile
    assert profile.dimension_fields["users.plan"].string_value == "pro"
    assert profile.event_count == 3
    assert dict(profile.totals) == {"revenue": 30.0}
    assert times.micros(profile.last_seen_time) == BASE_MICROS + HOUR

    status, body = rest(f"/v1/tenants/{tenant}/entities/user-1")
    assert status == 200, body
    assert body["profile"]["dimension_fields"]["users.plan"] == {"string_value": "pro"}
    assert body["profile"]["event_count"] == "3"
    assert body["profile"]["event_type_counts"] == {"purchase": "3"}
    assert body["profile"]["first_seen_time"] == iso(BASE_MICROS)


def test_an_unknown_entity_is_not_found_over_grpc_and_404_over_rest(
    query_service: QueryUnderTest,
    rest: Rest,
) -> None:
    q, tenant = query_service, query_service.new_tenant()
    with pytest.raises(grpc.RpcError) as error:
        q.stub.GetEntity(query_pb2.GetEntityRequest(tenant_id=tenant, entity_id="nobody"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    status, body = rest(f"/v1/tenants/{tenant}/entities/nobody")
    assert status == 404, body


def test_a_malformed_id_is_invalid_argument_with_the_field_named(
    query_service: QueryUnderTest,
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        query_service.stub.GetEntity(query_pb2.GetEntityRequest(tenant_id="a#b", entity_id="x"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error.value) == ["tenant_id"]


# ---------------------------------------------------------------- ListEntityEvents


def test_paging_returns_every_event_exactly_once_over_grpc_and_rest(
    query_service: QueryUnderTest,
    rest: Rest,
) -> None:
    q, tenant = query_service, query_service.new_tenant()
    expected = seed_events(q, tenant, "user-1", 35)
    seed_events(q, tenant, "user-2", 5)  # a neighbour whose rows must not leak in

    request = query_pb2.ListEntityEventsRequest(tenant_id=tenant, entity_id="user-1", page_size=10)
    assert grpc_pages(q, request) == expected
    path = f"/v1/tenants/{tenant}/entities/user-1/events"
    assert rest_pages(rest, path, [("page_size", "10")]) == expected
    # Stable: a second walk, now answered from the cache, returns the same sequence.
    request.page_token = ""
    assert grpc_pages(q, request) == expected


def test_filters_by_time_range_and_event_types_over_grpc_and_rest(
    query_service: QueryUnderTest,
    rest: Rest,
) -> None:
    q, tenant = query_service, query_service.new_tenant()
    seed_events(q, tenant, "user-1", 30)
    start, end = BASE_MICROS + 5 * 60_000_000, BASE_MICROS + 20 * 60_000_000
    expected = [f"evt-{i:04d}" for i in range(19, 4, -1) if TYPES[i % 3] in ("purchase", "click")]
    request = query_pb2.ListEntityEventsRequest(
        tenant_id=tenant, entity_id="user-1", page_size=3, event_types=["purchase", "click"]
    )
    request.time_range.start_time.CopyFrom(times.timestamp_from_micros(start))
    request.time_range.end_time.CopyFrom(times.timestamp_from_micros(end))
    assert grpc_pages(q, request) == expected

    params = [
        ("page_size", "3"),
        ("event_types", "purchase"),
        ("event_types", "click"),
        ("time_range.start_time", iso(start)),
        ("time_range.end_time", iso(end)),
    ]
    assert rest_pages(rest, f"/v1/tenants/{tenant}/entities/user-1/events", params) == expected


def test_the_raw_view_shows_stored_events_not_yet_enriched(
    query_service: QueryUnderTest, rest: Rest
) -> None:
    q, tenant = query_service, query_service.new_tenant()
    seed_events(q, tenant, "user-1", 3)
    fresh = make_event(tenant, "user-1", "just-stored", "click", BASE_MICROS + HOUR)
    q.loader.write(tables.RAW_EVENTS_TABLE, [rows.event_to_row(fresh)])

    enriched = q.stub.ListEntityEvents(
        query_pb2.ListEntityEventsRequest(tenant_id=tenant, entity_id="user-1")
    )
    assert [e.event.event_id for e in enriched.events] == ["evt-0002", "evt-0001", "evt-0000"]
    assert all(e.enriched and e.spec_version == 1 for e in enriched.events)
    assert list(enriched.events[0].unmatched_joins) == ["products"]

    status, body = rest(
        f"/v1/tenants/{tenant}/entities/user-1/events", [("view", "EVENT_VIEW_RAW")]
    )
    assert status == 200, body
    assert [e["event"]["event_id"] for e in body["events"]][:2] == ["just-stored", "evt-0002"]
    assert body["events"][0]["enriched"] is False


def test_a_forged_or_altered_page_token_is_invalid_argument(
    query_service: QueryUnderTest, rest: Rest
) -> None:
    q, tenant = query_service, query_service.new_tenant()
    seed_events(q, tenant, "user-1", 6)
    request = query_pb2.ListEntityEventsRequest(tenant_id=tenant, entity_id="user-1", page_size=2)
    token = q.stub.ListEntityEvents(request).next_page_token
    raw = base64.urlsafe_b64decode(token + "==")
    forged_cursor = raw[:17] + keys.entity_prefix(tenant, "user-1")[:0] + b"0#evt-0000"
    bad_tokens = {
        "altered": token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"),
        "forged": base64.urlsafe_b64encode(forged_cursor).rstrip(b"=").decode(),
        "garbage": "not-a-token",
    }
    path = f"/v1/tenants/{tenant}/entities/user-1/events"
    for name, bad in bad_tokens.items():
        request.page_token = bad
        with pytest.raises(grpc.RpcError) as error:
            q.stub.ListEntityEvents(request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert field_violations(error.value) == ["page_token"], name
        status, body = rest(path, [("page_size", "2"), ("page_token", bad)])
        assert status == 400, (name, body)

    # A genuine token reused with other parameters is refused too.
    request = query_pb2.ListEntityEventsRequest(
        tenant_id=tenant, entity_id="user-1", page_size=2, page_token=token, event_types=["click"]
    )
    with pytest.raises(grpc.RpcError) as error:
        q.stub.ListEntityEvents(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_page_size_above_the_maximum_is_invalid_argument(query_service: QueryUnderTest) -> None:
    request = query_pb2.ListEntityEventsRequest(tenant_id="t", entity_id="e", page_size=1001)
    with pytest.raises(grpc.RpcError) as error:
        query_service.stub.ListEntityEvents(request)
    assert field_violations(error.value) == ["page_size"]


# ---------------------------------------------------------------- isolation


def test_a_tenant_cannot_read_another_tenants_rows(
    query_service: QueryUnderTest, rest: Rest
) -> None:
    q, owner, intruder = query_service, query_service.new_tenant(), query_service.new_tenant()
    seed_profile(q, owner, "user-1", "pro", 1)
    seed_events(q, owner, "user-1", 4)
    token = q.stub.ListEntityEvents(
        query_pb2.ListEntityEventsRequest(tenant_id=owner, entity_id="user-1", page_size=2)
    ).next_page_token

    with pytest.raises(grpc.RpcError) as error:
        q.stub.GetEntity(query_pb2.GetEntityRequest(tenant_id=intruder, entity_id="user-1"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    for view in (query_pb2.EVENT_VIEW_ENRICHED, query_pb2.EVENT_VIEW_RAW):
        page = q.stub.ListEntityEvents(
            query_pb2.ListEntityEventsRequest(tenant_id=intruder, entity_id="user-1", view=view)
        )
        assert not page.events
    # The owner's page token does not open the owner's rows to another tenant.
    with pytest.raises(grpc.RpcError) as error:
        q.stub.ListEntityEvents(
            query_pb2.ListEntityEventsRequest(
                tenant_id=intruder, entity_id="user-1", page_size=2, page_token=token
            )
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status, body = rest(f"/v1/tenants/{intruder}/entities/user-1/events")
    assert status == 200 and not body.get("events"), body
    status, _ = rest(
        f"/v1/tenants/{intruder}/entities/user-1/metrics",
        [
            ("time_range.start_time", iso(BASE_MICROS)),
            ("time_range.end_time", iso(BASE_MICROS + HOUR)),
        ],
    )
    assert status == 200


# ---------------------------------------------------------------- GetEntityMetrics


def test_get_entity_metrics_returns_buckets_over_grpc_and_rest(
    query_service: QueryUnderTest,
    rest: Rest,
) -> None:
    q, tenant = query_service, query_service.new_tenant()
    q.loader.write(
        tables.ENTITY_METRICS_TABLE,
        [
            metric_row(
                tenant,
                "user-1",
                granularity.Granularity.HOUR,
                BASE_MICROS + h * HOUR,
                type_counts={"purchase": h + 1, "page_view": 2},
                values={"revenue": (h + 1, 10.0 * (h + 1), 5.0, 15.0)},
            )
            for h in range(4)
        ]
        + [
            metric_row(
                tenant,
                "user-1",
                granularity.Granularity.DAY,
                BASE_MICROS,
                type_counts={"purchase": 10, "page_view": 8},
                values={"revenue": (10, 100.0, 5.0, 15.0)},
            )
        ],
    )
    request = query_pb2.GetEntityMetricsRequest(
        tenant_id=tenant, entity_id="user-1", event_types=["purchase"]
    )
    request.time_range.start_time.CopyFrom(times.timestamp_from_micros(BASE_MICROS + HOUR))
    request.time_range.end_time.CopyFrom(times.timestamp_from_micros(BASE_MICROS + 3 * HOUR))
    buckets = q.stub.GetEntityMetrics(request).buckets
    assert [times.micros(b.start_time) for b in buckets] == [
        BASE_MICROS + HOUR,
        BASE_MICROS + 2 * HOUR,
    ]
    assert [dict(b.event_type_counts) for b in buckets] == [{"purchase": 2}, {"purchase": 3}]
    assert (buckets[0].metrics[0].field, buckets[0].metrics[0].sum) == ("revenue", 20.0)

    status, body = rest(
        f"/v1/tenants/{tenant}/entities/user-1/metrics",
        [
            ("granularity", "GRANULARITY_DAY"),
            ("time_range.start_time", iso(BASE_MICROS)),
            ("time_range.end_time", iso(BASE_MICROS + 24 * HOUR)),
        ],
    )
    assert status == 200, body
    assert len(body["buckets"]) == 1
    assert body["buckets"][0]["event_type_counts"] == {"purchase": "10", "page_view": "8"}
    assert body["buckets"][0]["metrics"][0]["max"] == 15.0


def _current_hour() -> int:
    return time.time_ns() // 1000 // HOUR * HOUR


def _last_24_hours(current_hour: int) -> list[int]:
    return [current_hour - h * HOUR for h in range(23, -1, -1)]


def test_metrics_without_a_time_range_are_the_last_24_hours_over_grpc_and_rest(
    query_service: QueryUnderTest,
    rest: Rest,
) -> None:
    q, tenant = query_service, query_service.new_tenant()
    first = _current_hour()
    q.loader.write(
        tables.ENTITY_METRICS_TABLE,
        [
            metric_row(
                tenant,
                "user-1",
                granularity.Granularity.HOUR,
                first + h * HOUR,
                type_counts={"purchase": 1},
                values={},
            )
            # A day and more back, and the next hour (a clock ahead of ours, or the hour
            # turning during the test).
            for h in range(-26, 2)
        ],
    )
    request = query_pb2.GetEntityMetricsRequest(tenant_id=tenant, entity_id="user-1")
    grpc_starts = [times.micros(b.start_time) for b in q.stub.GetEntityMetrics(request).buckets]
    status, body = rest(f"/v1/tenants/{tenant}/entities/user-1/metrics")
    last = _current_hour()
    assert status == 200, body
    rest_starts = []
    for bucket in body["buckets"]:
        start = Timestamp()
        start.FromJsonString(bucket["start_time"])
        rest_starts.append(times.micros(start))
    # The hour may turn between the two calls: each answer is one of the two windows.
    windows = [_last_24_hours(first), _last_24_hours(last)]
    assert grpc_starts in windows, grpc_starts
    assert rest_starts in windows, rest_starts


# ---------------------------------------------------------------- cache invalidation


def test_a_cached_profile_is_refreshed_within_the_bound_after_an_entity_change(
    query_service: QueryUnderTest,
    rest: Rest,
) -> None:
    q, tenant = query_service, query_service.new_tenant()
    request = query_pb2.GetEntityRequest(tenant_id=tenant, entity_id="user-1")
    seed_profile(q, tenant, "user-1", "free", 1)
    assert q.stub.GetEntity(request).profile.dimension_fields["users.plan"].string_value == "free"

    # Re-enrichment rewrites the profile; until it is announced the cache still answers.
    seed_profile(q, tenant, "user-1", "pro", 2)
    assert q.stub.GetEntity(request).profile.event_count == 1
    status, body = rest(f"/v1/tenants/{tenant}/entities/user-1")
    assert (status, body["profile"]["event_count"]) == (200, "1")
    invalidations = q.metrics().get("eventpipe_query_cache_invalidations_total", 0.0)

    q.announce_change(tenant, "user-1")
    wait_until(
        lambda: q.stub.GetEntity(request).profile.event_count == 2,
        timeout=INVALIDATION_BOUND_SECONDS,
        interval=0.02,
        max_interval=0.05,
        what="the new profile to be served after the entity change",
    )
    profile = q.stub.GetEntity(request).profile
    assert profile.dimension_fields["users.plan"].string_value == "pro"
    assert q.metrics()["eventpipe_query_cache_invalidations_total"] > invalidations


def test_an_entity_change_also_refreshes_cached_event_pages(query_service: QueryUnderTest) -> None:
    q, tenant = query_service, query_service.new_tenant()
    seed_events(q, tenant, "user-1", 3)
    request = query_pb2.ListEntityEventsRequest(tenant_id=tenant, entity_id="user-1")
    assert len(q.stub.ListEntityEvents(request).events) == 3
    newer = make_event(tenant, "user-1", "newer", "click", BASE_MICROS + HOUR)
    q.loader.write(tables.ENRICHED_EVENTS_TABLE, [enriched_event_row(newer, {})])
    assert len(q.stub.ListEntityEvents(request).events) == 3  # cached
    q.announce_change(tenant, "user-1")
    wait_until(
        lambda: len(q.stub.ListEntityEvents(request).events) == 4,
        timeout=INVALIDATION_BOUND_SECONDS,
        interval=0.02,
        max_interval=0.05,
        what="the new page after the entity change",
    )
