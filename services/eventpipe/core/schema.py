"""The Bigtable schema, written once: table and family names, row keys and cell codecs.

See docs/schema.md for the reasoning. In short:

- Row keys start with a two-hex-digit salt derived from (tenant, entity), so neither a busy
  tenant nor the current time range lands on a single tablet, while one entity's rows stay
  contiguous.
- Times inside keys are reversed (``2**63-1 - micros``, zero-padded) so a prefix scan returns
  the newest first.
- ``event_id`` is the last key component: a replayed event rewrites its own row.
- Attributes are columns, one family per value type, so a reader (Spark included) can map
  ``i:quantity`` to a long and ``d:price`` to a double without decoding a blob.
- Cell timestamps are the event time (millisecond granularity), so GC max-age rules implement
  retention by event time and scans can filter time ranges on the server.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter

from eventpipe.common.v1 import event_pb2
from eventpipe.core.bigtable import FamilySpec, TableSpec
from eventpipe.core.validation import MAX_TIMESTAMP_SECONDS, MIN_TIMESTAMP_SECONDS

log = logging.getLogger(__name__)

# Table names, without the configurable table prefix.
RAW_EVENTS_TABLE = "events"
DIMENSIONS_TABLE = "dimensions"
ENRICHED_EVENTS_TABLE = "enriched_events"
ENTITY_METRICS_TABLE = "entity_metrics"
ENTITY_PROFILES_TABLE = "entity_profiles"
EVENT_IDS_TABLE = "event_ids"  # the store's idempotency index: (tenant_id, event_id) -> claim

META_FAMILY = "m"
# One family per attribute value type; the qualifier is the attribute name.
ATTRIBUTE_FAMILIES = {
    "string_value": "s",
    "int_value": "i",
    "double_value": "d",
    "bool_value": "b",
    "timestamp_value": "t",
}
# The same for fields that enrichment adds (joined "dimension.field" and derived fields).
ENRICHED_FAMILIES = {kind: "x" + family for kind, family in ATTRIBUTE_FAMILIES.items()}
COUNTS_FAMILY = "c"  # event counts by event type (int64)
VALUES_FAMILY = "v"  # numeric aggregates: "<field>.sum|min|max|count"

REVERSED_TIME_MAX = 2**63 - 1
SALT_BUCKETS = 256
KEY_SEPARATOR = "#"  # never allowed inside ids (see the id rules in event.proto)


def _family_specs(
    names: list[str], max_age: timedelta | None, versions: int = 1
) -> tuple[FamilySpec, ...]:
    return tuple(FamilySpec(name, max_versions=versions, max_age=max_age) for name in names)


def table_specs(
    raw_retention: timedelta | None = timedelta(days=30),
    enriched_retention: timedelta | None = timedelta(days=400),
) -> list[TableSpec]:
    """Every table the pipeline stores into, with GC rules from the retention settings."""
    attribute_families = list(ATTRIBUTE_FAMILIES.values())
    enriched_families = list(ENRICHED_FAMILIES.values())
    return [
        TableSpec(
            RAW_EVENTS_TABLE, _family_specs([META_FAMILY, *attribute_families], raw_retention)
        ),
        TableSpec(EVENT_IDS_TABLE, _family_specs([META_FAMILY], raw_retention)),
        TableSpec(DIMENSIONS_TABLE, _family_specs([META_FAMILY, *attribute_families], None)),
        TableSpec(
            ENRICHED_EVENTS_TABLE,
            _family_specs(
                [META_FAMILY, *attribute_families, *enriched_families], enriched_retention
            ),
        ),
        TableSpec(
            ENTITY_METRICS_TABLE,
            _family_specs([META_FAMILY, COUNTS_FAMILY, VALUES_FAMILY], enriched_retention),
        ),
        TableSpec(
            ENTITY_PROFILES_TABLE,
            _family_specs([META_FAMILY, COUNTS_FAMILY, VALUES_FAMILY, *enriched_families], None),
        ),
    ]


# ---------------------------------------------------------------- times


def micros(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def timestamp_from_micros(value: int) -> Timestamp:
    ts = Timestamp()
    ts.seconds, remainder = divmod(value, 1_000_000)
    ts.nanos = remainder * 1000
    return ts


def cell_time(value_micros: int) -> datetime:
    """A Bigtable cell timestamp: millisecond granularity, as Bigtable requires."""
    return datetime.fromtimestamp((value_micros // 1000) / 1000, tz=UTC)


def _reversed(value_micros: int) -> str:
    return f"{REVERSED_TIME_MAX - value_micros:019d}"


# ---------------------------------------------------------------- row keys


def salt(tenant_id: str, entity_id: str) -> str:
    digest = hashlib.blake2b(f"{tenant_id}\x00{entity_id}".encode(), digest_size=2).digest()
    return f"{int.from_bytes(digest, 'big') % SALT_BUCKETS:02x}"


def entity_prefix(tenant_id: str, entity_id: str) -> bytes:
    """Every event row of one entity starts with this; also the profile's row key + '#'."""
    return f"{salt(tenant_id, entity_id)}#{tenant_id}#{entity_id}#".encode()


