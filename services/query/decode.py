"""Rows of the enrichment tables (layout in eventpipe.core.schema) to the query protos."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from eventpipe.core import schema
from eventpipe.core.schema import COUNTS_FAMILY, META_FAMILY, VALUES_FAMILY
from eventpipe.query.v1 import query_pb2

CellMap = Mapping[tuple[str, bytes], bytes]


def _set_time(target: object, cells: CellMap, qualifier: bytes) -> None:
    raw = cells.get((META_FAMILY, qualifier))
    if raw is not None:
        target.CopyFrom(schema.timestamp_from_micros(schema.decode_int(raw)))  # type: ignore[attr-defined]


def profile_from_cells(tenant_id: str, entity_id: str, cells: CellMap) -> query_pb2.EntityProfile:
    profile = query_pb2.EntityProfile(tenant_id=tenant_id, entity_id=entity_id)
    for name, value in schema.enriched_fields_from_cells(cells).items():
        profile.dimension_fields[name].CopyFrom(value)
    _set_time(profile.first_seen_time, cells, schema.PROFILE_FIRST_SEEN_QUALIFIER)
    _set_time(profile.last_seen_time, cells, schema.PROFILE_LAST_SEEN_QUALIFIER)
    _set_time(profile.update_time, cells, schema.PROFILE_UPDATE_TIME_QUALIFIER)
    count = cells.get((META_FAMILY, schema.PROFILE_EVENT_COUNT_QUALIFIER))
    if count is not None:
        profile.event_count = schema.decode_int(count)
    for (family, qualifier), raw in cells.items():
        if family == COUNTS_FAMILY:
            profile.event_type_counts[qualifier.decode()] = schema.decode_int(raw)
        elif family == VALUES_FAMILY:
            profile.totals[qualifier.decode()] = schema.decode_double(raw)
    return profile


def entity_event_from_cells(cells: CellMap, *, enriched: bool) -> query_pb2.EntityEvent:
    """An enriched-events row (``enriched``) or a raw-events row (not yet enriched)."""
    result = query_pb2.EntityEvent(event=schema.event_from_cells(cells), enriched=enriched)
    if not enriched:
        return result
    for name, value in schema.enriched_fields_from_cells(cells).items():
        result.enriched_fields[name].CopyFrom(value)
    unmatched = cells.get((META_FAMILY, schema.UNMATCHED_QUALIFIER))
    if unmatched:
        result.unmatched_joins.extend(d for d in unmatched.decode().split(",") if d)
    version = cells.get((META_FAMILY, schema.SPEC_VERSION_QUALIFIER))
    if version is not None:
        result.spec_version = schema.decode_int(version)
    return result


def bucket_start_from_key(key: bytes) -> int:
    """The bucket start encoded at the end of a ``row_key_for_metric`` key."""
    return int(key.rsplit(b"#", 1)[1])


def metric_bucket_from_cells(
    key: bytes, cells: CellMap, event_types: Collection[str]
) -> query_pb2.MetricBucket | None:
    """One bucket; None when the event-type filter leaves it empty."""
    bucket = query_pb2.MetricBucket()
    bucket.start_time.CopyFrom(schema.timestamp_from_micros(bucket_start_from_key(key)))
    stats: dict[str, dict[str, bytes]] = {}
    for (family, qualifier), raw in cells.items():
        if family == COUNTS_FAMILY:
            event_type = qualifier.decode()
            if not event_types or event_type in event_types:
                bucket.event_type_counts[event_type] = schema.decode_int(raw)
        elif family == VALUES_FAMILY:
            field, stat = schema.split_metric_value_qualifier(qualifier)
            if field and stat in schema.METRIC_STATS:
                stats.setdefault(field, {})[stat] = raw
    if event_types and not bucket.event_type_counts:
        # The numeric aggregates are not split by type, so a bucket without any of the
        # requested types has nothing to say about them.
        return None
    for field in sorted(stats):
        values = stats[field]
        metric = bucket.metrics.add(field=field)
        if "count" in values:
            metric.count = schema.decode_int(values["count"])
        for stat in ("sum", "min", "max"):
            if stat in values:
                setattr(metric, stat, schema.decode_double(values[stat]))
    return bucket
