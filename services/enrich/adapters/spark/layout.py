"""The row and Arrow layout between Spark and Bigtable: the event and dimension schemas, Arrow
batches to and from dicts, an enriched frame's row as the record bigtable_io writes, bucket
aggregates, decoded raw-topic events as rows, and the non-finite tallies write tasks return."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from eventpipe.core.storage.attributes import ATTRIBUTE_KINDS, KIND_BY_FIELD
from eventpipe.core.storage.keys import row_key_for_event
from eventpipe.core.storage.times import micros
from pyspark.sql import types as T

from enrich.adapters import bigtable_io
from enrich.domain.spec import CheckedSpec

log = logging.getLogger(__name__)


# One map column per attribute kind, named by its family (storage.attributes.ATTRIBUTE_KINDS).
_SPARK_TYPES = {
    "string": T.StringType(),
    "long": T.LongType(),
    "double": T.DoubleType(),
    "boolean": T.BooleanType(),
}
ATTRIBUTE_MAPS = [(kind.family, _SPARK_TYPES[kind.spark_type]) for kind in ATTRIBUTE_KINDS]
EVENT_SCHEMA = T.StructType(
    [
        T.StructField("row_key", T.BinaryType(), False),
        T.StructField("tenant_id", T.StringType(), False),
        T.StructField("entity_id", T.StringType(), False),
        T.StructField("event_id", T.StringType(), False),
        T.StructField("event_type", T.StringType(), False),
        T.StructField("event_time", T.LongType(), False),
        T.StructField("ingest_time", T.LongType(), True),
        *[T.StructField(k, T.MapType(T.StringType(), t), True) for k, t in ATTRIBUTE_MAPS],
    ]
)
DIMENSION_SCHEMA = T.StructType(
    [
        T.StructField("key", T.StringType(), False),
        T.StructField("valid_from", T.LongType(), False),
        T.StructField("deleted", T.BooleanType(), False),
        *[T.StructField(k, T.MapType(T.StringType(), t), True) for k, t in ATTRIBUTE_MAPS],
    ]
)


def map_items(value: Any) -> Iterable[tuple[str, Any]]:
    """The entries of a map column: a dict from a Spark Row, a list of pairs from Arrow."""
    if not value:
        return ()
    return value.items() if isinstance(value, dict) else value  # type: ignore[no-any-return]


def arrow_rows(batches: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """The rows of mapInArrow's record batches as dicts (much cheaper than pickled Rows)."""
    for batch in batches:
        yield from batch.to_pylist()


ARROW_BATCH_ROWS = 10_000


def arrow_batches(
    rows: Iterable[tuple[Any, ...]], spark_schema: T.StructType, size: int = ARROW_BATCH_ROWS
) -> Iterator[Any]:
    """Tuples in the column order of ``spark_schema`` as Arrow record batches (map columns
    from dicts), for mapInArrow: far cheaper for Spark to take than pickled rows."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    arrow_schema = to_arrow_schema(spark_schema)
    chunk: list[tuple[Any, ...]] = []

    def batch() -> Any:
        columns = list(zip(*chunk, strict=True))
        return pa.RecordBatch.from_arrays(
            [pa.array(c, type=f.type) for c, f in zip(columns, arrow_schema, strict=True)],
            schema=arrow_schema,
        )

    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield batch()
            chunk = []
    if chunk:
        yield batch()


def joined_fields(
    values: dict[str, Any], spec: CheckedSpec
) -> tuple[dict[tuple[str, str], Any], list[str]]:
    """The copied dimension fields ((kind, "dimension.field") -> value) of one enrich_frame
    row (or of the newest-event struct), and the dimensions that did not match."""
    joined: dict[tuple[str, str], Any] = {}
    unmatched: list[str] = []
    for n, join in enumerate(spec.joins):
        if not values[f"j{n}_m"]:
            unmatched.append(join.dimension)
            continue
        for kind, _ in ATTRIBUTE_MAPS:
            for name, value in map_items(values[f"j{n}_{kind}"]):
                if value is not None:
                    joined[(kind, f"{join.dimension}.{name}")] = value
    return joined, unmatched


NON_FINITE_COLUMNS = tuple(f"non_finite_{where}" for where in bigtable_io.NON_FINITE_WHERE)
NON_FINITE_DDL = ", ".join(f"{column} long" for column in NON_FINITE_COLUMNS)
"""The columns a write task adds to its one result row: its tally of non-finite values."""


def task_non_finite_columns() -> dict[str, list[int]]:
    """This task's tally (taken and reset, see bigtable_io) as one-row result columns."""
    counts = bigtable_io.take_non_finite_counts()
    return {
        column: [counts.get(where, 0)]
        for column, where in zip(NON_FINITE_COLUMNS, bigtable_io.NON_FINITE_WHERE, strict=True)
    }