def row_key_for_event(
    tenant_id: str, entity_id: str, event_time_micros: int, event_id: str
) -> bytes:
    """Raw and enriched events: newest first within the entity, unique per event_id."""
    return entity_prefix(tenant_id, entity_id) + (
        f"{_reversed(event_time_micros)}#{event_id}".encode()
    )


def event_key_range(
    tenant_id: str, entity_id: str, start_micros: int | None, end_micros: int | None
) -> tuple[bytes, bytes]:
    """[start_key, end_key) covering the entity's events with start <= event_time < end."""
    prefix = entity_prefix(tenant_id, entity_id)
    start_key = prefix + _reversed(end_micros - 1).encode() if end_micros is not None else prefix
    if start_micros is not None:
        end_key = prefix + _reversed(start_micros - 1).encode()
    else:
        end_key = prefix_end(prefix)
    return start_key, end_key


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def row_key_for_event_id(tenant_id: str, event_id: str) -> bytes:
    """The idempotency index row of (tenant, event_id), salted like the event rows."""
    return f"{salt(tenant_id, event_id)}#{tenant_id}#{event_id}".encode()


EVENT_ID_CLAIM_QUALIFIER = b"claim"
"""Event ids, META_FAMILY: ``<event row key>`` + b"\n" + ``<topic>/<partition>/<offset>``
of the message that first stored the event id; cell timestamp = its event time."""


def event_id_claim_row(event_row: EventRow, source: str) -> EventRow:
    """The index row claiming the event id of ``event_row`` for the message at ``source``."""
    cells = event_row.cells
    key = row_key_for_event_id(
        cells[(META_FAMILY, b"tenant_id")].decode(), cells[(META_FAMILY, b"event_id")].decode()
    )
    claim = event_row.key + b"\n" + source.encode()
    return EventRow(
        key, {(META_FAMILY, EVENT_ID_CLAIM_QUALIFIER): claim}, event_row.timestamp_micros
    )


def row_key_for_profile(tenant_id: str, entity_id: str) -> bytes:
    return f"{salt(tenant_id, entity_id)}#{tenant_id}#{entity_id}".encode()


def row_key_for_metric(
    tenant_id: str, entity_id: str, granularity: str, bucket_start_micros: int
) -> bytes:
    """Aggregates: ``granularity`` is "h" or "d"; buckets ascend in time."""
    return (
        entity_prefix(tenant_id, entity_id) + f"{granularity}#{bucket_start_micros:019d}".encode()
    )


def dimension_prefix(tenant_id: str, dimension: str, key: str) -> bytes:
    return f"{tenant_id}#{dimension}#{key}#".encode()


def row_key_for_dimension(
    tenant_id: str, dimension: str, key: str, valid_from_micros: int
) -> bytes:
    """One row per record version, newest first: the first row at or after
    ``dimension_prefix + reversed(as_of)`` is the version valid at ``as_of``."""
    return dimension_prefix(tenant_id, dimension, key) + _reversed(valid_from_micros).encode()


def valid_from_of_dimension_key(row_key: bytes) -> int:
    """Inverse of ``row_key_for_dimension`` for valid_from; ValueError on a foreign key."""
    return REVERSED_TIME_MAX - int(row_key.rsplit(b"#", 1)[1])


def dimension_as_of_start(tenant_id: str, dimension: str, key: str, as_of_micros: int) -> bytes:
    return dimension_prefix(tenant_id, dimension, key) + _reversed(as_of_micros).encode()


# ---------------------------------------------------------------- cell codecs

_INT64 = struct.Struct(">q")
_DOUBLE = struct.Struct(">d")


_MIN_TIMESTAMP_MICROS = MIN_TIMESTAMP_SECONDS * 1_000_000
_MAX_TIMESTAMP_MICROS = (MAX_TIMESTAMP_SECONDS + 1) * 1_000_000 - 1


