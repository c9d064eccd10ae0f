"""Builders of the rows enrichment writes (layout: eventpipe.core.storage), for test data.

A test data loader, not a fake Bigtable: unit tests put these rows in an in-memory EntityStore,
integration tests write them to the real emulator (tests/integration/query/loader.py) until
enrichment produces them itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from eventpipe.common.v1 import event_pb2
from eventpipe.core.storage.attributes import (
    ENRICHED_FAMILIES,
    encode_attribute,
    encode_double,
    encode_int,
)
from eventpipe.core.storage.keys import row_key_for_metric, row_key_for_profile
from eventpipe.core.storage.rows import (
    PROFILE_EVENT_COUNT_QUALIFIER,
    PROFILE_FIRST_SEEN_QUALIFIER,
    PROFILE_LAST_SEEN_QUALIFIER,
    PROFILE_UPDATE_TIME_QUALIFIER,
    SPEC_VERSION_QUALIFIER,
    UNMATCHED_QUALIFIER,
    Cells,
    EventRow,
    event_to_row,
    metric_value_qualifier,
)
from eventpipe.core.storage.tables import COUNTS_FAMILY, META_FAMILY, VALUES_FAMILY
from eventpipe.core.storage.times import timestamp_from_micros

BASE_MICROS = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000_000
DAY = 24 * HOUR


def make_event(
    tenant_id: str,
    entity_id: str,
    event_id: str,
    event_type: str,
    event_micros: int,
    attributes: Mapping[str, event_pb2.AttributeValue] | None = None,
) -> event_pb2.Event:
    event = event_pb2.Event(
        tenant_id=tenant_id, entity_id=entity_id, event_id=event_id, event_type=event_type
    )
    event.event_time.CopyFrom(timestamp_from_micros(event_micros))
    event.ingest_time.CopyFrom(timestamp_from_micros(event_micros + 1000))
    for name, value in (attributes or {}).items():
        event.attributes[name].CopyFrom(value)
    return event


def string(value: str) -> event_pb2.AttributeValue:
    return event_pb2.AttributeValue(string_value=value)


def number(value: float) -> event_pb2.AttributeValue:
    return event_pb2.AttributeValue(double_value=value)


def _enriched_cells(fields: Mapping[str, event_pb2.AttributeValue]) -> Cells:
    cells: Cells = {}
    for name, value in fields.items():
        kind, raw = encode_attribute(value)
        cells[(ENRICHED_FAMILIES[kind], name.encode())] = raw
    return cells


def enriched_event_row(
    event: event_pb2.Event,
    fields: Mapping[str, event_pb2.AttributeValue],
    *,
    unmatched: tuple[str, ...] = (),
    spec_version: int = 1,
) -> EventRow:
    base = event_to_row(event)
    cells = dict(base.cells)
    cells.update(_enriched_cells(fields))
    cells[(META_FAMILY, UNMATCHED_QUALIFIER)] = ",".join(unmatched).encode()
    cells[(META_FAMILY, SPEC_VERSION_QUALIFIER)] = encode_int(spec_version)
    return EventRow(base.key, cells, base.timestamp_micros)


def profile_row(
    tenant_id: str,
    entity_id: str,
    *,
    fields: Mapping[str, event_pb2.AttributeValue],
    first_seen: int,
    last_seen: int,
    update_time: int,
    event_count: int,
    type_counts: Mapping[str, int],
    totals: Mapping[str, float],
) -> EventRow:
    meta = META_FAMILY
    cells: Cells = {
        (meta, PROFILE_FIRST_SEEN_QUALIFIER): encode_int(first_seen),
        (meta, PROFILE_LAST_SEEN_QUALIFIER): encode_int(last_seen),
        (meta, PROFILE_UPDATE_TIME_QUALIFIER): encode_int(update_time),
        (meta, PROFILE_EVENT_COUNT_QUALIFIER): encode_int(event_count),
    }
    cells.update(_enriched_cells(fields))
    for event_type, count in type_counts.items():
        cells[(COUNTS_FAMILY, event_type.encode())] = encode_int(count)
    for field, total in totals.items():
        cells[(VALUES_FAMILY, field.encode())] = encode_double(total)
    return EventRow(row_key_for_profile(tenant_id, entity_id), cells, update_time)


def metric_row(
    tenant_id: str,
    entity_id: str,
    granularity: str,
    bucket_start: int,
    *,
    type_counts: Mapping[str, int],
    values: Mapping[str, tuple[int, float, float, float]],
) -> EventRow:
    """``values``: field -> (count, sum, min, max)."""
    cells: Cells = {}
    for event_type, count in type_counts.items():
        cells[(COUNTS_FAMILY, event_type.encode())] = encode_int(count)
    for field, (count, total, low, high) in values.items():
        family = VALUES_FAMILY
        cells[(family, metric_value_qualifier(field, "count"))] = encode_int(count)
        cells[(family, metric_value_qualifier(field, "sum"))] = encode_double(total)
        cells[(family, metric_value_qualifier(field, "min"))] = encode_double(low)
        cells[(family, metric_value_qualifier(field, "max"))] = encode_double(high)
    key = row_key_for_metric(tenant_id, entity_id, granularity, bucket_start)
    return EventRow(key, cells, bucket_start)
