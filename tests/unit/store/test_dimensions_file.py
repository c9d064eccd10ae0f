"""Reading dimension files: CSV with declared and inferred types, JSON lines, Parquet."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eventpipe.cli.dimensions_cmd import RecordError, parse_time_micros, read_rows, to_record

T = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1_000_000)


def records(path: Path, file_format: str) -> list:  # type: ignore[type-arg]
    return [to_record(r, "key", "valid_from", {}, None) for r in read_rows(path, file_format)]


def test_csv_columns_become_typed_attributes(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text(
        "key,valid_from,name,age,score,vip,zip:string,signup:timestamp,empty\n"
        "u1,2024-01-02T00:00:00Z,Ann,42,1.5,true,01234,2024-01-02T00:00:00Z,\n"
    )
    (record,) = records(path, "csv")
    assert record.key == "u1"
    assert record.valid_from.seconds * 1_000_000 == T
    a = record.attributes
    assert a["name"].string_value == "Ann" and a["age"].int_value == 42
    assert a["score"].double_value == 1.5 and a["vip"].bool_value is True
    assert a["zip"].string_value == "01234"  # declared: not inferred as an int
    assert a["signup"].timestamp_value.seconds * 1_000_000 == T
    assert "empty" not in a


def test_json_lines_records_keep_json_types(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    line = {
        "key": "p1",
        "valid_from": 1704153600,
        "attributes": {"price": 9.5, "stock": 3, "on_sale": False, "t": {"timestamp": T / 1e6}},
    }
    path.write_text(json.dumps(line) + "\n")
    (record,) = records(path, "jsonl")
    assert record.valid_from.seconds == 1704153600
    assert record.attributes["price"].double_value == 9.5
    assert record.attributes["stock"].int_value == 3
    assert record.attributes["on_sale"].WhichOneof("kind") == "bool_value"
    assert record.attributes["t"].timestamp_value.seconds * 1_000_000 == T


def test_parquet_columns_use_their_arrow_types(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    table = pa.table(
        {
            "key": ["p1"],
            "valid_from": pa.array([datetime(2024, 1, 2, tzinfo=UTC)], pa.timestamp("us", "UTC")),
            "price": [2.0],
            "units": [7],
        }
    )
    pq.write_table(table, path)
    (record,) = records(path, "parquet")
    assert record.valid_from.seconds * 1_000_000 == T
    assert record.attributes["price"].double_value == 2.0
    assert record.attributes["units"].int_value == 7


def test_a_value_that_is_not_its_declared_type_is_an_error() -> None:
    with pytest.raises(RecordError, match="not a int"):
        to_record({"key": "u", "age:int": "old"}, "key", "valid_from", {}, None)
    with pytest.raises(RecordError, match="missing 'key'"):
        to_record({"name": "x"}, "key", "valid_from", {}, None)


def test_times_parse_from_rfc3339_and_epoch_seconds() -> None:
    assert parse_time_micros("2024-01-02T00:00:00Z") == T
    assert parse_time_micros(T / 1_000_000) == T
