"""Defensive decoding: an unreadable cell is left out and counted, never a failed entity."""

from __future__ import annotations

import pytest
from eventpipe.core.storage import attributes, rows, tables
from query import decode

from tests.unit.query.rows import (
    BASE_MICROS,
    enriched_event_row,
    make_event,
    metric_row,
    number,
    profile_row,
    string,
)

HUGE_MICROS = attributes.encode_int(10**12 * 1_000_000)  # year ~31,700: not a Timestamp


def unreadable(table: str, skipped: str) -> float:
    return float(rows.UNREADABLE_CELLS.labels(table, skipped)._value.get())


def test_a_profile_with_bad_cells_is_served_without_them_and_they_are_counted() -> None:
    row = profile_row(
        "t",
        "e",
        fields={"users.plan": string("pro"), "users.age": number(3.0)},
        first_seen=BASE_MICROS,
        last_seen=BASE_MICROS,
        update_time=BASE_MICROS,
        event_count=2,
        type_counts={"click": 2},
        totals={"price": 1.5},
    )
    cells = dict(row.cells)
    cells[(tables.META_FAMILY, rows.PROFILE_LAST_SEEN_QUALIFIER)] = HUGE_MICROS
    cells[(tables.META_FAMILY, rows.PROFILE_EVENT_COUNT_QUALIFIER)] = b"\x01"  # not 8 bytes
    cells[(attributes.ENRICHED_FAMILIES["double_value"], b"users.age")] = b"short"
    cells[(tables.COUNTS_FAMILY, b"\xff\xfe")] = attributes.encode_int(1)  # not UTF-8
    before = unreadable("entity_profiles", "cell")
    profile = decode.profile_from_cells("t", "e", cells)
    assert unreadable("entity_profiles", "cell") - before == 4
    assert dict(profile.dimension_fields) == {"users.plan": string("pro")}
    assert profile.HasField("first_seen_time") and not profile.HasField("last_seen_time")
    assert profile.event_count == 0
    assert dict(profile.event_type_counts) == {"click": 2}
    assert dict(profile.totals) == {"price": 1.5}


def test_an_event_with_an_out_of_range_timestamp_attribute_is_served_without_it() -> None:
    event = make_event("t", "e", "ev1", "click", BASE_MICROS, {"url": string("/")})
    row = enriched_event_row(event, {"users.plan": string("pro")})
    cells = dict(row.cells)
    cells[(attributes.ATTRIBUTE_FAMILIES["timestamp_value"], b"when")] = HUGE_MICROS
    cells[(tables.META_FAMILY, rows.SPEC_VERSION_QUALIFIER)] = b"?"
    result = decode.entity_event_from_cells(cells, enriched=True)
    assert dict(result.event.attributes) == {"url": string("/")}
    assert dict(result.enriched_fields) == {"users.plan": string("pro")}
    assert result.spec_version == 0


def test_an_event_whose_envelope_is_unreadable_raises_a_bad_cell_for_the_reader_to_skip() -> None:
    event = make_event("t", "e", "ev1", "click", BASE_MICROS)
    cells = dict(rows.event_to_row(event).cells)
    cells[(tables.META_FAMILY, b"event_time")] = HUGE_MICROS
    with pytest.raises(rows.BadCell, match="m:event_time"):
        decode.entity_event_from_cells(cells, enriched=False)


def test_a_metric_bucket_with_a_bad_stat_keeps_the_others() -> None:
    row = metric_row(
        "t", "e", "h", BASE_MICROS, type_counts={"click": 1}, values={"price": (2, 3.0, 1.0, 2.0)}
    )
    cells = dict(row.cells)
    cells[(tables.VALUES_FAMILY, b"price.sum")] = b"bad"
    bucket = decode.metric_bucket_from_cells(row.key, cells, ())
    assert bucket is not None
    metric = bucket.metrics[0]
    assert (metric.count, metric.sum, metric.min, metric.max) == (2, 0.0, 1.0, 2.0)
