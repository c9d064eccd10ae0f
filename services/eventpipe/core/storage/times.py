"""Timestamps as stored: int64 microseconds since the epoch; cell times in milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def micros(ts: Timestamp) -> int:
    """Microseconds since the epoch of ``ts``."""
    return int(ts.ToMicroseconds())


def timestamp_from_micros(value: int) -> Timestamp:
    """A Timestamp; ValueError outside 0001-01-01..9999-12-31."""
    ts = Timestamp()
    ts.FromMicroseconds(value)
    return ts


def cell_timestamp_micros(value_micros: int) -> int:
    """A cell timestamp in microseconds truncated to milliseconds, as Bigtable requires."""
    return (value_micros // 1000) * 1000


def cell_time(value_micros: int) -> datetime:
    """A Bigtable cell timestamp: millisecond granularity, as Bigtable requires."""
    return datetime.fromtimestamp((value_micros // 1000) / 1000, tz=UTC)
