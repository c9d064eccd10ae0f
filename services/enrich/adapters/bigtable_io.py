"""Bigtable reads and writes that run inside Spark tasks (key-range partitioned).

Google's Spark Bigtable connector (latest on Maven Central: spark-bigtable_2.13 0.4.0) is built
against Spark 3.5 and fails on Spark 4 (``NoClassDefFoundError:
org/slf4j/impl/StaticLoggerBinder`` on the first read; see docs/enrich.md), and its catalog
maps a fixed list of columns while events carry per-event attribute columns. So Spark reads
Bigtable itself: the driver splits the key space into ranges (the 256 salt prefixes of the
tenant, split further at ``sample_row_keys`` boundaries), Spark parallelizes the ranges, and
each task reads its ranges, filtering cell timestamps on the server. Reads and writes go
through ``eventpipe.core.bigtable_rows`` (the GAPIC client with plain protobuf messages, ~2.5x
faster to read and ~4x faster to write than the ``Table`` API here). Every output row is
rewritten whole (delete-row then set, atomic per row) under a deterministic key, so retries
and re-runs give identical rows.

Everything here is a module-level function of picklable arguments so Spark can ship it.

Finite numbers out. Every double enrichment writes is encoded here, and one that is not finite
(a sum past 1.8e308, a derived field's overflow) is not written: the cell is absent, which the
query service serves as absent, never as "Infinity" or "NaN". Each one is counted by ``where``
(NON_FINITE_WHERE) in ``eventpipe_enrich_non_finite_values_total``. The encoding runs in Spark's
Python workers, other processes than the service's: they tally (``note_non_finite``), their
tasks hand the tally back with their results (``take_non_finite_counts``), and the driver adds
it to its counter (``count_non_finite``).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eventpipe.core import bigtable_rows
from eventpipe.core.storage import keys, tables
from eventpipe.core.storage.attributes import (
    ATTRIBUTE_KINDS,
    DOUBLE,
    INT,
    KIND_BY_ENRICHED_FAMILY,
    KIND_BY_FAMILY,
    AttributeKind,
    decode_double,
    decode_int,
    encode_double,
    encode_int,
)
from eventpipe.core.storage.erasures import (
    EntityKey,
    erasure_keys,
    erasures_from_rows,
    is_dimension_tombstone,
)
from eventpipe.core.storage.granularity import DAY_MICROS, HOUR_MICROS, Granularity
from eventpipe.core.storage.keys import KeyRange, tenant_event_ranges
from eventpipe.core.storage.rows import (
    METRIC_STATS,
    PROFILE_EVENT_COUNT_QUALIFIER,
    PROFILE_FIRST_SEEN_QUALIFIER,
    PROFILE_LAST_SEEN_QUALIFIER,
    PROFILE_UPDATE_TIME_QUALIFIER,
    SPEC_VERSION_QUALIFIER,
    UNMATCHED_QUALIFIER,
    Cells,
    EventRow,
    family_cells,
    metric_value_qualifier,
    python_values_by_family,
    split_metric_value_qualifier,
)
from eventpipe.core.storage.times import cell_timestamp_micros
from google.cloud.bigtable_v2 import BigtableClient
from prometheus_client import Counter as PrometheusCounter

MUTATION_BATCH = 500
GRANULARITIES = {str(granularity): granularity.width_micros for granularity in Granularity}
"""Key letter -> bucket width, for the Spark columns (``eventpipe.core.storage.granularity``)."""

# Names the Spark engine and the tests call through this module; their home is the storage
# package (keys, granularity, rows).
__all__ = [
    "DAY_MICROS",
    "GRANULARITIES",
    "HOUR_MICROS",
    "METRIC_STATS",
    "KeyRange",
    "tenant_event_ranges",
]

# ---------------------------------------------------------------- finite numbers out

NON_FINITE_VALUES = PrometheusCounter(
    "eventpipe_enrich_non_finite_values_total",
    "Numbers enrichment left absent because they were not finite (overflow), by where.",
    ["where"],
)
DERIVED_FIELD = "derived_field"
EVENT_FIELD = "event_field"
METRIC = "metric"
PROFILE_TOTAL = "profile_total"
NON_FINITE_WHERE = (DERIVED_FIELD, EVENT_FIELD, METRIC, PROFILE_TOTAL)
"""derived_field: a derived field's result; event_field: any other double of an enriched
event or profile (attributes, joined dimension fields: finite when validated, checked anyway);
metric: a bucket's sum, min or max; profile_total: a profile's running total."""

_NON_FINITE_TALLY: Counter[str] = Counter()


def note_non_finite(where: str, count: int = 1) -> None:
    """Tallies non-finite values in this process (a Spark worker, usually)."""
    _NON_FINITE_TALLY[where] += count


def take_non_finite_counts() -> dict[str, int]:
    """This process's tally since the last call, and resets it: a Spark task returns it with
    its results."""
    counts = dict(_NON_FINITE_TALLY)
    _NON_FINITE_TALLY.clear()
    return counts


def count_non_finite(counts: Mapping[str, int]) -> None:
    """Adds tallies that tasks returned to this process's Prometheus counter (the driver's)."""
    for where, count in counts.items():
        if count:
            NON_FINITE_VALUES.labels(where).inc(count)


def finite_double(value: float, where: str) -> bytes | None:
    """The cell of a double, or None (write nothing, tally ``where``) when it is not finite."""
    if math.isfinite(value):
        return encode_double(value)
    note_non_finite(where)
    return None


@dataclass(frozen=True)
class BigtableTarget:
    """Where Spark tasks read and write; ``emulator_host`` is passed to remote executors."""

    project: str
    instance: str
    table_prefix: str
    emulator_host: str | None = None


_CLIENTS: dict[BigtableTarget, BigtableClient] = {}


def _client(target: BigtableTarget) -> BigtableClient:
    """One client per Python worker and target, reused by every task the worker runs."""
    if target not in _CLIENTS:
        if target.emulator_host:
            os.environ["BIGTABLE_EMULATOR_HOST"] = target.emulator_host
        _CLIENTS[target] = bigtable_rows.gapic_client()
    return _CLIENTS[target]


def _path(target: BigtableTarget, name: str) -> str:
    return bigtable_rows.table_path(target.project, target.instance, target.table_prefix + name)


def _read(target: BigtableTarget, name: str, **query: Any) -> Iterator[tuple[bytes, Cells]]:
    return bigtable_rows.read_rows(_client(target), _path(target, name), **query)


# ---------------------------------------------------------------- key ranges


def split_ranges(ranges: Sequence[KeyRange], sample_keys: Iterable[bytes]) -> list[KeyRange]:
    """Splits ranges at the tablet boundaries Bigtable reports, so no task reads two tablets'
    worth of one range."""
    samples = sorted(k for k in sample_keys if k)
    result: list[KeyRange] = []
    for start, end in ranges:
        cut = start
        for key in samples:
            if cut < key < end:
                result.append((cut, key))
                cut = key
        result.append((cut, end))
    return result


def sampled_ranges(target: BigtableTarget, name: str, ranges: Sequence[KeyRange]) -> list[KeyRange]:
    responses = _client(target).sample_row_keys(request={"table_name": _path(target, name)})
    return split_ranges(ranges, [response.row_key for response in responses])


# ---------------------------------------------------------------- reading

EventTuple = tuple[Any, ...]
"""(row_key, tenant_id, entity_id, event_id, event_type, event_time, ingest_time,
s, i, d, b, t): the columns of EVENT_SCHEMA in enrich.adapters.spark_engine."""


def _typed_maps(cells: Cells, kinds: Mapping[str, AttributeKind]) -> list[dict[str, Any]]:
    """One map (name -> Python value) per family in ``kinds``, in its order."""
    return list(python_values_by_family(cells, kinds).values())


def event_tuple_from_cells(key: bytes, cells: Cells) -> EventTuple:
    meta = tables.META_FAMILY
    ingest = cells.get((meta, b"ingest_time"))
    return (
        bytes(key),
        cells[(meta, b"tenant_id")].decode(),
        cells[(meta, b"entity_id")].decode(),
        cells[(meta, b"event_id")].decode(),
        cells[(meta, b"event_type")].decode(),
        decode_int(cells[(meta, b"event_time")]),
        decode_int(ingest) if ingest else 0,
        *_typed_maps(cells, KIND_BY_FAMILY),
    )


def read_events(
    target: BigtableTarget, ranges: Iterable[KeyRange], start_micros: int, end_micros: int
) -> Iterator[EventTuple]:
    """Raw events with start <= event_time < end in the given key ranges.

    The cell-timestamp filter (event time at millisecond granularity) runs on the server, so
    rows outside the window never cross the wire; the exact micro bound is checked here.
    """
    ranges = list(ranges)
    if not ranges:
        return
    rows = _read(
        target,
        tables.RAW_EVENTS_TABLE,
        ranges=ranges,
        start_micros=cell_timestamp_micros(start_micros),
        end_micros=cell_timestamp_micros(end_micros + 999),
    )
    for key, cells in rows:
        try:
            event = event_tuple_from_cells(key, cells)
        except (KeyError, ValueError, UnicodeDecodeError):
            continue  # the store validated every row; a broken one is counted by nobody
        if start_micros <= event[5] < end_micros:
            yield event


DimensionTuple = tuple[Any, ...]
"""(key, valid_from, deleted, s, i, d, b, t). ``deleted``: the version is a tombstone
(``DeleteDimensionRecord``, ``storage.erasures.is_dimension_tombstone``), so as of it the
record has no match."""


def read_dimension(target: BigtableTarget, tenant_id: str, dimension: str) -> list[DimensionTuple]:
    """Every version of every record of one dimension (the key and valid_from come from the
    row key: ``keys.parse_dimension_key``)."""
    prefix = keys.dimension_records_prefix(tenant_id, dimension)
    rows = _read(target, tables.DIMENSIONS_TABLE, ranges=[keys.prefix_range(prefix)])
    result: list[DimensionTuple] = []
    for row_key, cells in rows:
        key, valid_from = keys.parse_dimension_key(tenant_id, dimension, row_key)
        deleted = is_dimension_tombstone(cells)
        result.append((key, valid_from, deleted, *_typed_maps(cells, KIND_BY_FAMILY)))
    return result


def read_erasures(target: BigtableTarget, entities: Iterable[EntityKey]) -> dict[EntityKey, int]:
    """The erasure tombstones of ``entities`` (``storage.erasures``): (tenant, entity) ->
    erased_at micros; one ReadRows of one key per distinct entity, almost always empty."""
    wanted = erasure_keys(entities)
    if not wanted:
        return {}
    rows = _read(target, tables.ERASURES_TABLE, keys=sorted(wanted))
    return erasures_from_rows(rows, wanted)


# ---------------------------------------------------------------- writing


def _set_typed_cell(
    cells: Cells, enriched: bool, family: str, name: str, value: Any, where: str
) -> None:
    """Sets one typed cell of the attribute ``family`` ("s", "i", ...), or of its enriched
    twin; a double that is not finite is left out (and tallied)."""
    kind = KIND_BY_FAMILY[family]
    raw = finite_double(float(value), where) if kind is DOUBLE else kind.encode_value(value)
    if raw is not None:
        cells[(kind.enriched_family if enriched else kind.family, name.encode())] = raw


def enriched_row(record: dict[str, Any], spec_version: int) -> EventRow:
    """The enriched-events row for one output record of the Spark job (see spark_engine)."""
    event_time = record["event_time"]
    meta = tables.META_FAMILY
    cells: Cells = {
        (meta, b"tenant_id"): record["tenant_id"].encode(),
        (meta, b"event_id"): record["event_id"].encode(),
        (meta, b"event_type"): record["event_type"].encode(),
        (meta, b"entity_id"): record["entity_id"].encode(),
        (meta, b"event_time"): encode_int(event_time),
        (meta, b"ingest_time"): encode_int(record["ingest_time"] or 0),
        (meta, UNMATCHED_QUALIFIER): ",".join(record["unmatched"]).encode(),
        (meta, SPEC_VERSION_QUALIFIER): encode_int(spec_version),
    }
    for kind in ATTRIBUTE_KINDS:
        for name, value in (record[kind.family] or {}).items():
            _set_typed_cell(cells, False, kind.family, name, value, EVENT_FIELD)
    for (family, name), value in record["enriched"].items():
        # Joined fields are named "dimension.field"; derived fields have no dot.
        where = EVENT_FIELD if "." in name else DERIVED_FIELD
        _set_typed_cell(cells, True, family, name, value, where)
    return EventRow(record["row_key"], cells, event_time)


def write_rows(target: BigtableTarget, name: str, rows: Iterable[EventRow]) -> int:
    """Replaces the rows in batches of MUTATION_BATCH; a failed mutation fails the task, and
    Spark's retry rewrites the same rows."""
    client = _client(target)
    path = _path(target, name)
    batch: list[EventRow] = []
    written = 0
    for row in rows:
        batch.append(row)
        written += 1
        if len(batch) >= MUTATION_BATCH:
            bigtable_rows.mutate_rows_or_raise(client, path, batch)
            batch = []
    bigtable_rows.mutate_rows_or_raise(client, path, batch)
    return written


