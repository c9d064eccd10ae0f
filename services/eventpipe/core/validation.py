"""The event rules documented in protos/eventpipe/common/v1/event.proto, checked in one place.

Ingest checks them before producing; the store consumer checks them again on every message it
reads, because direct Kafka producers bypass ingest. Every Timestamp of every request (event
times, attribute values, dimension ``valid_from``, read ranges) goes through
``check_timestamp``, and every read range through ``check_time_range``: one rule for the store
and the query service alike.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from eventpipe.common.v1 import event_pb2
from eventpipe.core.errors import Violation

ID_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
EVENT_TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_.]{0,63}")
ATTRIBUTE_KEY_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
DIMENSION_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_ATTRIBUTES = 64
MAX_STRING_BYTES = 4096
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_EVENTS = 1000
# google.protobuf.Timestamp's own range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
# The fast paths of the per-event rules: one match over the three ids and the event type
# joined by "\n", which none of them may contain (so a match means each part matched its own
# pattern), and one over the attribute keys joined the same way. A miss takes the detailed
# path, which names each field.
_NAMES_PATTERN = re.compile("\n".join([ID_PATTERN.pattern] * 3 + [EVENT_TYPE_PATTERN.pattern]))
_ATTRIBUTE_KEYS_PATTERN = re.compile(
    f"{ATTRIBUTE_KEY_PATTERN.pattern}(?:\n{ATTRIBUTE_KEY_PATTERN.pattern})*"
)
TIMESTAMP_RANGE_TEXT = "must lie in 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z"
NANOS_RANGE_TEXT = "nanos must be in 0..999999999"


@dataclass(frozen=True)
class EventLimits:
    """The configurable bounds on event_time, and how far a raw-topic message's
    ``ingest_time`` may stray from its Kafka timestamp and still be trusted as the reference
    of those bounds (see ``eventpipe.core.topic_contract.decode_raw_event``)."""

    max_future: timedelta = timedelta(minutes=5)
    max_age: timedelta = timedelta(days=30)
    # ingest_time may be at most this much later than the Kafka timestamp and the
    # consumer's clock: clock skew between hosts, and the timestamp's millisecond grain.
    ingest_time_max_lead: timedelta = timedelta(seconds=60)
    # ingest_time may be at most this much earlier than the Kafka timestamp: the time a
    # message may wait in a producer before it is stamped (broker LogAppendTime).
    ingest_time_max_lag: timedelta = timedelta(minutes=15)
    # How old an event_time a backfill (admin-only history load) may carry; never narrower
    # than the live window. Keep it within the raw table's retention (config checks it).
    backfill_horizon: timedelta = timedelta(days=30)

    @functools.cached_property
    def max_future_micros(self) -> int:
        return _micros_of(self.max_future)

    @functools.cached_property
    def max_age_micros(self) -> int:
        return _micros_of(self.max_age)

    @property
    def backfill_max_age(self) -> timedelta:
        return max(self.max_age, self.backfill_horizon)

    @functools.cached_property
    def backfill_max_age_micros(self) -> int:
        return _micros_of(self.backfill_max_age)


@functools.cache
def _micros_of(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1_000_000)


def check_id(field: str, value: str) -> list[Violation]:
    if not value:
        return [Violation(field, "is required")]
    if not ID_PATTERN.fullmatch(value):
        return [Violation(field, "must be 1-128 characters of A-Z a-z 0-9 . _ : -")]
    return []


def check_timestamp(field: str, value: Timestamp) -> list[Violation]:
    """A Timestamp outside the range protobuf defines (or with bad nanos) names its field.

    Such a value cannot be formatted as RFC 3339, encoded in a row key or cell, or compared
    sensibly, so it is refused wherever a request carries one.
    """
    seconds, nanos = value.seconds, value.nanos
    if not 0 <= nanos < 1_000_000_000:
        return [Violation(field, NANOS_RANGE_TEXT)]
    if not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS:
        return [Violation(field, TIMESTAMP_RANGE_TEXT)]
    return []


def timestamp_micros(value: Timestamp) -> int:
    """Microseconds since the epoch (call after ``check_timestamp``)."""
    return value.seconds * 1_000_000 + value.nanos // 1000


def checked_micros(field: str, value: Timestamp) -> tuple[int | None, list[Violation]]:
    """A request's Timestamp as microseconds, or None with the violation naming ``field``."""
    problems = check_timestamp(field, value)
    return (None if problems else timestamp_micros(value)), problems


@dataclass(frozen=True)
class TimeBounds:
    """A request's [start, end) range in microseconds (None: an open bound), and what was
    wrong with it: the servicer translates the wire range, the domain refuses the request
    together with its other violations."""

    start_micros: int | None = None
    end_micros: int | None = None
    violations: tuple[Violation, ...] = ()


def check_time_range(
    time_range: event_pb2.TimeRange,
    field: str = "time_range",
    *,
    start_required: bool = False,
    end_required: bool = False,
) -> TimeBounds:
    """The one rule for every read range (store and query alike): each bound a valid
    Timestamp (``check_timestamp``), start before end. An unset bound is open unless
    ``*_required``."""
    violations: list[Violation] = []
    bounds: list[int | None] = []
    for name, required in (("start_time", start_required), ("end_time", end_required)):
        path = f"{field}.{name}"
        if not time_range.HasField(name):
            if required:
                violations.append(Violation(path, "is required"))
            bounds.append(None)
            continue
        value, problems = checked_micros(path, getattr(time_range, name))
        violations += problems
        bounds.append(value)
    start, end = bounds
    if start is not None and end is not None and start >= end:
        violations.append(Violation(field, "start_time must be before end_time"))
    return TimeBounds(start, end, tuple(violations))


