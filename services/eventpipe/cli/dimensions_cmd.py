"""``eventpipe dimensions load FILE --dimension users``: reference data into the store.

The file is CSV, JSON lines or Parquet (chosen by extension, or ``--format``). Each record has
a key, a ``valid_from`` time and attributes; docs/store.md describes the format:

- CSV: a header row; the ``key`` and ``valid_from`` columns, every other column an attribute.
  A header ``price:double`` declares the type (string, int, double, bool, timestamp);
  undeclared values are inferred (true/false -> bool, integers -> int, decimals -> double,
  else string). Empty cells are left out.
- JSON lines: ``{"key": ..., "valid_from": ..., "attributes": {...}}``, or the attributes at
  top level. JSON types map to attribute types; ``{"timestamp": "2024-01-01T00:00:00Z"}``
  makes a timestamp. ``null`` is left out.
- Parquet: the columns' Arrow types give the attribute types.

``valid_from`` is RFC 3339 (``2024-01-01T00:00:00Z``) or epoch seconds; ``--valid-from`` gives
one for records without it. Records go in batches through ``UpsertDimensionRecords``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from eventpipe.cli import grpc_client

TYPES = ("string", "int", "double", "bool", "timestamp")
INT_PATTERN = re.compile(r"[+-]?\d+")
FLOAT_PATTERN = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


class RecordError(ValueError):
    """A record of the file cannot be turned into a DimensionRecord."""


def parse_time_micros(value: Any) -> int:
    """RFC 3339 text, epoch seconds, or a datetime -> microseconds since the epoch."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1_000_000)
    if isinstance(value, date):
        return parse_time_micros(datetime(value.year, value.month, value.day, tzinfo=UTC))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value * 1_000_000)
    text = str(value).strip()
    if FLOAT_PATTERN.fullmatch(text):
        return int(float(text) * 1_000_000)
    try:
        return parse_time_micros(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise RecordError(f"not a time: {text!r}") from None


def typed_value(value: Any, declared: str | None) -> tuple[str, Any] | None:
    """(type, python value) of one attribute; None when the value is absent."""
    if value is None or (isinstance(value, str) and value == "" and declared != "string"):
        return None
    if isinstance(value, dict):
        if "timestamp" in value:
            return "timestamp", parse_time_micros(value["timestamp"])
        raise RecordError(f"unsupported attribute object {value!r}")
    kind = declared or _inferred_type(value)
    try:
        if kind == "string":
            return kind, str(value)
        if kind == "int":
            return kind, int(value)
        if kind == "double":
            return kind, float(value)
        if kind == "bool":
            if isinstance(value, str):
                if value.strip().lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return kind, value.strip().lower() in ("true", "1")
            return kind, bool(value)
        if kind == "timestamp":
            return kind, parse_time_micros(value)
    except (ValueError, TypeError):
        raise RecordError(f"{value!r} is not a {kind}") from None
    raise RecordError(f"unknown type {kind!r}; use one of {', '.join(TYPES)}")


def _inferred_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, datetime | date):
        return "timestamp"
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return "bool"
    if INT_PATTERN.fullmatch(text):
        return "int"
    if FLOAT_PATTERN.fullmatch(text):
        return "double"
    return "string"


def _split_header(column: str) -> tuple[str, str | None]:
    name, _, kind = column.partition(":")
    return name.strip(), (kind.strip().lower() or None)


def read_rows(path: Path, file_format: str) -> Iterator[dict[str, Any]]:
    """Raw rows of the file as dicts (CSV headers keep their ``:type`` suffix)."""
    if file_format == "csv":
        with path.open(newline="", encoding="utf-8") as handle:
            yield from csv.DictReader(handle)
    elif file_format == "jsonl":
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise RecordError(f"line {number}: {exc}") from None
                    if not isinstance(row, dict):
                        raise RecordError(f"line {number}: expected a JSON object")
                    attributes = row.pop("attributes", None)
                    if isinstance(attributes, dict):
                        row.update(attributes)
                    yield row
    elif file_format == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            yield from batch.to_pylist()
    else:
        raise RecordError(f"unknown format {file_format!r}")


def to_record(
    row: Mapping[str, Any],
    key_column: str,
    valid_from_column: str,
    declared: Mapping[str, str],
    default_valid_from: int | None,
) -> Any:
    """One ``DimensionRecord`` from a raw row."""
    from eventpipe.core.storage.times import timestamp_from_micros
    from eventpipe.store.v1 import store_pb2

    columns = {_split_header(name): value for name, value in row.items()}
    by_name = {name: (kind, value) for (name, kind), value in columns.items()}
    if key_column not in by_name or by_name[key_column][1] in (None, ""):
        raise RecordError(f"missing {key_column!r}")
    record = store_pb2.DimensionRecord(key=str(by_name[key_column][1]))
    raw_time = by_name.get(valid_from_column, (None, None))[1]
    if raw_time not in (None, ""):
        record.valid_from.CopyFrom(timestamp_from_micros(parse_time_micros(raw_time)))
    elif default_valid_from is not None:
        record.valid_from.CopyFrom(timestamp_from_micros(default_valid_from))
    for name, (kind, value) in by_name.items():
        if name in (key_column, valid_from_column):
            continue
        typed = typed_value(value, declared.get(name) or kind)
        if typed is None:
            continue
        attribute = record.attributes[name]
        kind_name, python_value = typed
        if kind_name == "timestamp":
            attribute.timestamp_value.CopyFrom(timestamp_from_micros(python_value))
        else:
            setattr(attribute, f"{kind_name}_value", python_value)
    return record


