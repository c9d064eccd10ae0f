"""The one row shape and its codecs: events, dimension versions, the idempotency claim, and
the qualifiers enrichment writes and query reads.

A row is its key and ``Cells``: (family, qualifier) -> the newest cell's value. It is the only
row shape: every client path yields it. ``eventpipe.core.bigtable_rows.read_rows`` (the raw
GAPIC reader) builds it directly from the read chunks, and ``latest_cells`` flattens the rows
of the ``Table`` and data APIs; every decoder here takes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from eventpipe.common.v1 import event_pb2
from eventpipe.core.storage import keys
from eventpipe.core.storage.attributes import ATTRIBUTE_FAMILIES as ATTRIBUTE_FAMILIES
from eventpipe.core.storage.attributes import (
    KIND_BY_ENRICHED_FAMILY,
    KIND_BY_FAMILY,
    AttributeKind,
    decode_int,
    decode_timestamp,
    encode_attribute,
    encode_int,
)
from eventpipe.core.storage.tables import META_FAMILY
from eventpipe.core.storage.times import micros

log = logging.getLogger(__name__)

Cells = dict[tuple[str, bytes], bytes]
"""(family, qualifier) -> value: the latest cell of each column of one row."""


@dataclass(frozen=True)
class EventRow:
    """A row to write: its key, its cells and the cell timestamp (micros)."""

    key: bytes
    cells: Cells
    timestamp_micros: int


def latest_cells(row: Any) -> Cells:
    """The one flattener: the newest cell of each column of a row read through the client
    library, whether a ``Table`` API ``PartialRowData`` (family -> qualifier -> versions) or a
    data API ``Row`` (a list of cells, a column's newest first)."""
    result: Cells = {}
    if isinstance(row.cells, Mapping):
        for family, columns in row.cells.items():
            for qualifier, versions in columns.items():
                if versions:
                    result[(family, qualifier)] = versions[0].value
    else:
        for cell in row.cells:
            result.setdefault((cell.family, cell.qualifier), cell.value)
    return result


def family_cells(cells: Mapping[tuple[str, bytes], bytes], family: str) -> dict[bytes, bytes]:
    """qualifier -> value of one family of a row."""
    return {qualifier: value for (name, qualifier), value in cells.items() if name == family}


# ---------------------------------------------------------------- bad cells


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


# ---------------------------------------------------------------- typed columns


def _decode_columns(
    cells: Mapping[tuple[str, bytes], bytes],
    kinds: Mapping[str, AttributeKind],
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
            result[qualifier.decode()] = kind.attribute_of(kind.decode_value(raw))
        except ValueError as exc:
            bad = BadCell(family, qualifier, str(exc))
            if on_bad_cell is None:
                raise bad from None
            on_bad_cell(bad)
    return result


def attributes_from_cells(
    cells: Mapping[tuple[str, bytes], bytes], on_bad_cell: OnBadCell | None = None
) -> dict[str, event_pb2.AttributeValue]:
    """The attribute columns of an event or dimension row."""
    return _decode_columns(cells, KIND_BY_FAMILY, on_bad_cell)


def enriched_fields_from_cells(
    cells: Mapping[tuple[str, bytes], bytes], on_bad_cell: OnBadCell | None = None
) -> dict[str, event_pb2.AttributeValue]:
    """The fields enrichment added, from an enriched-events or profile row."""
    return _decode_columns(cells, KIND_BY_ENRICHED_FAMILY, on_bad_cell)


def python_values_by_family(
    cells: Mapping[tuple[str, bytes], bytes], kinds: Mapping[str, AttributeKind]
) -> dict[str, dict[str, Any]]:
    """family -> name -> Python value of the typed families in ``kinds`` (every one present,
    empty when the row has none): the map columns of a Spark row. ValueError for a cell its
    kind cannot hold."""
    result: dict[str, dict[str, Any]] = {family: {} for family in kinds}
    for (family, qualifier), raw in cells.items():
        kind = kinds.get(family)
        if kind is not None:
            result[family][qualifier.decode()] = kind.decode_value(raw)
    return result


def _set_attributes(cells: Cells, attributes: Mapping[str, event_pb2.AttributeValue]) -> None:
    for name, value in attributes.items():
        field, raw = encode_attribute(value)
        cells[(ATTRIBUTE_FAMILIES[field], name.encode())] = raw


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


def _text(raw: bytes) -> str:
    return raw.decode()


# ---------------------------------------------------------------- events


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
    _set_attributes(cells, event.attributes)
    return EventRow(
        key=keys.row_key_for_event(event.tenant_id, event.entity_id, event_micros, event.event_id),
        cells=cells,
        timestamp_micros=event_micros,
    )


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


EVENT_ID_CLAIM_QUALIFIER = b"claim"
"""Event ids, META_FAMILY: ``<event row key>`` + b"\n" + ``<topic>/<partition>/<offset>``
of the message that first stored the event id; cell timestamp = its event time."""


def event_id_claim_row(event_row: EventRow, source: str) -> EventRow:
    """The index row claiming the event id of ``event_row`` for the message at ``source``."""
    cells = event_row.cells
    key = keys.row_key_for_event_id(
        cells[(META_FAMILY, b"tenant_id")].decode(), cells[(META_FAMILY, b"event_id")].decode()
    )
    claim = event_row.key + b"\n" + source.encode()
    return EventRow(
        key, {(META_FAMILY, EVENT_ID_CLAIM_QUALIFIER): claim}, event_row.timestamp_micros
    )


# ---------------------------------------------------------------- dimension records
# One codec for the rows the store writes and enrichment joins against.


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
    _set_attributes(cells, attributes)
    return EventRow(
        key=keys.row_key_for_dimension(tenant_id, dimension, key, valid_from_micros),
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
"""Entity profiles and metric buckets, META_FAMILY: int64 micros, earliest event_time seen."""
PROFILE_LAST_SEEN_QUALIFIER = b"last_seen"
"""Entity profiles and metric buckets, META_FAMILY: int64 micros, latest event_time seen."""
PROFILE_UPDATE_TIME_QUALIFIER = b"update_time"
"""Entity profiles, META_FAMILY: int64 micros, when enrichment last wrote the profile."""
PROFILE_EVENT_COUNT_QUALIFIER = b"event_count"
"""Entity profiles, META_FAMILY: int64, number of events seen."""

METRIC_STATS = ("sum", "min", "max", "count")
"""VALUES_FAMILY of entity_metrics: ``<field>.count`` is int64, the others are doubles."""


def metric_value_qualifier(field: str, stat: str) -> bytes:
    """``<field>.<stat>``; a field name may itself contain dots ("product.price")."""
    return f"{field}.{stat}".encode()


def split_metric_value_qualifier(qualifier: bytes) -> tuple[str, str]:
    """Inverse of ``metric_value_qualifier``: (field, stat), splitting at the last dot."""
    field, _, stat = qualifier.decode().rpartition(".")
    return field, stat