def check_attributes(
    attributes: Mapping[str, event_pb2.AttributeValue], prefix: str = "attributes"
) -> list[Violation]:
    """Count, key format, value kinds and sizes of an attribute map."""
    violations: list[Violation] = []
    if len(attributes) > MAX_ATTRIBUTES:
        violations.append(Violation(prefix, f"at most {MAX_ATTRIBUTES} attributes are allowed"))
    keys_valid = _ATTRIBUTE_KEYS_PATTERN.fullmatch("\n".join(attributes)) is not None
    # Iterating keys and indexing is several times faster than .items() on protobuf maps.
    for key in attributes:
        value = attributes[key]
        kind = value.WhichOneof("kind")
        if kind is None:
            violations.append(
                Violation(
                    f"{prefix}[{key}]",
                    "value must set one of string_value, "
                    "int_value, double_value, bool_value, timestamp_value",
                )
            )
        elif kind == "string_value":
            text = value.string_value
            # A character is at most 4 bytes in UTF-8: encode only when it could be too long.
            if len(text) * 4 > MAX_STRING_BYTES and len(text.encode()) > MAX_STRING_BYTES:
                violations.append(
                    Violation(f"{prefix}[{key}]", f"string value exceeds {MAX_STRING_BYTES} bytes")
                )
        elif kind == "double_value" and not math.isfinite(value.double_value):
            violations.append(Violation(f"{prefix}[{key}]", "double value must be finite"))
        elif kind == "timestamp_value":
            violations += check_timestamp(f"{prefix}[{key}]", value.timestamp_value)
        if not keys_valid and not ATTRIBUTE_KEY_PATTERN.fullmatch(key):
            violations.append(
                Violation(
                    f"{prefix}[{key}]",
                    "key must start with a letter and use A-Z a-z 0-9 _ (max 64)",
                )
            )
    return violations


def validate_event(
    event: event_pb2.Event,
    now_micros: int,
    limits: EventLimits,
    prefix: str = "",
    *,
    backfill: bool = False,
    serialized_size: int | None = None,
) -> list[Violation]:
    """Returns every rule the event breaks (empty when it is valid).

    ``now_micros`` is the one reference of the time-relative rules: ingest passes the instant
    it stamps as ``ingest_time``, the store consumer the event's (trusted) ``ingest_time``, so
    an event is judged against the same instant wherever it is checked. ``backfill`` (an
    admin's history load) lets event_time reach back to ``limits.backfill_horizon`` instead of
    ``limits.max_age``. ``serialized_size``, when the caller already serialized the event,
    spares computing it again.
    This runs once per event on ingest's hot path: field paths are only built for violations.
    """
    violations: list[Violation] = []
    tenant_id, event_id, entity_id = event.tenant_id, event.event_id, event.entity_id
    event_type = event.event_type
    if not _NAMES_PATTERN.fullmatch(f"{tenant_id}\n{event_id}\n{entity_id}\n{event_type}"):
        for name, value in (
            ("tenant_id", tenant_id),
            ("event_id", event_id),
            ("entity_id", entity_id),
        ):
            violations += check_id(prefix + name, value)
        if not event_type:
            violations.append(Violation(f"{prefix}event_type", "is required"))
        elif not EVENT_TYPE_PATTERN.fullmatch(event_type):
            violations.append(
                Violation(f"{prefix}event_type", "must start with a-z and use a-z 0-9 _ . (max 64)")
            )
    event_time = event.event_time
    seconds, nanos = event_time.seconds, event_time.nanos
    if not event.HasField("event_time"):
        violations.append(Violation(f"{prefix}event_time", "is required"))
    elif not (
        0 <= nanos < 1_000_000_000 and MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS
    ):
        violations += check_timestamp(f"{prefix}event_time", event_time)
    else:
        event_micros = seconds * 1_000_000 + nanos // 1000
        if event_micros > now_micros + limits.max_future_micros:
            violations.append(
                Violation(
                    f"{prefix}event_time", f"is more than {_human(limits.max_future)} in the future"
                )
            )
        elif event_micros < now_micros - limits.max_age_micros:
            if not backfill:
                violations.append(
                    Violation(
                        f"{prefix}event_time",
                        f"is older than the retention of {_human(limits.max_age)}",
                    )
                )
            elif event_micros < now_micros - limits.backfill_max_age_micros:
                violations.append(
                    Violation(
                        f"{prefix}event_time",
                        f"is older than the backfill horizon of {_human(limits.backfill_max_age)}",
                    )
                )
    attributes = event.attributes
    if attributes:
        violations += check_attributes(attributes, f"{prefix}attributes")
    size = event.ByteSize() if serialized_size is None else serialized_size
    if size > MAX_EVENT_BYTES:
        violations.append(
            Violation(
                prefix.rstrip(".") or "event",
                f"serialized size {size} exceeds {MAX_EVENT_BYTES} bytes",
            )
        )
    return violations


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} seconds"
