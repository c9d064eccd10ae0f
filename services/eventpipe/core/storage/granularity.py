"""Metric granularity, one type: the proto enum, the names "hour"/"day", the letter inside a
metric row key and the bucket width, each written once."""

from __future__ import annotations

import enum

from eventpipe.query.v1 import query_pb2


class Granularity(enum.StrEnum):
    """A metric bucket width. The value is the letter inside a metric row key ("h", "d"), so
    a member is also the plain string that Spark columns and older call sites carry."""

    HOUR = "h"
    DAY = "d"

    @property
    def label(self) -> str:
        """The API name: "hour" or "day"."""
        return _LABELS[self]

    @property
    def width_micros(self) -> int:
        """The bucket width in microseconds (a UTC day for DAY)."""
        return _WIDTHS[self]

    def bucket_start(self, event_micros: int) -> int:
        """The start of the bucket holding ``event_micros``."""
        return event_micros - event_micros % self.width_micros

    @classmethod
    def from_label(cls, label: str) -> Granularity | None:
        """The granularity named "hour" or "day"; None for any other name."""
        return _BY_LABEL.get(label)

    @classmethod
    def from_proto(cls, value: int) -> Granularity | None:
        """The granularity of a ``query.v1.Granularity`` value (UNSPECIFIED means hour);
        None for a value this version does not know."""
        return _BY_PROTO.get(value)


HOUR_MICROS = 3_600_000_000
DAY_MICROS = 24 * HOUR_MICROS

_LABELS = {Granularity.HOUR: "hour", Granularity.DAY: "day"}
_WIDTHS = {Granularity.HOUR: HOUR_MICROS, Granularity.DAY: DAY_MICROS}
_BY_LABEL = {label: granularity for granularity, label in _LABELS.items()}
_BY_PROTO: dict[int, Granularity] = {
    query_pb2.GRANULARITY_UNSPECIFIED: Granularity.HOUR,
    query_pb2.GRANULARITY_HOUR: Granularity.HOUR,
    query_pb2.GRANULARITY_DAY: Granularity.DAY,
}
