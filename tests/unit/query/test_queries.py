"""Request validation: every bad field is named."""

from __future__ import annotations

import pytest
from eventpipe.common.v1 import event_pb2
from eventpipe.core.errors import InvalidArgument
from eventpipe.core.validation import TimeBounds, check_time_range
from google.protobuf.timestamp_pb2 import Timestamp
from query.ports import EventView
from query.queries import DEFAULT_PAGE_SIZE, EventsQuery, MetricsQuery


def parse_events(**overrides: object) -> EventsQuery:
    params: dict[str, object] = {
        "tenant_id": "t",
        "entity_id": "e",
        "time_range": TimeBounds(),
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
            time_range=TimeBounds(10, 5, check_time_range(time_range(10, 5)).violations),
            event_types=["Bad"],
        )
    assert fields_of(error) == ["tenant_id", "entity_id", "time_range", "event_types[0]"]


def time_range(
    start_seconds: int | None, end_seconds: int | None, nanos: int = 0
) -> event_pb2.TimeRange:
    result = event_pb2.TimeRange()
    if start_seconds is not None:
        result.start_time.CopyFrom(Timestamp(seconds=start_seconds, nanos=nanos))
    if end_seconds is not None:
        result.end_time.CopyFrom(Timestamp(seconds=end_seconds, nanos=nanos))
    return result


@pytest.mark.parametrize(
    ("start", "end", "nanos", "fields"),
    [
        (None, -(10**13), 0, ["time_range.end_time"]),
        (10**13, None, 0, ["time_range.start_time"]),
        (253_402_300_800, None, 0, ["time_range.start_time"]),
        (0, 10, -5, ["time_range.start_time", "time_range.end_time"]),
        (0, 10, 1_000_000_000, ["time_range.start_time", "time_range.end_time"]),
    ],
)
def test_timestamps_outside_protobufs_range_or_with_bad_nanos_are_refused(
    start: int | None, end: int | None, nanos: int, fields: list[str]
) -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_events(time_range=check_time_range(time_range(start, end, nanos)))
    assert fields_of(error) == fields


def test_the_extreme_valid_timestamps_and_open_bounds_are_accepted() -> None:
    first, last = -62_135_596_800, 253_402_300_799
    query = parse_events(time_range=check_time_range(time_range(first, last)))
    assert (query.start_micros, query.end_micros) == (first * 10**6, last * 10**6)
    assert parse_events(time_range=check_time_range(time_range(None, None))).end_micros is None


def test_event_type_order_and_repeats_do_not_change_the_query() -> None:
    assert parse_events(event_types=["b", "a", "b"]) == parse_events(event_types=["a", "b"])


HOUR = 3_600_000_000
DAY = 24 * HOUR
# 2026-11-27T10:20:00Z: a moment inside an hour and inside a day.
NOW = 1_795_737_600_000_000 + 10 * HOUR + 20 * 60_000_000


def parse_metrics(
    start_seconds: int | None, end_seconds: int | None, granularity: str = "hour"
) -> MetricsQuery:
    return MetricsQuery.parse(
        tenant_id="t",
        entity_id="e",
        time_range=check_time_range(time_range(start_seconds, end_seconds)),
        granularity=granularity,
        event_types=[],
        now_micros=NOW,
    )


def test_metrics_without_a_time_range_cover_the_current_hour_and_the_23_before_it() -> None:
    query = parse_metrics(None, None)
    current_hour = NOW // HOUR * HOUR
    assert (query.start_micros, query.end_micros) == (current_hour - 23 * HOUR, current_hour + HOUR)


def test_daily_metrics_without_a_time_range_cover_the_current_utc_day() -> None:
    query = parse_metrics(None, None, "day")
    today = NOW // DAY * DAY
    assert (query.start_micros, query.end_micros) == (today, today + DAY)


def test_metrics_with_only_an_end_reach_24_hours_back_from_it() -> None:
    end_seconds = 1_700_000_000
    query = parse_metrics(None, end_seconds)
    assert (query.start_micros, query.end_micros) == (
        end_seconds * 10**6 - DAY,
        end_seconds * 10**6,
    )


def test_metrics_with_only_a_start_end_with_the_current_bucket() -> None:
    start = NOW - 3 * DAY
    query = parse_metrics(start // 10**6, None)
    assert (query.start_micros, query.end_micros) == (start, NOW // HOUR * HOUR + HOUR)


def test_a_start_after_the_current_bucket_without_an_end_is_refused() -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_metrics((NOW + 2 * HOUR) // 10**6, None)
    assert fields_of(error) == ["time_range.start_time"]


def test_metrics_refuse_an_unknown_granularity_and_bad_bounds_together() -> None:
    with pytest.raises(InvalidArgument) as error:
        MetricsQuery.parse(
            tenant_id="t",
            entity_id="e",
            time_range=check_time_range(time_range(10, 5)),
            granularity="week",
            event_types=[],
            now_micros=NOW,
        )
    assert fields_of(error) == ["time_range", "granularity"]


def test_metrics_over_too_many_buckets_are_refused() -> None:
    with pytest.raises(InvalidArgument) as error:
        MetricsQuery.parse(
            tenant_id="t",
            entity_id="e",
            time_range=TimeBounds(0, 20_000 * 3_600_000_000),
            granularity="hour",
            event_types=[],
        )
    assert fields_of(error) == ["time_range"]
