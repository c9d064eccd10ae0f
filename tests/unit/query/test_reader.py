"""The three reads over an in-memory store: decoding, paging, filters, isolation, caching."""

from __future__ import annotations

import pytest
from eventpipe.core.errors import InvalidArgument, NotFound
from eventpipe.core.page_tokens import PageTokenCodec
from eventpipe.core.storage import granularity, rows, times
from eventpipe.core.validation import TimeBounds
from query.cache import AnswerCache
from query.ports import EventView
from query.queries import EntityRef, EventsQuery, MetricsQuery
from query.reader import EntityReader, estimated_size
from query.server import LIST_ENTITY_EVENTS

from tests.unit.query.fakes import InMemoryStore
from tests.unit.query.rows import (
    BASE_MICROS,
    DAY,
    HOUR,
    enriched_event_row,
    make_event,
    metric_row,
    number,
    profile_row,
    string,
)

TENANT, OTHER_TENANT = "tenant-a", "tenant-b"
TYPES = ("page_view", "purchase", "click")


def make_reader(store: InMemoryStore) -> EntityReader:
    cache = AnswerCache(
        max_entries=1000, max_bytes=10_000_000, ttl_seconds=60, sizeof=estimated_size
    )
    return EntityReader(
        store, cache, PageTokenCodec(b"unit-test-secret-0123456789", LIST_ENTITY_EVENTS)
    )


def seed_events(store: InMemoryStore, tenant: str, entity: str, count: int) -> list[str]:
    """``count`` events one minute apart; returns their ids newest first."""
    ids = []
    for i in range(count):
        event = make_event(
            tenant, entity, f"evt-{i:04d}", TYPES[i % 3], BASE_MICROS + i * 60_000_000
        )
        store.put_event(
            EventView.ENRICHED,
            enriched_event_row(event, {"users.plan": string("pro")}, unmatched=("products",)),
        )
        store.put_event(EventView.RAW, rows.event_to_row(event))
        ids.append(event.event_id)
    return ids[::-1]


def events_query(**overrides: object) -> EventsQuery:
    params: dict[str, object] = {
        "tenant_id": TENANT,
        "entity_id": "user-1",
        "event_types": (),
        "view": EventView.ENRICHED,
        "page_size": 0,
        "page_token": "",
    }
    params.update(overrides)
    params["time_range"] = TimeBounds(
        params.pop("start_micros", None), params.pop("end_micros", None)
    )  # type: ignore[arg-type]
    return EventsQuery.parse(**params)  # type: ignore[arg-type]


def all_pages(reader: EntityReader, **params: object) -> tuple[list[str], int]:
    ids: list[str] = []
    token, pages = "", 0
    while True:
        page = reader.list_entity_events(events_query(page_token=token, **params))
        pages += 1
        ids += [e.event.event_id for e in page.events]
        token = page.next_page_token
        if not token:
            return ids, pages


def test_get_entity_returns_the_decoded_profile() -> None:
    store = InMemoryStore()
    store.put_profile(
        profile_row(
            TENANT,
            "user-1",
            fields={"users.plan": string("pro"), "users.score": number(4.5)},
            first_seen=BASE_MICROS,
            last_seen=BASE_MICROS + HOUR,
            update_time=BASE_MICROS + 2 * HOUR,
            event_count=7,
            type_counts={"purchase": 2, "page_view": 5},
            totals={"revenue": 99.5},
        )
    )
    profile = make_reader(store).get_entity(EntityRef.parse(TENANT, "user-1")).profile
    assert profile.tenant_id == TENANT and profile.entity_id == "user-1"
    assert profile.dimension_fields["users.plan"].string_value == "pro"
    assert profile.dimension_fields["users.score"].double_value == 4.5
    assert times.micros(profile.first_seen_time) == BASE_MICROS
    assert times.micros(profile.last_seen_time) == BASE_MICROS + HOUR
    assert times.micros(profile.update_time) == BASE_MICROS + 2 * HOUR
    assert profile.event_count == 7
    assert dict(profile.event_type_counts) == {"purchase": 2, "page_view": 5}
    assert dict(profile.totals) == {"revenue": 99.5}