class BadCell(ValueError):
    """A stored cell that cannot be decoded into its field (readers skip it and count it)."""

    def __init__(self, family: str, qualifier: bytes, reason: str) -> None:
        super().__init__(f"cell {family}:{qualifier.decode(errors='replace')}: {reason}")
        self.family = family
        self.qualifier = qualifier
        self.reason = reason


OnBadCell = Callable[[BadCell], None]
"""Called for each undecodable attribute cell that a lenient reader skips."""

UNREADABLE_CELLS = Counter(
    "eventpipe_unreadable_cells_total",
    "Stored cells (skipped=cell) or whole rows (skipped=row) a reader left out of an answer "
    "because they could not be decoded, by table.",
    ["table", "skipped"],
)


def skip_bad_cells(table: str) -> OnBadCell:
    """An ``on_bad_cell`` callback for readers of ``table``: logs and counts the cell."""

    def report(bad: BadCell) -> None:
        UNREADABLE_CELLS.labels(table, "cell").inc()
        log.warning("skipping an unreadable cell", extra={"table": table, "cell": str(bad)})

    return report


def skip_bad_row(table: str, key: bytes, error: Exception) -> None:
    """Logs and counts a row of ``table`` left out because its envelope is unreadable."""
    UNREADABLE_CELLS.labels(table, "row").inc()
    log.warning(
        "skipping an unreadable row",
        extra={"table": table, "row_key": key.hex(), "error": str(error)},
    )


def encode_int(value: int) -> bytes:
    return _INT64.pack(value)


def decode_int(raw: bytes) -> int:
    """Raises ValueError (not struct.error) for a cell that is not 8 bytes."""
    if len(raw) != 8:
        raise ValueError(f"an int64 cell holds 8 bytes, not {len(raw)}")
    return int(_INT64.unpack(raw)[0])


def encode_double(value: float) -> bytes:
    return _DOUBLE.pack(value)


def decode_double(raw: bytes) -> float:
    if len(raw) != 8:
        raise ValueError(f"a double cell holds 8 bytes, not {len(raw)}")
    return float(_DOUBLE.unpack(raw)[0])


def decode_timestamp(raw: bytes) -> Timestamp:
    """An int64-micros cell as a Timestamp; ValueError outside 0001-01-01..9999-12-31."""
    value = decode_int(raw)
    if not _MIN_TIMESTAMP_MICROS <= value <= _MAX_TIMESTAMP_MICROS:
        raise ValueError("timestamp outside 0001-01-01..9999-12-31")
    return timestamp_from_micros(value)


