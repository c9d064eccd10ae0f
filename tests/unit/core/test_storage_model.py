"""Row keys and cell codecs of the storage package (eventpipe.core.storage) working together."""

from __future__ import annotations

import pytest
from eventpipe.common.v1 import event_pb2
from eventpipe.core.storage.attributes import decode_attribute, encode_attribute
from eventpipe.core.storage.keys import (
    SALT_BUCKETS,
    dimension_as_of_start,
    event_key_range,
    row_key_for_dimension,
    row_key_for_event,
    salt,
)
from eventpipe.core.storage.rows import event_from_cells, event_to_row
from eventpipe.core.storage.times import cell_time, timestamp_from_micros


def _event(event_id: str, micros: int, **attributes: event_pb2.AttributeValue) -> event_pb2.Event:
    event = event_pb2.Event(
        tenant_id="acme", event_id=event_id, event_type="purchase", entity_id="user-1"
    )
    event.event_time.CopyFrom(timestamp_from_micros(micros))
    event.ingest_time.CopyFrom(timestamp_from_micros(micros + 5_000))
    for name, value in attributes.items():
        event.attributes[name].CopyFrom(value)
    return event


def test_an_entitys_event_keys_sort_newest_first() -> None:
    times = [1_700_000_000_000_000, 1_700_000_100_000_000, 1_600_000_000_000_000]
    keys = [row_key_for_event("acme", "user-1", t, f"e{i}") for i, t in enumerate(times)]
    ordered_times = [t for _, t in sorted(zip(keys, times, strict=True))]
    assert ordered_times == sorted(times, reverse=True)


def test_a_replayed_event_gets_the_same_row_key() -> None:
    first = event_to_row(_event("e1", 1_700_000_000_123_000))
    again = event_to_row(_event("e1", 1_700_000_000_123_000))
    assert first.key == again.key
    assert first.key != event_to_row(_event("e2", 1_700_000_000_123_000)).key


def test_event_keys_of_different_entities_spread_over_salt_buckets() -> None:
    salts = {salt("acme", f"user-{i}") for i in range(2000)}
    assert len(salts) > SALT_BUCKETS * 0.9


def test_the_key_range_holds_exactly_the_events_in_the_half_open_time_range() -> None:
    start, end = 1_000_000, 2_000_000
    start_key, end_key = event_key_range("acme", "user-1", start, end)
    for micros, expected in [
        (start - 1, False),
        (start, True),
        (end - 1, True),
        (end, False),
    ]:
        key = row_key_for_event("acme", "user-1", micros, "zzzz")
        assert (start_key <= key < end_key) is expected, micros
        key = row_key_for_event("acme", "user-1", micros, "0")
        assert (start_key <= key < end_key) is expected, micros


def test_an_open_key_range_stays_inside_the_entity() -> None:
    start_key, end_key = event_key_range("acme", "user-1", None, None)
    inside = row_key_for_event("acme", "user-1", 5, "e")
    other_entity = row_key_for_event("acme", "user-10", 5, "e")
    assert start_key <= inside < end_key
    assert not (start_key <= other_entity < end_key)


def test_the_dimension_version_valid_at_a_time_is_the_first_row_from_the_as_of_key() -> None:
    versions = [100, 200, 300]
    keys = sorted(row_key_for_dimension("acme", "products", "p1", v) for v in versions)
    start = dimension_as_of_start("acme", "products", "p1", 250)
    first_at_or_after = next(k for k in keys if k >= start)
    assert first_at_or_after == row_key_for_dimension("acme", "products", "p1", 200)


@pytest.mark.parametrize(
    "value",
    [
        event_pb2.AttributeValue(string_value="héllo"),
        event_pb2.AttributeValue(int_value=-(2**63)),
        event_pb2.AttributeValue(double_value=3.25),
        event_pb2.AttributeValue(bool_value=True),
        event_pb2.AttributeValue(bool_value=False),
        event_pb2.AttributeValue(timestamp_value=timestamp_from_micros(1_234_567)),
    ],
)
def test_every_attribute_kind_round_trips_through_its_cell_encoding(
    value: event_pb2.AttributeValue,
) -> None:
    kind, raw = encode_attribute(value)
    assert decode_attribute(kind, raw) == value


def test_an_event_round_trips_through_its_stored_row() -> None:
    event = _event(
        "e1",
        1_700_000_000_123_456,
        sku=event_pb2.AttributeValue(string_value="p-9"),
        quantity=event_pb2.AttributeValue(int_value=3),
        price=event_pb2.AttributeValue(double_value=9.5),
    )
    row = event_to_row(event)
    assert event_from_cells(row.cells) == event
    assert row.timestamp_micros == 1_700_000_000_123_456


def test_cell_times_have_millisecond_granularity() -> None:
    assert cell_time(1_700_000_000_123_456).microsecond == 123_000
