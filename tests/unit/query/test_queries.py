"""Request validation: every bad field is named."""

from __future__ import annotations

import pytest
from eventpipe.common.v1 import event_pb2
from eventpipe.core.errors import InvalidArgument
from eventpipe.core.validation import TimeBounds, check_time_range
from google.protobuf.timestamp_pb2 import Timestamp
from query.queries import DEFAULT_PAGE_SIZE, EventsQuery, MetricsQuery
from query.store import EventView


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


def test_metrics_need_both_bounds_and_a_known_granularity() -> None:
    with pytest.raises(InvalidArgument) as error:
        MetricsQuery.parse(
            tenant_id="t",
            entity_id="e",
            time_range=check_time_range(
                time_range(None, None), start_required=True, end_required=True
            ),
            granularity="week",
            event_types=[],
        )
    assert fields_of(error) == ["time_range.start_time", "time_range.end_time", "granularity"]


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
