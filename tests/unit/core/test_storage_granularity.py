"""One granularity type: proto enum, API names, key letters and bucket widths."""

from __future__ import annotations

from eventpipe.core.storage.granularity import DAY_MICROS, HOUR_MICROS, Granularity
from eventpipe.query.v1 import query_pb2


def test_every_proto_granularity_maps_to_a_type_and_unspecified_means_hour() -> None:
    mapped = {value: Granularity.from_proto(value) for value in query_pb2.Granularity.values()}
    assert mapped == {
        query_pb2.GRANULARITY_UNSPECIFIED: Granularity.HOUR,
        query_pb2.GRANULARITY_HOUR: Granularity.HOUR,
        query_pb2.GRANULARITY_DAY: Granularity.DAY,
    }
    assert Granularity.from_proto(99) is None


def test_the_api_names_round_trip_and_other_names_are_unknown() -> None:
    for granularity in Granularity:
        assert Granularity.from_label(granularity.label) is granularity
    assert Granularity.from_label("h") is None
    assert Granularity.from_label("week") is None


def test_a_granularity_is_its_key_letter_and_carries_its_width() -> None:
    assert Granularity.HOUR == "h" and Granularity.DAY == "d"
    assert Granularity.HOUR.width_micros == HOUR_MICROS == 3_600_000_000
    assert Granularity.DAY.width_micros == DAY_MICROS == 24 * HOUR_MICROS


def test_a_bucket_starts_at_the_width_boundary_at_or_before_the_time() -> None:
    t = 3 * DAY_MICROS + 5 * HOUR_MICROS + 17
    assert Granularity.DAY.bucket_start(t) == 3 * DAY_MICROS
    assert Granularity.HOUR.bucket_start(t) == 3 * DAY_MICROS + 5 * HOUR_MICROS
    assert Granularity.HOUR.bucket_start(-1) == -HOUR_MICROS