def _parse_types(text: str) -> dict[str, str]:
    declared: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, kind = part.partition("=")
        if kind not in TYPES:
            raise SystemExit(f"--types: {part!r} must be name=<{'|'.join(TYPES)}>")
        declared[name] = kind
    return declared


def _format_of(path: Path, explicit: str | None) -> str:
    if explicit:
        return explicit
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    return "csv"


def _count(path: Path, file_format: str) -> int | None:
    if file_format == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    with path.open("rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return max(0, lines - 1) if file_format == "csv" else lines


def _load(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from eventpipe.client import EventPipeError
    from eventpipe.common.v1 import results_pb2

    path: Path = args.file
    if not path.is_file():
        print(f"no such file: {path}", file=sys.stderr)
        return 2
    file_format = _format_of(path, args.format)
    declared = _parse_types(args.types)
    default_valid_from = parse_time_micros(args.valid_from) if args.valid_from else None

    counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
    reasons: list[str] = []

    with (
        grpc_client.client(args.address, args.token, args.tenant) as client,
        tqdm(total=_count(path, file_format), unit="rec", disable=args.quiet) as bar,
    ):

        def send(batch: list[Any], file_indices: list[int]) -> None:
            response = client.dimensions.upsert(args.dimension, batch, batch_size=len(batch))
            counts["accepted"] += response.summary.accepted_count
            counts["duplicate"] += response.summary.duplicate_count
            counts["rejected"] += response.summary.rejected_count
            for result in response.results:
                if result.status == results_pb2.ITEM_STATUS_REJECTED and len(reasons) < 20:
                    # The message names the fields, or says why the record was not written.
                    reasons.append(
                        f"record {file_indices[result.index]} ({result.id}): {result.message}"
                    )
            bar.update(len(batch))

        batch: list[Any] = []
        file_indices: list[int] = []  # the file position of each record in the batch
        try:
            for index, row in enumerate(read_rows(path, file_format)):
                try:
                    record = to_record(
                        row, args.key_column, args.valid_from_column, declared, default_valid_from
                    )
                except RecordError as exc:
                    counts["rejected"] += 1
                    if len(reasons) < 20:
                        reasons.append(f"record {index}: {exc}")
                    bar.update(1)
                    continue
                batch.append(record)
                file_indices.append(index)
                if len(batch) >= args.batch_size:
                    send(batch, file_indices)
                    batch, file_indices = [], []
            if batch:
                send(batch, file_indices)
        except RecordError as exc:
            print(f"cannot read {path}: {exc}", file=sys.stderr)
            return 2
        except EventPipeError as exc:
            print(f"store refused the batch: {grpc_client.refusal(exc)}", file=sys.stderr)
            return 1
    print(
        f"{counts['accepted']} accepted, {counts['duplicate']} duplicate, "
        f"{counts['rejected']} rejected"
    )
    for reason in reasons:
        print(f"  {reason}")
    return 1 if counts["rejected"] else 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dimensions = subparsers.add_parser("dimensions", help="reference (dimension) data")
    actions = dimensions.add_subparsers(dest="action", required=True)
    load = actions.add_parser(
        "load",
        help="upsert records from a CSV, JSON lines or Parquet file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    load.add_argument("file", type=Path)
    load.add_argument("--dimension", required=True, help="for example users or products")
    load.add_argument("--tenant", default=os.environ.get("EVENTPIPE_TENANT", "demo"))
    load.add_argument(
        "--address",
        default=os.environ.get("EVENTPIPE_STORE_ADDRESS", "127.0.0.1:50052"),
        help="the store service's gRPC address",
    )
    load.add_argument("--format", choices=("csv", "jsonl", "parquet"))
    load.add_argument("--key-column", default="key")
    load.add_argument("--valid-from-column", default="valid_from")
    load.add_argument("--valid-from", help="valid_from of records that have none")
    load.add_argument("--types", default="", help="declared types: name=int,price=double")
    load.add_argument(
        "--batch-size", type=int, default=500, choices=range(1, 1001), metavar="1..1000"
    )
    grpc_client.add_token_argument(load)
    load.add_argument("--quiet", action="store_true", help="no progress bar")
    load.set_defaults(func=_load)
