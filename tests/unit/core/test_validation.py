"""The event rules documented in event.proto."""

from __future__ import annotations

from datetime import timedelta

import pytest
from eventpipe.common.v1 import event_pb2
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.core.validation import (
    MAX_TIMESTAMP_SECONDS,
    MIN_TIMESTAMP_SECONDS,
    EventLimits,
    TimeBounds,
    check_time_range,
    check_timestamp,
    validate_event,
)
from google.protobuf.timestamp_pb2 import Timestamp

from tests.helpers.rpc import time_range

NOW = 1_700_000_000_000_000
LIMITS = EventLimits(max_future=timedelta(minutes=5), max_age=timedelta(days=30))


def _valid() -> event_pb2.Event:
    event = event_pb2.Event(
        tenant_id="acme", event_id="e-1", event_type="page_view", entity_id="user:1"
    )
    event.event_time.CopyFrom(timestamp_from_micros(NOW))
    event.attributes["url"].string_value = "/home"
    return event


def _fields(event: event_pb2.Event) -> list[str]:
    return [v.field for v in validate_event(event, NOW, LIMITS)]


def test_a_valid_event_has_no_violations() -> None:
    assert validate_event(_valid(), NOW, LIMITS) == []


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: setattr(e, "tenant_id", ""), "tenant_id"),
        (lambda e: setattr(e, "event_id", "has space"), "event_id"),
        (lambda e: setattr(e, "event_id", "x" * 129), "event_id"),
        (lambda e: setattr(e, "entity_id", "a#b"), "entity_id"),
        (lambda e: setattr(e, "event_type", "PageView"), "event_type"),
        (lambda e: setattr(e, "event_type", ""), "event_type"),
        (lambda e: e.ClearField("event_time"), "event_time"),
        (
            lambda e: e.event_time.CopyFrom(timestamp_from_micros(NOW + 6 * 60 * 10**6)),
            "event_time",
        ),
        (
            lambda e: e.event_time.CopyFrom(timestamp_from_micros(NOW - 31 * 86400 * 10**6)),
            "event_time",
        ),
        (
            lambda e: e.attributes["1bad"].CopyFrom(event_pb2.AttributeValue(int_value=1)),
            "attributes[1bad]",
        ),
        (
            lambda e: e.attributes["big"].CopyFrom(
                event_pb2.AttributeValue(string_value="x" * 4097)
            ),
            "attributes[big]",
        ),
        (
            lambda e: e.attributes["nan"].CopyFrom(
                event_pb2.AttributeValue(double_value=float("nan"))
            ),
            "attributes[nan]",
        ),
        (lambda e: e.attributes["empty"].CopyFrom(event_pb2.AttributeValue()), "attributes[empty]"),
    ],
)
def test_each_broken_rule_names_its_field(mutate, field) -> None:  # type: ignore[no-untyped-def]
    event = _valid()
    mutate(event)
    assert field in _fields(event)


def test_too_many_attributes_are_refused() -> None:
    event = _valid()
    for i in range(65):
        event.attributes[f"a{i}"].int_value = i
    assert "attributes" in _fields(event)


def test_an_oversized_event_is_refused() -> None:
    event = _valid()
    for i in range(10):
        event.attributes[f"s{i}"].string_value = "x" * 4000
    assert "event" in _fields(event)


def test_the_time_bounds_are_configurable() -> None:
    event = _valid()
    event.event_time.CopyFrom(timestamp_from_micros(NOW - 40 * 86400 * 10**6))
    assert validate_event(event, NOW, EventLimits(max_age=timedelta(days=60))) == []


