"""Request validation: every bad field is named."""

from __future__ import annotations

import pytest
from eventpipe.core.errors import InvalidArgument
from query.queries import DEFAULT_PAGE_SIZE, EventsQuery, MetricsQuery
from query.store import EventView


def parse_events(**overrides: object) -> EventsQuery:
    params: dict[str, object] = {
        "tenant_id": "t",
        "entity_id": "e",
        "start_micros": None,
        "end_micros": None,
        "event_types": (),
        "view": EventView.ENRICHED,
        "page_size": 0,
        "page_token": "",
    }
    params.update(overrides)
    return EventsQuery.parse(**params)  # type: ignore[arg-type]


def fields_of(error: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in error.value.violations]


def test_page_size_zero_means_the_default() -> None:
    assert parse_events().page_size == DEFAULT_PAGE_SIZE


@pytest.mark.parametrize("size", [-1, 1001])
def test_a_page_size_out_of_range_is_refused(size: int) -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_events(page_size=size)
    assert fields_of(error) == ["page_size"]


def test_the_maximum_page_size_is_accepted() -> None:
    assert parse_events(page_size=1000).page_size == 1000


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_events(
            tenant_id="",
            entity_id="a b",
            start_micros=10,
            end_micros=5,
            event_types=["Bad"],
        )
    assert fields_of(error) == ["tenant_id", "entity_id", "time_range", "event_types[0]"]


def test_times_before_1970_are_refused() -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_events(start_micros=-1)
    assert fields_of(error) == ["time_range.start_time"]


def test_event_type_order_and_repeats_do_not_change_the_query() -> None:
    assert parse_events(event_types=["b", "a", "b"]) == parse_events(event_types=["a", "b"])


def test_metrics_need_both_bounds_and_a_known_granularity() -> None:
    with pytest.raises(InvalidArgument) as error:
        MetricsQuery.parse(
            tenant_id="t",
            entity_id="e",
            start_micros=None,
            end_micros=None,
            granularity="week",
            event_types=[],
        )
    assert fields_of(error) == ["time_range.start_time", "time_range.end_time", "granularity"]


def test_metrics_over_too_many_buckets_are_refused() -> None:
    with pytest.raises(InvalidArgument) as error:
        MetricsQuery.parse(
            tenant_id="t",
            entity_id="e",
            start_micros=0,
            end_micros=20_000 * 3_600_000_000,
            granularity="hour",
            event_types=[],
        )
    assert fields_of(error) == ["time_range"]