def delete_rows(target: BigtableTarget, name: str, row_keys: Iterable[bytes]) -> None:
    """Deletes the rows (a row that does not exist is no error)."""
    write_rows(target, name, (EventRow(key, {}, 0) for key in row_keys))


def day_metric_keys(tenant_id: str, entity_id: str, day_start: int) -> list[bytes]:
    """The keys of one entity's day bucket and its 24 hour buckets."""
    return [keys.row_key_for_metric(tenant_id, entity_id, Granularity.DAY, day_start)] + [
        keys.row_key_for_metric(tenant_id, entity_id, Granularity.HOUR, day_start + h)
        for h in range(0, DAY_MICROS, HOUR_MICROS)
    ]


@dataclass(frozen=True)
class BucketAggregate:
    """One entity's aggregates over one bucket (hour or day)."""

    tenant_id: str
    entity_id: str
    granularity: str
    bucket_start: int
    counts: dict[str, int]
    values: dict[str, tuple[float, float, float, int]]  # field -> (sum, min, max, count)
    first_seen: int
    last_seen: int


def metric_row(agg: BucketAggregate) -> EventRow:
    cells: Cells = {}
    for event_type, count in sorted(agg.counts.items()):
        cells[(tables.COUNTS_FAMILY, event_type.encode())] = encode_int(count)
    for name, (total, low, high, count) in sorted(agg.values.items()):
        for stat, value in (("sum", total), ("min", low), ("max", high)):
            raw = finite_double(value, METRIC)
            if raw is not None:
                cells[(tables.VALUES_FAMILY, metric_value_qualifier(name, stat))] = raw
        cells[(tables.VALUES_FAMILY, metric_value_qualifier(name, "count"))] = encode_int(count)
    # Not read by the query service: they let a profile be rebuilt from day rows alone.
    cells[(tables.META_FAMILY, PROFILE_FIRST_SEEN_QUALIFIER)] = encode_int(agg.first_seen)
    cells[(tables.META_FAMILY, PROFILE_LAST_SEEN_QUALIFIER)] = encode_int(agg.last_seen)
    key = keys.row_key_for_metric(agg.tenant_id, agg.entity_id, agg.granularity, agg.bucket_start)
    return EventRow(key, cells, agg.bucket_start)


