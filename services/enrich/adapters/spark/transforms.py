"""Pure DataFrame transforms: dimension versions, the as-of joins, derived fields and metric
fields (``enrich_frame``), and the hour/day aggregates (``aggregate_frame``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from enrich.adapters import bigtable_io
from enrich.adapters.spark.layout import ATTRIBUTE_MAPS
from enrich.adapters.spark_expressions import (
    ValueColumns,
    compile_expression,
    null_double,
)
from enrich.domain.spec import CheckedSpec

log = logging.getLogger(__name__)


def numeric_view(maps_prefix: str, name: str) -> Column:
    return F.coalesce(F.col(f"{maps_prefix}d")[name], F.col(f"{maps_prefix}i")[name].cast("double"))


def join_key_column(key_attribute: str | None) -> Column:
    if key_attribute is None:
        return F.col("entity_id")
    return F.coalesce(F.col("s")[key_attribute], F.col("i")[key_attribute].cast("string"))


def _key_in(names: list[str]) -> Callable[[Column, Column], Column]:
    """A map_filter predicate keeping the listed keys (pyspark counts lambda parameters)."""

    def keep(key: Column, _value: Column) -> Column:
        return key.isin(names)

    return keep


def versioned(dimension: DataFrame) -> DataFrame:
    """Adds valid_to: the next version's valid_from (null for the current version)."""
    by_key = Window.partitionBy("key").orderBy("valid_from")
    return dimension.withColumn("valid_to", F.lead("valid_from").over(by_key))


def prepared_dimension(dimension: DataFrame, n: int, fields: list[str]) -> DataFrame:
    """The versions of one dimension as join n reads them: key, valid_from, valid_to (the next
    version's valid_from, null for the current one), deleted, and maps of the copied fields,
    every column prefixed j{n}_. Computed once per job (streaming: per dimension refresh)."""
    return versioned(dimension).select(
        F.col("key").alias(f"j{n}_key"),
        F.col("valid_from").alias(f"j{n}_from"),
        F.col("valid_to").alias(f"j{n}_to"),
        F.col("deleted").alias(f"j{n}_deleted"),
        *[
            F.map_filter(F.col(kind), _key_in(fields)).alias(f"j{n}_{kind}")
            for kind, _ in ATTRIBUTE_MAPS
        ],
    )


def enrich_frame(
    events: DataFrame,
    dimensions: dict[str, DataFrame],
    spec: CheckedSpec,
    broadcast: dict[str, bool],
) -> DataFrame:
    """Adds per join n: j{n}_m (matched) and j{n}_s.. maps of the copied fields, as of the
    event's time; and per derived field k: dv{k}_n / dv{k}_s (number / text) and dv{k}_x
    (true where the result was nulled because it was not a finite number).

    ``dimensions`` maps each joined dimension to its prepared_dimension frame."""
    frame = events
    for n, join in enumerate(spec.joins):
        dim = dimensions[join.dimension]
        if broadcast.get(join.dimension):
            dim = F.broadcast(dim)
        condition = (
            (join_key_column(join.key_attribute) == F.col(f"j{n}_key"))
            & (F.col(f"j{n}_from") <= F.col("event_time"))
            & (F.col(f"j{n}_to").isNull() | (F.col("event_time") < F.col(f"j{n}_to")))
        )
        frame = frame.join(dim, condition, "left")
        matched = F.col(f"j{n}_key").isNotNull() & ~F.coalesce(F.col(f"j{n}_deleted"), F.lit(False))
        frame = frame.withColumn(f"j{n}_m", matched)
        for kind, _ in ATTRIBUTE_MAPS:
            frame = frame.withColumn(f"j{n}_{kind}", F.when(matched, F.col(f"j{n}_{kind}")))
        frame = frame.drop(f"j{n}_key", f"j{n}_from", f"j{n}_to", f"j{n}_deleted")

    join_index = {j.dimension: n for n, j in enumerate(spec.joins)}
    derived_index: dict[str, int] = {}

    def resolve(name: str) -> ValueColumns:
        if name in ("entity_id", "event_type"):
            return ValueColumns(null_double(), F.col(name))
        if name in derived_index:
            k = derived_index[name]
            return ValueColumns(F.col(f"dv{k}_n"), F.col(f"dv{k}_s"))
        if "." in name:
            dimension, dim_field = name.split(".", 1)
            prefix = f"j{join_index[dimension]}_"
            return ValueColumns(numeric_view(prefix, dim_field), F.col(f"{prefix}s")[dim_field])
        return ValueColumns(numeric_view("", name), F.col("s")[name])

    for k, derived in enumerate(spec.derived):
        value = compile_expression(derived.ast, resolve)
        frame = (
            frame.withColumn(f"dv{k}_n", value.number)
            .withColumn(f"dv{k}_s", value.text)
            .withColumn(f"dv{k}_x", value.non_finite)
        )
        derived_index[derived.name] = k

    for m, name in enumerate(spec.metric_fields):
        frame = frame.withColumn(f"mf{m}", resolve(name).number)
    return frame


def aggregate_frame(frame: DataFrame, spec: CheckedSpec) -> DataFrame:
    """Per entity and hour / day bucket: event types seen, first/last seen, field stats."""
    frames = []
    for granularity, size in bigtable_io.GRANULARITIES.items():
        bucketed = frame.withColumn(
            "bucket", F.floor(F.col("event_time") / F.lit(size)).cast("long") * F.lit(size)
        )
        stats: list[Column] = []
        for m in range(len(spec.metric_fields)):
            value = F.col(f"mf{m}")
            stats += [
                F.sum(value).alias(f"mf{m}_sum"),
                F.min(value).alias(f"mf{m}_min"),
                F.max(value).alias(f"mf{m}_max"),
                F.count(value).alias(f"mf{m}_count"),
            ]
        frames.append(
            bucketed.groupBy("tenant_id", "entity_id", "bucket")
            .agg(
                F.collect_list("event_type").alias("types"),
                F.min("event_time").alias("first_seen"),
                F.max("event_time").alias("last_seen"),
                *stats,
            )
            .withColumn("granularity", F.lit(granularity))
        )
    return frames[0].unionByName(frames[1])