def encode_attribute(value: event_pb2.AttributeValue) -> tuple[str, bytes]:
    """Returns (value kind, cell bytes); the kind selects the family."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return kind, value.string_value.encode()
    if kind == "int_value":
        return kind, encode_int(value.int_value)
    if kind == "double_value":
        return kind, encode_double(value.double_value)
    if kind == "bool_value":
        return kind, b"\x01" if value.bool_value else b"\x00"
    if kind == "timestamp_value":
        return kind, encode_int(micros(value.timestamp_value))
    raise ValueError("attribute value has no kind")


def decode_attribute(kind: str, raw: bytes) -> event_pb2.AttributeValue:
    """Raises ValueError (UnicodeDecodeError included) for a cell its kind cannot hold."""
    if kind == "string_value":
        return event_pb2.AttributeValue(string_value=raw.decode())
    if kind == "int_value":
        return event_pb2.AttributeValue(int_value=decode_int(raw))
    if kind == "double_value":
        return event_pb2.AttributeValue(double_value=decode_double(raw))
    if kind == "bool_value":
        if len(raw) != 1:
            raise ValueError(f"a bool cell holds 1 byte, not {len(raw)}")
        return event_pb2.AttributeValue(bool_value=raw != b"\x00")
    if kind == "timestamp_value":
        return event_pb2.AttributeValue(timestamp_value=decode_timestamp(raw))
    raise ValueError(f"unknown attribute kind {kind!r}")


def _decode_columns(
    cells: Mapping[tuple[str, bytes], bytes],
    kinds: Mapping[str, str],
    on_bad_cell: OnBadCell | None,
) -> dict[str, event_pb2.AttributeValue]:
    """Typed columns of the families in ``kinds``; a bad cell is skipped through
    ``on_bad_cell`` or, without one, raised as BadCell."""
    result: dict[str, event_pb2.AttributeValue] = {}
    for (family, qualifier), raw in cells.items():
        kind = kinds.get(family)
        if kind is None:
            continue
        try:
            result[qualifier.decode()] = decode_attribute(kind, raw)
        except ValueError as exc:
            bad = BadCell(family, qualifier, str(exc))
            if on_bad_cell is None:
                raise bad from None
            on_bad_cell(bad)
    return result


def _meta(
    cells: Mapping[tuple[str, bytes], bytes], qualifier: bytes, decode: Callable[[bytes], Any]
) -> Any:
    """A required META_FAMILY cell, decoded; BadCell when missing or undecodable."""
    raw = cells.get((META_FAMILY, qualifier))
    if raw is None:
        raise BadCell(META_FAMILY, qualifier, "missing")
    try:
        return decode(raw)
    except ValueError as exc:
        raise BadCell(META_FAMILY, qualifier, str(exc)) from None


_KIND_BY_FAMILY = {family: kind for kind, family in ATTRIBUTE_FAMILIES.items()}
_KIND_BY_ENRICHED_FAMILY = {family: kind for kind, family in ENRICHED_FAMILIES.items()}

Cells = dict[tuple[str, bytes], bytes]
"""(family, qualifier) -> value: the latest cell of each column of one row."""


@dataclass(frozen=True)
class EventRow:
    """An event as it is stored: its row key, its cells and the cell timestamp."""

    key: bytes
    cells: Cells
    timestamp_micros: int


def event_to_row(event: event_pb2.Event) -> EventRow:
    """The row an event is stored as (raw events table, and the base of an enriched row)."""
    event_micros = micros(event.event_time)
    cells: Cells = {
        (META_FAMILY, b"tenant_id"): event.tenant_id.encode(),
        (META_FAMILY, b"event_id"): event.event_id.encode(),
        (META_FAMILY, b"event_type"): event.event_type.encode(),
        (META_FAMILY, b"entity_id"): event.entity_id.encode(),
        (META_FAMILY, b"event_time"): encode_int(event_micros),
        (META_FAMILY, b"ingest_time"): encode_int(micros(event.ingest_time)),
    }
    for name, value in event.attributes.items():
        kind, raw = encode_attribute(value)
        cells[(ATTRIBUTE_FAMILIES[kind], name.encode())] = raw
    return EventRow(
        key=row_key_for_event(event.tenant_id, event.entity_id, event_micros, event.event_id),
        cells=cells,
        timestamp_micros=event_micros,
    )


def _text(raw: bytes) -> str:
    return raw.decode()


def event_from_cells(
    cells: Mapping[tuple[str, bytes], bytes], on_bad_cell: OnBadCell | None = None
) -> event_pb2.Event:
    """Rebuilds the Event from a stored row's cells (inverse of ``event_to_row``).

    A missing or undecodable envelope cell (ids, type, times) raises BadCell: there is no
    event without it. An undecodable attribute cell raises too, unless ``on_bad_cell`` is
    given: then it is reported there and the attribute left out.
    """
    event = event_pb2.Event(
        tenant_id=_meta(cells, b"tenant_id", _text),
        event_id=_meta(cells, b"event_id", _text),
        event_type=_meta(cells, b"event_type", _text),
        entity_id=_meta(cells, b"entity_id", _text),
    )
    event.event_time.CopyFrom(_meta(cells, b"event_time", decode_timestamp))
    if (META_FAMILY, b"ingest_time") in cells:
        ingest = _meta(cells, b"ingest_time", decode_timestamp)
        if ingest.seconds or ingest.nanos:
            event.ingest_time.CopyFrom(ingest)
    for name, value in attributes_from_cells(cells, on_bad_cell).items():
        event.attributes[name].CopyFrom(value)
    return event


def attributes_from_cells(
    cells: Mapping[tuple[str, bytes], bytes], on_bad_cell: OnBadCell | None = None
) -> dict[str, event_pb2.AttributeValue]:
    """The attribute columns of an event or dimension row."""
    return _decode_columns(cells, _KIND_BY_FAMILY, on_bad_cell)


def enriched_fields_from_cells(
    cells: Mapping[tuple[str, bytes], bytes], on_bad_cell: OnBadCell | None = None
) -> dict[str, event_pb2.AttributeValue]:
    """The fields enrichment added, from an enriched-events or profile row."""
    return _decode_columns(cells, _KIND_BY_ENRICHED_FAMILY, on_bad_cell)


def cells_from_row_data(row: object) -> Cells:
    """Flattens a google-cloud-bigtable ``PartialRowData`` to its latest cell per column."""
    result: Cells = {}
    for family, columns in row.cells.items():  # type: ignore[attr-defined]
        for qualifier, versions in columns.items():
            if versions:
                result[(family, qualifier)] = versions[0].value
    return result


# ---------------------------------------------------------------- dimension records
# Added by the store: one codec for the rows the store writes and enrichment joins against.


def cell_timestamp_micros(value_micros: int) -> int:
    """A cell timestamp in microseconds truncated to milliseconds, as Bigtable requires."""
    return (value_micros // 1000) * 1000


def dimension_record_to_row(
    tenant_id: str,
    dimension: str,
    key: str,
    valid_from_micros: int,
    attributes: Mapping[str, event_pb2.AttributeValue],
) -> EventRow:
    """The row one version of a reference record is stored as (dimensions table).

    The cell timestamp is ``valid_from``, so re-upserting the same version rewrites the same
    cells instead of adding versions.
    """
    cells: Cells = {
        (META_FAMILY, b"tenant_id"): tenant_id.encode(),
        (META_FAMILY, b"dimension"): dimension.encode(),
        (META_FAMILY, b"key"): key.encode(),
        (META_FAMILY, b"valid_from"): encode_int(valid_from_micros),
    }
    for name, value in attributes.items():
        kind, raw = encode_attribute(value)
        cells[(ATTRIBUTE_FAMILIES[kind], name.encode())] = raw
    return EventRow(
        key=row_key_for_dimension(tenant_id, dimension, key, valid_from_micros),
        cells=cells,
        timestamp_micros=valid_from_micros,
    )


@dataclass(frozen=True)
class DimensionVersion:
    """One stored version of a reference record, decoded."""

    key: str
    valid_from_micros: int
    attributes: dict[str, event_pb2.AttributeValue]


def dimension_version_from_cells(
    cells: Mapping[tuple[str, bytes], bytes], on_bad_cell: OnBadCell | None = None
) -> DimensionVersion:
    """Inverse of ``dimension_record_to_row`` (bad cells as in ``event_from_cells``)."""
    return DimensionVersion(
        key=_meta(cells, b"key", _text),
        valid_from_micros=_meta(cells, b"valid_from", decode_int),
        attributes=attributes_from_cells(cells, on_bad_cell),
    )


# ---------------------------------------------------------------- enrichment outputs
# Qualifiers the enrich jobs write and the query service reads, pinned once here.

UNMATCHED_QUALIFIER = b"unmatched"
"""Enriched events, META_FAMILY: comma-separated names of the dimensions that had no match."""
SPEC_VERSION_QUALIFIER = b"spec_version"
"""Enriched events, META_FAMILY: int64, the enrichment spec version that wrote the row."""
PROFILE_FIRST_SEEN_QUALIFIER = b"first_seen"
"""Entity profiles, META_FAMILY: int64 micros, earliest event_time seen."""
PROFILE_LAST_SEEN_QUALIFIER = b"last_seen"
"""Entity profiles, META_FAMILY: int64 micros, latest event_time seen."""
PROFILE_UPDATE_TIME_QUALIFIER = b"update_time"
"""Entity profiles, META_FAMILY: int64 micros, when enrichment last wrote the profile."""
PROFILE_EVENT_COUNT_QUALIFIER = b"event_count"
"""Entity profiles, META_FAMILY: int64, number of events seen."""

GRANULARITY_HOUR = "h"
GRANULARITY_DAY = "d"
_BUCKET_MICROS = {GRANULARITY_HOUR: 3_600_000_000, GRANULARITY_DAY: 86_400_000_000}
METRIC_STATS = ("sum", "min", "max", "count")
"""VALUES_FAMILY of entity_metrics: ``<field>.count`` is int64, the others are doubles."""


def bucket_start_micros(event_micros: int, granularity: str) -> int:
    """The start of the hour or (UTC) day bucket holding ``event_micros``."""
    width = _BUCKET_MICROS[granularity]
    return event_micros - event_micros % width


def metric_value_qualifier(field: str, stat: str) -> bytes:
    """``<field>.<stat>``; a field name may itself contain dots ("product.price")."""
    return f"{field}.{stat}".encode()


def split_metric_value_qualifier(qualifier: bytes) -> tuple[str, str]:
    """Inverse of ``metric_value_qualifier``: (field, stat), splitting at the last dot."""
    field, _, stat = qualifier.decode().rpartition(".")
    return field, stat


def metric_key_range(
    tenant_id: str, entity_id: str, granularity: str, start_micros: int, end_micros: int
) -> tuple[bytes, bytes]:
    """[start_key, end_key) covering the buckets whose start lies in [start, end)."""
    return (
        row_key_for_metric(tenant_id, entity_id, granularity, max(start_micros, 0)),
        row_key_for_metric(tenant_id, entity_id, granularity, max(end_micros, 0)),
    )