def test_an_unknown_entity_is_not_found_and_the_miss_is_cached() -> None:
    store = InMemoryStore()
    reader = make_reader(store)
    for _ in range(3):
        with pytest.raises(NotFound):
            reader.get_entity(EntityRef.parse(TENANT, "nobody"))
    assert store.reads["read_profile"] == 1


def test_paging_returns_every_event_once_newest_first() -> None:
    store = InMemoryStore()
    expected = seed_events(store, TENANT, "user-1", 25)
    ids, pages = all_pages(make_reader(store), page_size=7)
    assert ids == expected
    assert pages == 4


def test_the_last_full_page_carries_no_token() -> None:
    store = InMemoryStore()
    seed_events(store, TENANT, "user-1", 20)
    ids, pages = all_pages(make_reader(store), page_size=10)
    assert len(ids) == 20 and pages == 2


def test_paging_is_stable_while_newer_events_arrive() -> None:
    store = InMemoryStore()
    expected = seed_events(store, TENANT, "user-1", 10)
    reader = make_reader(store)
    first = reader.list_entity_events(events_query(page_size=4))
    newer = make_event(TENANT, "user-1", "late", "click", BASE_MICROS + DAY)
    store.put_event(EventView.ENRICHED, enriched_event_row(newer, {}))
    ids = [e.event.event_id for e in first.events]
    token = first.next_page_token
    while token:
        page = reader.list_entity_events(events_query(page_size=4, page_token=token))
        ids += [e.event.event_id for e in page.events]
        token = page.next_page_token
    assert ids == expected


def test_a_time_range_and_event_types_filter_the_events() -> None:
    store = InMemoryStore()
    seed_events(store, TENANT, "user-1", 30)
    start, end = BASE_MICROS + 5 * 60_000_000, BASE_MICROS + 20 * 60_000_000
    ids, _ = all_pages(
        make_reader(store),
        start_micros=start,
        end_micros=end,
        event_types=["purchase"],
        page_size=2,
    )
    expected = [f"evt-{i:04d}" for i in range(19, 4, -1) if TYPES[i % 3] == "purchase"]
    assert ids == expected


def test_the_enriched_view_carries_the_enrichment_and_raw_view_does_not() -> None:
    store = InMemoryStore()
    seed_events(store, TENANT, "user-1", 1)
    reader = make_reader(store)
    enriched = reader.list_entity_events(events_query()).events[0]
    assert enriched.enriched and enriched.spec_version == 1
    assert enriched.enriched_fields["users.plan"].string_value == "pro"
    assert list(enriched.unmatched_joins) == ["products"]
    raw = reader.list_entity_events(events_query(view=EventView.RAW)).events[0]
    assert not raw.enriched and not raw.enriched_fields
    assert raw.event == enriched.event


def test_raw_pages_are_always_read_fresh() -> None:
    store = InMemoryStore()
    seed_events(store, TENANT, "user-1", 2)
    reader = make_reader(store)
    reader.list_entity_events(events_query(view=EventView.RAW))
    newer = make_event(TENANT, "user-1", "fresh", "click", BASE_MICROS + DAY)
    store.put_event(EventView.RAW, rows.event_to_row(newer))
    page = reader.list_entity_events(events_query(view=EventView.RAW))
    assert page.events[0].event.event_id == "fresh"


def test_a_token_from_one_query_is_refused_for_another() -> None:
    store = InMemoryStore()
    seed_events(store, TENANT, "user-1", 5)
    seed_events(store, TENANT, "user-2", 5)
    reader = make_reader(store)
    token = reader.list_entity_events(events_query(page_size=2)).next_page_token
    for other in (
        {"entity_id": "user-2"},
        {"tenant_id": OTHER_TENANT},
        {"view": EventView.RAW},
        {"event_types": ["click"]},
        {"start_micros": BASE_MICROS},
    ):
        with pytest.raises(InvalidArgument):
            reader.list_entity_events(events_query(page_size=2, page_token=token, **other))
    # page_size is not bound: a client may change it between pages.
    assert reader.list_entity_events(events_query(page_size=3, page_token=token)).events


