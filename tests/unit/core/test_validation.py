"""The event rules documented in event.proto."""

from __future__ import annotations

from datetime import timedelta

import pytest
from eventpipe.common.v1 import event_pb2
from eventpipe.core.schema import timestamp_from_micros
from eventpipe.core.validation import EventLimits, validate_event

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