def decode_metric_cells(cells: Cells) -> BucketAggregate | None:
    """The inverse of metric_row, minus the key parts (tenant, entity, bucket left blank).

    A statistic metric_row left out because it was not finite reads as NaN, so what is
    computed from it (a profile total) is not finite either, and left out in its turn.
    """
    meta = family_cells(cells, tables.META_FAMILY)
    if PROFILE_FIRST_SEEN_QUALIFIER not in meta:
        return None
    counts = {
        q.decode(): decode_int(v) for q, v in family_cells(cells, tables.COUNTS_FAMILY).items()
    }
    raw_values = {
        split_metric_value_qualifier(q): v
        for q, v in family_cells(cells, tables.VALUES_FAMILY).items()
    }

    def stat(name: str, which: str) -> float:
        raw = raw_values.get((name, which))
        return math.nan if raw is None else decode_double(raw)

    values: dict[str, tuple[float, float, float, int]] = {}
    for (name, which), raw in raw_values.items():
        if which == "count":
            values[name] = (
                stat(name, "sum"),
                stat(name, "min"),
                stat(name, "max"),
                decode_int(raw),
            )
    return BucketAggregate(
        "",
        "",
        Granularity.DAY,
        0,
        counts,
        values,
        decode_int(meta[PROFILE_FIRST_SEEN_QUALIFIER]),
        decode_int(meta[PROFILE_LAST_SEEN_QUALIFIER]),
    )