def count_tasks_non_finite(results: Iterable[Any]) -> None:
    """Adds the tallies the tasks returned (rows with NON_FINITE_COLUMNS) to the driver's
    ``eventpipe_enrich_non_finite_values_total``: the tasks ran in other processes."""
    totals = dict.fromkeys(bigtable_io.NON_FINITE_WHERE, 0)
    for row in results:
        for column, where in zip(NON_FINITE_COLUMNS, bigtable_io.NON_FINITE_WHERE, strict=True):
            totals[where] += int(row[column] or 0)
    bigtable_io.count_non_finite(totals)


def output_record(row: dict[str, Any], spec: CheckedSpec) -> dict[str, Any]:
    """A row of enrich_frame (as Arrow's to_pylist gives it) as the dict
    bigtable_io.enriched_row writes; ``joined`` holds the copied dimension fields alone (what
    an entity profile keeps)."""
    values = dict(row)
    for kind, _ in ATTRIBUTE_MAPS:
        values[kind] = dict(map_items(values[kind]))
    joined, unmatched = joined_fields(values, spec)
    enriched = dict(joined)
    for k, derived in enumerate(spec.derived):
        number, text = values[f"dv{k}_n"], values[f"dv{k}_s"]
        if number is not None:
            enriched[("d", derived.name)] = number
        elif text is not None:
            enriched[("s", derived.name)] = text
        elif values.get(f"dv{k}_x"):
            bigtable_io.note_non_finite(bigtable_io.DERIVED_FIELD)
    values["joined"] = joined
    values["enriched"] = enriched
    values["unmatched"] = unmatched
    return values


def bucket_aggregate(row: Any, metric_fields: tuple[str, ...]) -> bigtable_io.BucketAggregate:

    values = {}
    for m, name in enumerate(metric_fields):
        count = row[f"mf{m}_count"]
        if count:
            values[name] = (
                float(row[f"mf{m}_sum"]),
                float(row[f"mf{m}_min"]),
                float(row[f"mf{m}_max"]),
                int(count),
            )
    return bigtable_io.BucketAggregate(
        row["tenant_id"],
        row["entity_id"],
        row["granularity"],
        int(row["bucket"]),
        dict(Counter(row["types"])),
        values,
        int(row["first_seen"]),
        int(row["last_seen"]),
    )


def event_tuple(event: Any) -> tuple[Any, ...]:
    """A decoded raw-topic Event as an EVENT_SCHEMA row."""
    maps: dict[str, dict[str, Any]] = {k: {} for k, _ in ATTRIBUTE_MAPS}
    for name, attribute in event.attributes.items():
        kind = KIND_BY_FIELD.get(attribute.WhichOneof("kind") or "")
        if kind is not None:
            maps[kind.family][name] = kind.value_of(attribute)
    event_time = micros(event.event_time)
    return (
        row_key_for_event(event.tenant_id, event.entity_id, event_time, event.event_id),
        event.tenant_id,
        event.entity_id,
        event.event_id,
        event.event_type,
        event_time,
        micros(event.ingest_time),
        *(maps[k] for k, _ in ATTRIBUTE_MAPS),
    )