def test_a_tenant_never_sees_another_tenants_rows() -> None:
    store = InMemoryStore()
    seed_events(store, TENANT, "user-1", 5)
    store.put_profile(
        profile_row(
            TENANT,
            "user-1",
            fields={},
            first_seen=1,
            last_seen=2,
            update_time=3,
            event_count=5,
            type_counts={},
            totals={},
        )
    )
    reader = make_reader(store)
    assert not reader.list_entity_events(events_query(tenant_id=OTHER_TENANT)).events
    with pytest.raises(NotFound):
        reader.get_entity(EntityRef.parse(OTHER_TENANT, "user-1"))


def test_ids_that_could_reach_into_other_rows_are_refused() -> None:
    with pytest.raises(InvalidArgument) as error:
        EntityRef.parse("tenant-a#", "user-1")
    assert error.value.violations[0].field == "tenant_id"
    with pytest.raises(InvalidArgument):
        events_query(entity_id="user-1#0")


def test_metrics_come_back_per_bucket_in_time_order_with_the_type_filter() -> None:
    store = InMemoryStore()
    for hour in range(5):
        store.put_metric(
            metric_row(
                TENANT,
                "user-1",
                granularity.Granularity.HOUR,
                BASE_MICROS + hour * HOUR,
                type_counts={"purchase": hour, "page_view": 10} if hour else {"page_view": 1},
                values={"product.price": (hour, hour * 2.5, 1.0, 3.0)},
            )
        )
    store.put_metric(
        metric_row(
            TENANT,
            "user-1",
            granularity.Granularity.DAY,
            BASE_MICROS,
            type_counts={"purchase": 10},
            values={},
        )
    )
    reader = make_reader(store)
    hourly = reader.get_entity_metrics(
        MetricsQuery.parse(
            tenant_id=TENANT,
            entity_id="user-1",
            time_range=TimeBounds(BASE_MICROS + HOUR, BASE_MICROS + 4 * HOUR),
            granularity="hour",
            event_types=["purchase"],
        )
    )
    assert [times.micros(b.start_time) for b in hourly.buckets] == [
        BASE_MICROS + h * HOUR for h in (1, 2, 3)
    ]
    assert [dict(b.event_type_counts) for b in hourly.buckets] == [
        {"purchase": 1},
        {"purchase": 2},
        {"purchase": 3},
    ]
    metric = hourly.buckets[1].metrics[0]
    assert (metric.field, metric.count, metric.sum, metric.min, metric.max) == (
        "product.price",
        2,
        5.0,
        1.0,
        3.0,
    )
    daily = reader.get_entity_metrics(
        MetricsQuery.parse(
            tenant_id=TENANT,
            entity_id="user-1",
            time_range=TimeBounds(BASE_MICROS, BASE_MICROS + DAY),
            granularity="day",
            event_types=[],
        )
    )
    assert [dict(b.event_type_counts) for b in daily.buckets] == [{"purchase": 10}]


def test_an_entity_change_makes_the_next_read_see_the_new_profile() -> None:
    store = InMemoryStore()

    def put(count: int) -> None:
        store.put_profile(
            profile_row(
                TENANT,
                "user-1",
                fields={},
                first_seen=1,
                last_seen=2,
                update_time=3,
                event_count=count,
                type_counts={},
                totals={},
            )
        )

    put(1)
    reader = make_reader(store)
    ref = EntityRef.parse(TENANT, "user-1")
    assert reader.get_entity(ref).profile.event_count == 1
    put(2)
    assert reader.get_entity(ref).profile.event_count == 1  # cached
    reader._cache.invalidate_entity(TENANT, "user-1")
    assert reader.get_entity(ref).profile.event_count == 2