@dataclass(frozen=True)
class ProfileInput:
    """What a job knows about one entity it touched: its newest event in the job's window."""

    tenant_id: str
    entity_id: str
    newest_event_time: int
    newest_fields: dict[tuple[str, str], Any]  # (kind, "dimension.field") -> value


def refresh_profiles(
    target: BigtableTarget, inputs: Iterable[ProfileInput], update_time: int
) -> list[tuple[str, str]]:
    """Rebuilds the profile of each touched entity from its day aggregates (totals, first and
    last seen) and its newest enriched event (the latest dimension values); returns the
    (tenant, entity) pairs written. A function of stored rows only, so re-running it writes
    the same profile (update_time aside)."""
    pending = list(inputs)
    if not pending:
        return []
    day_ranges = []
    profile_keys = []
    for item in pending:
        day_ranges.append(
            keys.metric_buckets_range(item.tenant_id, item.entity_id, Granularity.DAY)
        )
        profile_keys.append(keys.row_key_for_profile(item.tenant_id, item.entity_id))
    days: dict[bytes, list[BucketAggregate]] = {}
    for row_key, cells in _read(target, tables.ENTITY_METRICS_TABLE, ranges=day_ranges):
        agg = decode_metric_cells(cells)
        if agg is not None:
            days.setdefault(keys.profile_key_of_metric_key(row_key), []).append(agg)
    existing: dict[bytes, dict[tuple[str, str], Any]] = {}
    for row_key, cells in _read(target, tables.ENTITY_PROFILES_TABLE, keys=profile_keys):
        fields: dict[tuple[str, str], Any] = {}
        maps = _typed_maps(cells, KIND_BY_ENRICHED_FAMILY)
        for kind, values in zip(ATTRIBUTE_KINDS, maps, strict=True):
            for name, value in values.items():
                fields[(kind.family, name)] = value
        existing[row_key] = fields
    out: list[EventRow] = []
    written: list[tuple[str, str]] = []
    for item in pending:
        key = keys.row_key_for_profile(item.tenant_id, item.entity_id)
        aggregates = days.get(key, [])
        if not aggregates:
            continue
        first_seen = min(a.first_seen for a in aggregates)
        last_seen = max(a.last_seen for a in aggregates)
        counts: Counter[str] = Counter()
        totals: dict[str, float] = {}
        for agg in aggregates:
            counts.update(agg.counts)
            for name, (total, _low, _high, _count) in agg.values.items():
                totals[name] = totals.get(name, 0.0) + total
        # The job that enriched the entity's newest event sets the dimension values; a job
        # over an older window keeps them.
        fields = (
            item.newest_fields
            if item.newest_event_time >= last_seen
            else existing.get(key, item.newest_fields)
        )
        meta = tables.META_FAMILY
        profile: Cells = {
            (meta, PROFILE_FIRST_SEEN_QUALIFIER): encode_int(first_seen),
            (meta, PROFILE_LAST_SEEN_QUALIFIER): encode_int(last_seen),
            (meta, PROFILE_UPDATE_TIME_QUALIFIER): encode_int(update_time),
            (meta, PROFILE_EVENT_COUNT_QUALIFIER): encode_int(sum(counts.values())),
        }
        for event_type, count in sorted(counts.items()):
            profile[(tables.COUNTS_FAMILY, event_type.encode())] = encode_int(count)
        for name, total in sorted(totals.items()):
            raw = finite_double(total, PROFILE_TOTAL)
            if raw is not None:
                profile[(tables.VALUES_FAMILY, name.encode())] = raw
        for (family, name), value in sorted(fields.items()):
            _set_typed_cell(profile, True, family, name, value, EVENT_FIELD)
        out.append(EventRow(key, profile, last_seen))
        written.append((item.tenant_id, item.entity_id))
    write_rows(target, tables.ENTITY_PROFILES_TABLE, out)
    return written


