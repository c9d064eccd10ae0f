"""Rows of the enrichment tables (layout in eventpipe.core.storage) to the query protos.

Decoding is defensive: a stored cell that cannot be decoded (wrong length, bad UTF-8, a
timestamp outside 0001..9999) is left out of the answer and counted in
``eventpipe_unreadable_cells_total`` (``rows.skip_bad_cells``); the rest of the entity is
served. A row whose
envelope cannot be decoded (an event without its ids or event time) raises
``rows.BadCell``; the reader skips that row and counts it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from eventpipe.core.storage import attributes, keys, rows, tables, times
from eventpipe.core.storage.tables import COUNTS_FAMILY, META_FAMILY, VALUES_FAMILY
from eventpipe.query.v1 import query_pb2

CellMap = Mapping[tuple[str, bytes], bytes]


def _decoded(
    on_bad: rows.OnBadCell,
    family: str,
    qualifier: bytes,
    decode: Callable[[bytes], Any],
    raw: bytes,
) -> Any:
    """``decode(raw)``, or None after reporting the cell."""
    try:
        return decode(raw)
    except ValueError as exc:
        on_bad(rows.BadCell(family, qualifier, str(exc)))
        return None


def _set_time(target: Any, cells: CellMap, qualifier: bytes, on_bad: rows.OnBadCell) -> None:
    raw = cells.get((META_FAMILY, qualifier))
    if raw is not None:
        value = _decoded(on_bad, META_FAMILY, qualifier, attributes.decode_timestamp, raw)
        if value is not None:
            target.CopyFrom(value)


def _text(raw: bytes) -> str:
    return raw.decode()


def profile_from_cells(tenant_id: str, entity_id: str, cells: CellMap) -> query_pb2.EntityProfile:
    on_bad = rows.skip_bad_cells(tables.ENTITY_PROFILES_TABLE)
    profile = query_pb2.EntityProfile(tenant_id=tenant_id, entity_id=entity_id)
    for name, value in rows.enriched_fields_from_cells(cells, on_bad).items():
        profile.dimension_fields[name].CopyFrom(value)
    _set_time(profile.first_seen_time, cells, rows.PROFILE_FIRST_SEEN_QUALIFIER, on_bad)
    _set_time(profile.last_seen_time, cells, rows.PROFILE_LAST_SEEN_QUALIFIER, on_bad)
    _set_time(profile.update_time, cells, rows.PROFILE_UPDATE_TIME_QUALIFIER, on_bad)
    count_qualifier = rows.PROFILE_EVENT_COUNT_QUALIFIER
    count = cells.get((META_FAMILY, count_qualifier))
    if count is not None:
        value = _decoded(on_bad, META_FAMILY, count_qualifier, attributes.decode_int, count)
        if value is not None:
            profile.event_count = value
    for (family, qualifier), raw in cells.items():
        if family not in (COUNTS_FAMILY, VALUES_FAMILY):
            continue
        name = _decoded(on_bad, family, qualifier, _text, qualifier)
        decode = attributes.decode_int if family == COUNTS_FAMILY else attributes.decode_double
        value = _decoded(on_bad, family, qualifier, decode, raw)
        if name is None or value is None:
            continue
        if family == COUNTS_FAMILY:
            profile.event_type_counts[name] = value
        else:
            profile.totals[name] = value
    return profile


def entity_event_from_cells(cells: CellMap, *, enriched: bool) -> query_pb2.EntityEvent:
    """An enriched-events row (``enriched``) or a raw-events row (not yet enriched).

    Raises ``rows.BadCell`` when the event's envelope cannot be decoded.
    """
    on_bad = rows.skip_bad_cells(
        tables.ENRICHED_EVENTS_TABLE if enriched else tables.RAW_EVENTS_TABLE
    )
    result = query_pb2.EntityEvent(event=rows.event_from_cells(cells, on_bad), enriched=enriched)
    if not enriched:
        return result
    for name, value in rows.enriched_fields_from_cells(cells, on_bad).items():
        result.enriched_fields[name].CopyFrom(value)
    unmatched = cells.get((META_FAMILY, rows.UNMATCHED_QUALIFIER))
    if unmatched:
        text = _decoded(on_bad, META_FAMILY, rows.UNMATCHED_QUALIFIER, _text, unmatched)
        if text is not None:
            result.unmatched_joins.extend(d for d in text.split(",") if d)
    version = cells.get((META_FAMILY, rows.SPEC_VERSION_QUALIFIER))
    if version is not None:
        value = _decoded(
            on_bad, META_FAMILY, rows.SPEC_VERSION_QUALIFIER, attributes.decode_int, version
        )
        if value is not None:
            result.spec_version = value
    return result


def metric_bucket_from_cells(
    key: bytes, cells: CellMap, event_types: Collection[str]
) -> query_pb2.MetricBucket | None:
    """One bucket; None when the event-type filter leaves it empty. Raises ValueError when
    the bucket's own key cannot be read."""
    on_bad = rows.skip_bad_cells(tables.ENTITY_METRICS_TABLE)
    bucket = query_pb2.MetricBucket()
    bucket.start_time.CopyFrom(times.timestamp_from_micros(keys.bucket_start_of_metric_key(key)))
    stats: dict[str, dict[str, bytes]] = {}
    for (family, qualifier), raw in cells.items():
        if family == COUNTS_FAMILY:
            event_type = _decoded(on_bad, family, qualifier, _text, qualifier)
            count = _decoded(on_bad, family, qualifier, attributes.decode_int, raw)
            if event_type is None or count is None:
                continue
            if not event_types or event_type in event_types:
                bucket.event_type_counts[event_type] = count
        elif family == VALUES_FAMILY:
            split = _decoded(
                on_bad, family, qualifier, rows.split_metric_value_qualifier, qualifier
            )
            if split is None:
                continue
            field, stat = split
            if field and stat in rows.METRIC_STATS:
                stats.setdefault(field, {})[stat] = raw
    if event_types and not bucket.event_type_counts:
        # The numeric aggregates are not split by type, so a bucket without any of the
        # requested types has nothing to say about them.
        return None
    for field in sorted(stats):
        values = stats[field]
        metric = bucket.metrics.add(field=field)
        qualifier = field.encode()
        if "count" in values:
            count = _decoded(
                on_bad, VALUES_FAMILY, qualifier, attributes.decode_int, values["count"]
            )
            if count is not None:
                metric.count = count
        for stat in ("sum", "min", "max"):
            if stat in values:
                value = _decoded(
                    on_bad, VALUES_FAMILY, qualifier, attributes.decode_double, values[stat]
                )
                if value is not None:
                    setattr(metric, stat, value)
    return bucket