# The four out-of-range Timestamps of issue 11: seconds 10^13, -10^13, 253402300800, nanos -5.
OUT_OF_RANGE = [(10**13, 0), (-(10**13), 0), (253_402_300_800, 0), (NOW // 10**6, -5)]


@pytest.mark.parametrize(("seconds", "nanos"), OUT_OF_RANGE)
def test_an_attribute_timestamp_outside_protobufs_range_names_the_attribute(
    seconds: int, nanos: int
) -> None:
    event = _valid()
    event.attributes["when"].timestamp_value.seconds = seconds
    event.attributes["when"].timestamp_value.nanos = nanos
    violations = validate_event(event, NOW, LIMITS)
    assert [v.field for v in violations] == ["attributes[when]"]
    assert "0001-01-01" in violations[0].description or "nanos" in violations[0].description


@pytest.mark.parametrize(("seconds", "nanos"), OUT_OF_RANGE)
def test_an_event_time_outside_protobufs_range_is_refused_before_any_arithmetic(
    seconds: int, nanos: int
) -> None:
    event = _valid()
    event.event_time.seconds = seconds
    event.event_time.nanos = nanos
    # A huge "now" would let 10^13 through the relative bounds: the range rule comes first.
    assert [v.field for v in validate_event(event, seconds * 10**6, LIMITS)] == ["event_time"]


def test_the_extreme_valid_timestamps_pass_the_range_rule() -> None:
    for seconds, nanos in ((MIN_TIMESTAMP_SECONDS, 0), (MAX_TIMESTAMP_SECONDS, 999_999_999)):
        assert check_timestamp("t", Timestamp(seconds=seconds, nanos=nanos)) == []
    assert check_timestamp("t", Timestamp(seconds=MAX_TIMESTAMP_SECONDS + 1)) != []
    assert check_timestamp("t", Timestamp(seconds=MIN_TIMESTAMP_SECONDS - 1)) != []
    assert check_timestamp("t", Timestamp(nanos=1_000_000_000)) != []


def test_the_time_range_rule_allows_open_bounds_unless_required() -> None:
    assert check_time_range(time_range(None, None)) == TimeBounds(None, None, ())
    required = check_time_range(time_range(None, None), start_required=True, end_required=True)
    assert [v.field for v in required.violations] == [
        "time_range.start_time",
        "time_range.end_time",
    ]


def test_the_time_range_rule_wants_start_before_end_and_valid_bounds() -> None:
    bounds = check_time_range(time_range(Timestamp(seconds=10), Timestamp(seconds=10)))
    assert [v.field for v in bounds.violations] == ["time_range"]
    bad_end = check_time_range(time_range(None, Timestamp(seconds=-(10**13))), "range")
    assert [v.field for v in bad_end.violations] == ["range.end_time"]
    good = check_time_range(time_range(Timestamp(seconds=1), Timestamp(seconds=2, nanos=5000)))
    assert good == TimeBounds(1_000_000, 2_000_005, ())


DAY = 86_400_000_000


def test_a_backfill_reaches_back_to_the_horizon_and_no_further() -> None:
    limits = EventLimits(max_age=timedelta(days=30), backfill_horizon=timedelta(days=365))
    old = _valid()
    old.event_time.CopyFrom(timestamp_from_micros(NOW - 300 * DAY))
    assert [v.field for v in validate_event(old, NOW, limits)] == ["event_time"]
    assert validate_event(old, NOW, limits, backfill=True) == []
    older = _valid()
    older.event_time.CopyFrom(timestamp_from_micros(NOW - 366 * DAY))
    (violation,) = validate_event(older, NOW, limits, backfill=True)
    assert violation.field == "event_time"
    assert violation.description == "is older than the backfill horizon of 365 days"


def test_a_backfill_horizon_narrower_than_the_live_window_never_narrows_it() -> None:
    limits = EventLimits(max_age=timedelta(days=30), backfill_horizon=timedelta(days=7))
    event = _valid()
    event.event_time.CopyFrom(timestamp_from_micros(NOW - 20 * DAY))
    assert validate_event(event, NOW, limits, backfill=True) == []


def test_a_backfill_keeps_the_future_bound() -> None:
    limits = EventLimits(backfill_horizon=timedelta(days=365))
    event = _valid()
    event.event_time.CopyFrom(timestamp_from_micros(NOW + DAY))
    assert [v.field for v in validate_event(event, NOW, limits, backfill=True)] == ["event_time"]
