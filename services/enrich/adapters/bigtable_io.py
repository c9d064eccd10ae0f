"""Bigtable reads and writes that run inside Spark tasks (key-range partitioned).

Google's Spark Bigtable connector (latest on Maven Central: spark-bigtable_2.13 0.4.0) is built
against Spark 3.5 and fails on Spark 4 (``NoClassDefFoundError:
org/slf4j/impl/StaticLoggerBinder`` on the first read; see docs/enrich.md), and its catalog
maps a fixed list of columns while events carry per-event attribute columns. So Spark reads
Bigtable itself: the driver splits the key space into ranges (the 256 salt prefixes of the
tenant, split further at ``sample_row_keys`` boundaries), Spark parallelizes the ranges, and
each task reads its ranges with the Python client, filtering cell timestamps on the server.
Writes are ``mutate_rows`` from ``foreachPartition``; every output row is rewritten whole
(delete-row then set, atomic per row) under a deterministic key, so retries and re-runs give
identical rows.

Everything here is a module-level function of picklable arguments so Spark can ship it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from eventpipe.core import schema
from google.cloud import bigtable
from google.cloud.bigtable.row import DirectRow
from google.cloud.bigtable.row_filters import TimestampRange, TimestampRangeFilter
from google.cloud.bigtable.row_set import RowSet
from google.cloud.bigtable.table import Table

MUTATION_BATCH = 500
HOUR_MICROS = 3_600_000_000
DAY_MICROS = 24 * HOUR_MICROS
GRANULARITIES = {"h": HOUR_MICROS, "d": DAY_MICROS}

# Qualifiers of the output tables, pinned in the shared schema so query reads the same names.
Q_UNMATCHED = schema.UNMATCHED_QUALIFIER
Q_SPEC_VERSION = schema.SPEC_VERSION_QUALIFIER
Q_FIRST_SEEN = schema.PROFILE_FIRST_SEEN_QUALIFIER
Q_LAST_SEEN = schema.PROFILE_LAST_SEEN_QUALIFIER
Q_UPDATE_TIME = schema.PROFILE_UPDATE_TIME_QUALIFIER
Q_EVENT_COUNT = schema.PROFILE_EVENT_COUNT_QUALIFIER
METRIC_STATS = ("sum", "min", "max", "count")

_FAMILY_BY_TYPE = {"s": "s", "i": "i", "d": "d", "b": "b", "t": "t"}


@dataclass(frozen=True)
class BigtableTarget:
    """Where Spark tasks read and write; ``emulator_host`` is passed to remote executors."""

    project: str
    instance: str
    table_prefix: str
    emulator_host: str | None = None


_TABLES: dict[tuple[BigtableTarget, str], Table] = {}


def table(target: BigtableTarget, name: str) -> Table:
    """One client per Python worker and target, reused by every task the worker runs."""
    key = (target, name)
    if key not in _TABLES:
        if target.emulator_host:
            os.environ["BIGTABLE_EMULATOR_HOST"] = target.emulator_host
        client = bigtable.Client(project=target.project)
        _TABLES[key] = client.instance(target.instance).table(target.table_prefix + name)
    return _TABLES[key]


# ---------------------------------------------------------------- key ranges

KeyRange = tuple[bytes, bytes]


def tenant_event_ranges(tenant_id: str) -> list[KeyRange]:
    """One range per salt prefix: every event row of the tenant lies in one of them."""
    ranges = []
    for bucket in range(schema.SALT_BUCKETS):
        prefix = f"{bucket:02x}#{tenant_id}#".encode()
        ranges.append((prefix, schema.prefix_end(prefix)))
    return ranges


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
    samples = [s.row_key for s in table(target, name).sample_row_keys()]
    return split_ranges(ranges, samples)


# ---------------------------------------------------------------- reading

EventTuple = tuple[Any, ...]
"""(row_key, tenant_id, entity_id, event_id, event_type, event_time, ingest_time,
s, i, d, b, t): the columns of EVENT_SCHEMA in enrich.adapters.spark_engine."""


def _typed_maps(
    cells: dict[str, dict[bytes, list[Any]]], families: Sequence[str]
) -> list[dict[str, Any]]:
    maps: list[dict[str, Any]] = [{}, {}, {}, {}, {}]
    for index, family in enumerate(families):
        for qualifier, versions in cells.get(family, {}).items():
            raw = versions[0].value
            name = qualifier.decode()
            kind = "sidbt"[index]
            if kind == "s":
                maps[index][name] = raw.decode()
            elif kind in "it":
                maps[index][name] = schema.decode_int(raw)
            elif kind == "d":
                maps[index][name] = schema.decode_double(raw)
            else:
                maps[index][name] = raw != b"\x00"
    return maps


def event_tuple_from_cells(key: bytes, cells: dict[str, dict[bytes, list[Any]]]) -> EventTuple:
    meta = {q: v[0].value for q, v in cells.get(schema.META_FAMILY, {}).items()}
    ingest = meta.get(b"ingest_time")
    return (
        bytes(key),
        meta[b"tenant_id"].decode(),
        meta[b"entity_id"].decode(),
        meta[b"event_id"].decode(),
        meta[b"event_type"].decode(),
        schema.decode_int(meta[b"event_time"]),
        schema.decode_int(ingest) if ingest else 0,
        *_typed_maps(cells, list(schema.ATTRIBUTE_FAMILIES.values())),
    )


def read_events(
    target: BigtableTarget, ranges: Iterable[KeyRange], start_micros: int, end_micros: int
) -> Iterator[EventTuple]:
    """Raw events with start <= event_time < end in the given key ranges.

    The cell-timestamp filter (event time at millisecond granularity) runs on the server, so
    rows outside the window never cross the wire; the exact micro bound is checked here.
    """
    row_set = RowSet()
    count = 0
    for start, end in ranges:
        row_set.add_row_range_from_keys(start_key=start, end_key=end)
        count += 1
    if not count:
        return
    window = TimestampRange(
        start=schema.cell_time(start_micros),
        end=schema.cell_time(end_micros + 999),
    )
    rows = table(target, schema.RAW_EVENTS_TABLE).read_rows(
        row_set=row_set, filter_=TimestampRangeFilter(window)
    )
    for row in rows:
        try:
            event = event_tuple_from_cells(row.row_key, row.cells)
        except (KeyError, ValueError, UnicodeDecodeError):
            continue  # the store validated every row; a broken one is counted by nobody
        if start_micros <= event[5] < end_micros:
            yield event


DimensionTuple = tuple[Any, ...]
"""(key, valid_from, deleted, s, i, d, b, t)."""


def read_dimension(target: BigtableTarget, tenant_id: str, dimension: str) -> list[DimensionTuple]:
    """Every version of every record of one dimension (the key and valid_from come from the
    row key, which schema.row_key_for_dimension fixes)."""
    prefix = f"{tenant_id}#{dimension}#".encode()
    rows = table(target, schema.DIMENSIONS_TABLE).read_rows(
        start_key=prefix, end_key=schema.prefix_end(prefix)
    )
    result: list[DimensionTuple] = []
    for row in rows:
        rest = bytes(row.row_key)[len(prefix) :].decode()
        key, _, reversed_time = rest.rpartition("#")
        valid_from = schema.REVERSED_TIME_MAX - int(reversed_time)
        meta = {q: v[0].value for q, v in row.cells.get(schema.META_FAMILY, {}).items()}
        deleted = meta.get(b"deleted", b"\x00") not in (b"\x00", b"", b"0", b"false")
        maps = _typed_maps(row.cells, list(schema.ATTRIBUTE_FAMILIES.values()))
        result.append((key, valid_from, deleted, *maps))
    return result


# ---------------------------------------------------------------- writing


def _commit(tbl: Table, rows: list[DirectRow]) -> None:
    if not rows:
        return
    statuses = tbl.mutate_rows(rows)
    failed = [s for s in statuses if s.code != 0]
    if failed:
        # The task fails and Spark retries it; rows already written are rewritten identically.
        raise RuntimeError(f"{len(failed)} of {len(rows)} Bigtable mutations failed: {failed[0]}")
    rows.clear()


def _set_typed(
    row: DirectRow, family_prefix: str, kind: str, name: str, value: Any, ts: Any
) -> None:
    qualifier = name.encode()
    family = family_prefix + kind
    if kind == "s":
        raw = str(value).encode()
    elif kind in "it":
        raw = schema.encode_int(int(value))
    elif kind == "d":
        raw = schema.encode_double(float(value))
    else:
        raw = b"\x01" if value else b"\x00"
    row.set_cell(family, qualifier, raw, timestamp=ts)


def enriched_row(record: dict[str, Any], spec_version: int) -> DirectRow:
    """The enriched-events row for one output record of the Spark job (see spark_engine)."""
    event_time = record["event_time"]
    ts = schema.cell_time(event_time)
    row = DirectRow(record["row_key"])
    row.delete()
    meta = {
        b"tenant_id": record["tenant_id"].encode(),
        b"event_id": record["event_id"].encode(),
        b"event_type": record["event_type"].encode(),
        b"entity_id": record["entity_id"].encode(),
        b"event_time": schema.encode_int(event_time),
        b"ingest_time": schema.encode_int(record["ingest_time"] or 0),
        Q_UNMATCHED: ",".join(record["unmatched"]).encode(),
        Q_SPEC_VERSION: schema.encode_int(spec_version),
    }
    for qualifier, value in meta.items():
        row.set_cell(schema.META_FAMILY, qualifier, value, timestamp=ts)
    for kind in "sidbt":
        for name, value in (record[kind] or {}).items():
            _set_typed(row, "", kind, name, value, ts)
    for (kind, name), value in record["enriched"].items():
        _set_typed(row, "x", kind, name, value, ts)
    return row


def write_rows(target: BigtableTarget, name: str, rows: Iterable[DirectRow]) -> int:
    tbl = table(target, name)
    batch: list[DirectRow] = []
    written = 0
    for row in rows:
        batch.append(row)
        written += 1
        if len(batch) >= MUTATION_BATCH:
            _commit(tbl, batch)
    _commit(tbl, batch)
    return written


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


def metric_row(agg: BucketAggregate) -> DirectRow:
    row = DirectRow(
        schema.row_key_for_metric(agg.tenant_id, agg.entity_id, agg.granularity, agg.bucket_start)
    )
    row.delete()
    ts = schema.cell_time(agg.bucket_start)
    for event_type, count in sorted(agg.counts.items()):
        row.set_cell(schema.COUNTS_FAMILY, event_type.encode(), schema.encode_int(count), ts)
    for name, (total, low, high, count) in sorted(agg.values.items()):
        for stat, raw in (
            ("sum", schema.encode_double(total)),
            ("min", schema.encode_double(low)),
            ("max", schema.encode_double(high)),
            ("count", schema.encode_int(count)),
        ):
            row.set_cell(schema.VALUES_FAMILY, f"{name}.{stat}".encode(), raw, ts)
    # Not read by the query service: they let a profile be rebuilt from day rows alone.
    row.set_cell(schema.META_FAMILY, Q_FIRST_SEEN, schema.encode_int(agg.first_seen), ts)
    row.set_cell(schema.META_FAMILY, Q_LAST_SEEN, schema.encode_int(agg.last_seen), ts)
    return row


def decode_metric_cells(cells: dict[str, dict[bytes, list[Any]]]) -> BucketAggregate | None:
    """The inverse of metric_row, minus the key parts (tenant, entity, bucket left blank)."""
    meta = {q: v[0].value for q, v in cells.get(schema.META_FAMILY, {}).items()}
    if Q_FIRST_SEEN not in meta:
        return None
    counts = {
        q.decode(): schema.decode_int(v[0].value)
        for q, v in cells.get(schema.COUNTS_FAMILY, {}).items()
    }
    raw_values = {q.decode(): v[0].value for q, v in cells.get(schema.VALUES_FAMILY, {}).items()}
    values: dict[str, tuple[float, float, float, int]] = {}
    for qualifier in raw_values:
        name, _, stat = qualifier.rpartition(".")
        if stat == "sum":
            values[name] = (
                schema.decode_double(raw_values[qualifier]),
                schema.decode_double(raw_values[f"{name}.min"]),
                schema.decode_double(raw_values[f"{name}.max"]),
                schema.decode_int(raw_values[f"{name}.count"]),
            )
    return BucketAggregate(
        "",
        "",
        "d",
        0,
        counts,
        values,
        schema.decode_int(meta[Q_FIRST_SEEN]),
        schema.decode_int(meta[Q_LAST_SEEN]),
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
    metrics = table(target, schema.ENTITY_METRICS_TABLE)
    profiles = table(target, schema.ENTITY_PROFILES_TABLE)
    pending = list(inputs)
    if not pending:
        return []
    day_rows = RowSet()
    profile_keys = RowSet()
    for item in pending:
        prefix = schema.entity_prefix(item.tenant_id, item.entity_id) + b"d#"
        day_rows.add_row_range_from_keys(start_key=prefix, end_key=schema.prefix_end(prefix))
        profile_keys.add_row_key(schema.row_key_for_profile(item.tenant_id, item.entity_id))
    days: dict[bytes, list[BucketAggregate]] = {}
    for row in metrics.read_rows(row_set=day_rows):
        agg = decode_metric_cells(row.cells)
        if agg is not None:
            entity_key = bytes(row.row_key).rsplit(b"#", 2)[0]
            days.setdefault(entity_key, []).append(agg)
    existing: dict[bytes, dict[tuple[str, str], Any]] = {}
    for row in profiles.read_rows(row_set=profile_keys):
        fields: dict[tuple[str, str], Any] = {}
        maps = _typed_maps(row.cells, [f"x{k}" for k in "sidbt"])
        for index, kind in enumerate("sidbt"):
            for name, value in maps[index].items():
                fields[(kind, name)] = value
        existing[bytes(row.row_key)] = fields
    out: list[DirectRow] = []
    written: list[tuple[str, str]] = []
    for item in pending:
        key = schema.row_key_for_profile(item.tenant_id, item.entity_id)
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
        ts = schema.cell_time(last_seen)
        row = DirectRow(key)
        row.delete()
        for qualifier, value in (
            (Q_FIRST_SEEN, first_seen),
            (Q_LAST_SEEN, last_seen),
            (Q_UPDATE_TIME, update_time),
            (Q_EVENT_COUNT, sum(counts.values())),
        ):
            row.set_cell(schema.META_FAMILY, qualifier, schema.encode_int(value), ts)
        for event_type, count in sorted(counts.items()):
            row.set_cell(schema.COUNTS_FAMILY, event_type.encode(), schema.encode_int(count), ts)
        for name, total in sorted(totals.items()):
            row.set_cell(schema.VALUES_FAMILY, name.encode(), schema.encode_double(total), ts)
        for (kind, name), value in sorted(fields.items()):
            _set_typed(row, "x", kind, name, value, ts)
        out.append(row)
        written.append((item.tenant_id, item.entity_id))
    write_rows(target, schema.ENTITY_PROFILES_TABLE, out)
    return written


def _field_value(cells: dict[str, dict[bytes, list[Any]]], name: str) -> float | None:
    """A numeric field of an enriched row: an attribute (d, i) or an added field (xd, xi)."""
    qualifier = name.encode()
    for family, decode in (
        ("d", schema.decode_double),
        ("i", schema.decode_int),
        ("xd", schema.decode_double),
        ("xi", schema.decode_int),
    ):
        versions = cells.get(family, {}).get(qualifier)
        if versions:
            return float(decode(versions[0].value))
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
    start_key, end_key = schema.event_key_range(
        tenant_id, entity_id, day_start, day_start + DAY_MICROS
    )
    rows = table(target, schema.ENRICHED_EVENTS_TABLE).read_rows(
        start_key=start_key, end_key=end_key
    )
    buckets: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        meta = {q: v[0].value for q, v in row.cells.get(schema.META_FAMILY, {}).items()}
        event_time = schema.decode_int(meta[b"event_time"])
        event_type = meta[b"event_type"].decode()
        values = {name: _field_value(row.cells, name) for name in metric_fields}
        for granularity, size in GRANULARITIES.items():
            bucket = buckets.setdefault(
                (granularity, event_time // size * size),
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
