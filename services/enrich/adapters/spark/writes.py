"""What write tasks do inside Spark: the profile refresh in mutation batches, and one
streaming micro-batch partition's writes (enriched rows, touched buckets, touched profiles)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from eventpipe.core.storage.tables import ENRICHED_EVENTS_TABLE, ENTITY_METRICS_TABLE
from pyspark.sql import types as T

from enrich.adapters import bigtable_io
from enrich.adapters.bigtable_io import BigtableTarget, ProfileInput
from enrich.adapters.spark.layout import output_record
from enrich.domain.spec import CheckedSpec

log = logging.getLogger(__name__)


def refresh_profiles_in_batches(
    target: BigtableTarget, inputs: list[ProfileInput], update_time: int
) -> Iterator[tuple[str, str]]:
    for start in range(0, len(inputs), bigtable_io.MUTATION_BATCH):
        yield from bigtable_io.refresh_profiles(
            target, inputs[start : start + bigtable_io.MUTATION_BATCH], update_time
        )


def write_micro_batch(
    rows: Iterable[dict[str, Any]], target: BigtableTarget, spec: CheckedSpec
) -> Iterator[dict[str, Any]]:
    """Everything one micro-batch partition writes, in one pass: its enriched rows, then the
    hour/day buckets they touch (recomputed from the stored enriched rows, so a re-delivered
    event is not counted twice), then the touched entities' profiles.

    Every event of an entity must be in this partition (_by_entity sees to it), or
    two tasks could recompute one bucket from different states. Yields result rows: kind
    "read" and "unmatched" with n, kind "entity" per profile written, and kind "non_finite"
    with ``where`` and n: the task's tally of non-finite values (bigtable_io).
    """
    bigtable_io.take_non_finite_counts()  # a reused worker: drop a failed task's tally
    records = [output_record(row, spec) for row in rows]
    if not records:
        return
    bigtable_io.write_rows(
        target,
        ENRICHED_EVENTS_TABLE,
        (bigtable_io.enriched_row(record, spec.version) for record in records),
    )
    days = sorted(
        {
            (r["tenant_id"], r["entity_id"], r["event_time"] // bigtable_io.DAY_MICROS)
            for r in records
        }
    )
    bigtable_io.write_rows(
        target,
        ENTITY_METRICS_TABLE,
        (
            bigtable_io.metric_row(aggregate)
            for tenant_id, entity_id, day in days
            for aggregate in bigtable_io.aggregates_from_enriched(
                target, tenant_id, entity_id, day * bigtable_io.DAY_MICROS, spec.metric_fields
            )
        ),
    )
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        entity = (record["tenant_id"], record["entity_id"])
        current = newest.get(entity)
        if current is None or (record["event_time"], record["event_id"]) > (
            current["event_time"],
            current["event_id"],
        ):
            newest[entity] = record
    inputs = [
        ProfileInput(tenant_id, entity_id, record["event_time"], record["joined"])
        for (tenant_id, entity_id), record in sorted(newest.items())
    ]
    yield {"kind": "read", "n": len(records)}
    yield {"kind": "unmatched", "n": sum(1 for record in records if record["unmatched"])}
    for tenant_id, entity_id in refresh_profiles_in_batches(target, inputs, time.time_ns() // 1000):
        yield {"kind": "entity", "tenant_id": tenant_id, "entity_id": entity_id}
    for where, count in bigtable_io.take_non_finite_counts().items():
        yield {"kind": "non_finite", "where": where, "n": count}


MICRO_BATCH_RESULT = T.StructType(
    [
        T.StructField("kind", T.StringType()),
        T.StructField("n", T.LongType()),
        T.StructField("tenant_id", T.StringType()),
        T.StructField("entity_id", T.StringType()),
        T.StructField("where", T.StringType()),
    ]
)
"""The rows write_micro_batch yields, as the schema of its mapInArrow."""
