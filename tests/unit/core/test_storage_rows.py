"""The one row shape: the flattener of client rows, and the well-known-type time conversions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from eventpipe.core.storage import rows, times


@dataclass
class _Cell:
    value: bytes
    family: str = ""
    qualifier: bytes = b""


@dataclass
class _Row:
    cells: object


def test_a_table_api_row_flattens_to_the_newest_cell_of_each_column() -> None:
    row = _Row(
        {"m": {b"a": [_Cell(b"new"), _Cell(b"old")], b"empty": []}, "s": {b"x": [_Cell(b"1")]}}
    )
    assert rows.latest_cells(row) == {("m", b"a"): b"new", ("s", b"x"): b"1"}


def test_a_data_api_row_flattens_to_the_newest_cell_of_each_column() -> None:
    row = _Row([_Cell(b"new", "m", b"a"), _Cell(b"old", "m", b"a"), _Cell(b"1", "s", b"x")])
    assert rows.latest_cells(row) == {("m", b"a"): b"new", ("s", b"x"): b"1"}


def test_family_cells_picks_one_family_of_a_row() -> None:
    cells = {("m", b"a"): b"1", ("s", b"b"): b"2", ("m", b"c"): b"3"}
    assert rows.family_cells(cells, "m") == {b"a": b"1", b"c": b"3"}


@pytest.mark.parametrize("value", [0, 1, 999_999, -1, -1_000_001, 1_700_000_000_123_456])
def test_micros_round_trip_through_a_timestamp(value: int) -> None:
    ts = times.timestamp_from_micros(value)
    assert 0 <= ts.nanos < 1_000_000_000
    assert times.micros(ts) == value


def test_a_time_outside_the_timestamp_range_is_refused() -> None:
    with pytest.raises(ValueError):
        times.timestamp_from_micros(2**62)


def test_a_cell_timestamp_is_truncated_to_milliseconds() -> None:
    assert times.cell_timestamp_micros(1_234_567) == 1_234_000
    assert times.cell_time(1_234_567).timestamp() == 1.234