_NUMERIC_FAMILIES = [
    (DOUBLE.family, DOUBLE),
    (INT.family, INT),
    (DOUBLE.enriched_family, DOUBLE),
    (INT.enriched_family, INT),
]


def _field_value(cells: Cells, name: str) -> float | None:
    """A numeric field of an enriched row: an attribute (d, i) or an added field (xd, xi)."""
    qualifier = name.encode()
    for family, kind in _NUMERIC_FAMILIES:
        raw = cells.get((family, qualifier))
        if raw is not None:
            return float(kind.decode_value(raw))
    return None


def aggregates_from_enriched(
    target: BigtableTarget,
    tenant_id: str,
    entity_id: str,
    day_start: int,
    metric_fields: Sequence[str],
) -> list[BucketAggregate]:
    """Recomputes the day bucket and its hour buckets of one entity from its stored enriched
    rows (one contiguous key range). Streaming uses it: a micro-batch holds only part of a
    bucket, and recomputing the whole bucket keeps re-deliveries from double counting."""
    start_key, end_key = keys.event_key_range(
        tenant_id, entity_id, day_start, day_start + DAY_MICROS
    )
    rows = _read(target, tables.ENRICHED_EVENTS_TABLE, ranges=[(start_key, end_key)])
    buckets: dict[tuple[str, int], dict[str, Any]] = {}
    meta = tables.META_FAMILY
    for _key, cells in rows:
        event_time = decode_int(cells[(meta, b"event_time")])
        event_type = cells[(meta, b"event_type")].decode()
        values = {name: _field_value(cells, name) for name in metric_fields}
        for granularity in Granularity:
            bucket = buckets.setdefault(
                (granularity, granularity.bucket_start(event_time)),
                {"counts": Counter(), "values": {}, "first": event_time, "last": event_time},
            )
            bucket["counts"][event_type] += 1
            bucket["first"] = min(bucket["first"], event_time)
            bucket["last"] = max(bucket["last"], event_time)
            for name, value in values.items():
                if value is None:
                    continue
                total, low, high, count = bucket["values"].get(name, (0.0, value, value, 0))
                bucket["values"][name] = (
                    total + value,
                    min(low, value),
                    max(high, value),
                    count + 1,
                )
    return [
        BucketAggregate(
            tenant_id,
            entity_id,
            granularity,
            start,
            dict(b["counts"]),
            b["values"],
            b["first"],
            b["last"],
        )
        for (granularity, start), b in sorted(buckets.items())
    ]
