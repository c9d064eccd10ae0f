"""Batch jobs on the engine's session: the driver side of ``SparkEngine.run_batch`` (enrich
and write the window's events, recompute the day aggregates of the days it touches, refresh
the profiles of the entities it saw), checked for cancellation between steps."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from eventpipe.core.storage.tables import ENRICHED_EVENTS_TABLE, ENTITY_METRICS_TABLE
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from enrich.adapters import bigtable_io
from enrich.adapters.bigtable_io import ProfileInput
from enrich.adapters.spark.layout import (
    ATTRIBUTE_MAPS,
    NON_FINITE_DDL,
    arrow_rows,
    bucket_aggregate,
    count_tasks_non_finite,
    joined_fields,
    output_record,
    task_non_finite_columns,
)
from enrich.adapters.spark.session import JobCancelled, tenant_pool
from enrich.adapters.spark.transforms import aggregate_frame, enrich_frame
from enrich.adapters.spark.writes import refresh_profiles_in_batches
from enrich.domain.spec import CheckedSpec
from enrich.domain.work import BatchWork, Counters

if TYPE_CHECKING:
    from enrich.adapters.spark_engine import SparkEngine

log = logging.getLogger(__name__)


def batch_in_driver(engine: SparkEngine, request: BatchWork) -> Counters:
    """A batch job's driver side, under its job group and its tenant's FAIR pool: enrich and
    write the window's events, recompute the day aggregates, refresh the profiles."""
    spark = engine.spark
    sc = spark.sparkContext
    sc.setJobGroup(request.job_id, f"enrich {request.tenant_id}", interruptOnCancel=True)
    # One FAIR pool per tenant: tenants share the executors equally, whatever their count
    # of jobs and streams.
    sc.setLocalProperty("spark.scheduler.pool", tenant_pool(request.tenant_id))
    counters = Counters()
    cached: list[DataFrame] = []
    try:
        return _run_batch(engine, request, counters, cached)
    finally:
        for frame in cached:
            try:
                frame.unpersist()
            except Exception:  # a cancelled or broken session
                log.debug("could not unpersist", exc_info=True)
        sc.setLocalProperty("spark.scheduler.pool", None)  # type: ignore[arg-type]


def _check(request: BatchWork) -> None:
    """The cancellation token, checked between steps of the driver side."""
    if request.cancelled.is_set():
        raise JobCancelled(request.job_id)


def _run_batch(
    engine: SparkEngine, request: BatchWork, counters: Counters, cached: list[DataFrame]
) -> Counters:
    spec = request.spec
    target = engine.target
    # Aggregates are recomputed for whole day buckets, so read whole days.
    agg_start = request.start_micros // bigtable_io.DAY_MICROS * bigtable_io.DAY_MICROS
    agg_end = -(-request.end_micros // bigtable_io.DAY_MICROS) * bigtable_io.DAY_MICROS
    _check(request)
    events = engine.read_events(request.tenant_id, agg_start, agg_end)
    dimensions, broadcast = engine.read_dimensions(request.tenant_id, spec)
    cached.extend(dimensions.values())
    request.on_progress(0.1, counters)
    _check(request)
    frame = enrich_frame(events, dimensions, spec, broadcast).persist()
    cached.append(frame)
    in_window = frame.filter(
        (F.col("event_time") >= request.start_micros) & (F.col("event_time") < request.end_micros)
    )
    spec_version = spec.version

    def write_enriched(batches: Iterable[Any]) -> Iterator[Any]:
        import pyarrow as pa

        counts = {"read": 0, "unmatched": 0}
        bigtable_io.take_non_finite_counts()  # a reused worker: drop a failed task's tally

        def rows() -> Iterator[Any]:
            for values in arrow_rows(batches):
                record = output_record(values, spec)
                counts["read"] += 1
                counts["unmatched"] += bool(record["unmatched"])
                yield bigtable_io.enriched_row(record, spec_version)

        bigtable_io.write_rows(target, ENRICHED_EVENTS_TABLE, rows())
        yield pa.RecordBatch.from_pydict(
            {**{k: [v] for k, v in counts.items()}, **task_non_finite_columns()}
        )

    totals = in_window.mapInArrow(
        write_enriched, f"read long, unmatched long, {NON_FINITE_DDL}"
    ).collect()
    count_tasks_non_finite(totals)
    counters.read = sum(int(t["read"]) for t in totals)
    counters.unmatched = sum(int(t["unmatched"]) for t in totals)
    counters.enriched = counters.read - counters.unmatched
    request.on_progress(0.6, counters)
    _check(request)

    metric_fields = spec.metric_fields

    def write_metrics(batches: Iterable[Any]) -> Iterator[Any]:
        import pyarrow as pa

        bigtable_io.take_non_finite_counts()
        written = bigtable_io.write_rows(
            target,
            ENTITY_METRICS_TABLE,
            (
                bigtable_io.metric_row(bucket_aggregate(row, metric_fields))
                for row in arrow_rows(batches)
            ),
        )
        yield pa.RecordBatch.from_pydict({"written": [written], **task_non_finite_columns()})

    count_tasks_non_finite(
        aggregate_frame(frame, spec)
        .mapInArrow(write_metrics, f"written long, {NON_FINITE_DDL}")
        .collect()
    )
    request.on_progress(0.8, counters)
    _check(request)

    changed = _write_profiles(engine, in_window, spec)
    engine.on_entities_changed(changed)
    request.on_progress(1.0, counters)
    return counters


def _write_profiles(
    engine: SparkEngine, in_window: DataFrame, spec: CheckedSpec
) -> list[tuple[str, str]]:
    """Refreshes the profile of every entity with an event in the window."""
    target = engine.target
    join_columns = [
        F.col(f"j{n}_{kind}") for n in range(len(spec.joins)) for kind, _ in ATTRIBUTE_MAPS
    ] + [F.col(f"j{n}_m") for n in range(len(spec.joins))]
    newest = in_window.groupBy("tenant_id", "entity_id").agg(
        F.max_by(
            F.struct(F.col("event_time"), *join_columns),
            F.struct(F.col("event_time"), F.col("event_id")),
        ).alias("newest")
    )
    update_time = time.time_ns() // 1000

    def refresh(rows: Iterable[Any]) -> Iterator[tuple[str, str, int]]:
        bigtable_io.take_non_finite_counts()
        inputs = []
        for row in rows:
            newest_values = row["newest"].asDict()
            fields, _unmatched = joined_fields(newest_values, spec)
            inputs.append(
                ProfileInput(
                    row["tenant_id"], row["entity_id"], newest_values["event_time"], fields
                )
            )
        for tenant_id, entity_id in refresh_profiles_in_batches(target, inputs, update_time):
            yield tenant_id, entity_id, 0
        # The tally rides along as ("", where, count) rows: no tenant id is empty.
        for where, count in bigtable_io.take_non_finite_counts().items():
            yield "", where, count

    results = newest.rdd.mapPartitions(refresh).collect()
    non_finite: Counter[str] = Counter()
    for tenant_id, name, count in results:
        if not tenant_id:
            non_finite[name] += count
    bigtable_io.count_non_finite(non_finite)
    return [(tenant_id, entity_id) for tenant_id, entity_id, _ in results if tenant_id]
