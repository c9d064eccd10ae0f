"""What write tasks do inside Spark: the profile refresh in mutation batches, and one
streaming micro-batch partition's writes (enriched rows, touched buckets, touched profiles),
honouring erased entities' tombstones."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from eventpipe.core.storage.erasures import EntityKey, is_erased
from eventpipe.core.storage.keys import row_key_for_profile
from eventpipe.core.storage.tables import (
    ENRICHED_EVENTS_TABLE,
    ENTITY_METRICS_TABLE,
    ENTITY_PROFILES_TABLE,
)
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


def _entity(record: dict[str, Any]) -> EntityKey:
    return record["tenant_id"], record["entity_id"]


def _covered(erasures: dict[EntityKey, int], record: dict[str, Any]) -> bool:
    return is_erased(erasures, *_entity(record), record["event_time"])


def _day_of(record: dict[str, Any]) -> tuple[str, str, int]:
    return (
        record["tenant_id"],
        record["entity_id"],
        record["event_time"] // bigtable_io.DAY_MICROS * bigtable_io.DAY_MICROS,
    )


def _write_metrics(
    target: BigtableTarget, spec: CheckedSpec, days: Iterable[tuple[str, str, int]]
) -> None:
    """Rewrites the hour/day buckets of the given entity days from the stored enriched rows
    (so a re-delivered event is not counted twice)."""
    bigtable_io.write_rows(
        target,
        ENTITY_METRICS_TABLE,
        (
            bigtable_io.metric_row(aggregate)
            for tenant_id, entity_id, day in sorted(set(days))
            for aggregate in bigtable_io.aggregates_from_enriched(
                target, tenant_id, entity_id, day, spec.metric_fields
            )
        ),
    )


def _profile_inputs(records: Iterable[dict[str, Any]]) -> list[ProfileInput]:
    """Each entity's newest event among ``records``, as the profile refresh takes it."""
    newest: dict[EntityKey, dict[str, Any]] = {}
    for record in records:
        current = newest.get(_entity(record))
        if current is None or (record["event_time"], record["event_id"]) > (
            current["event_time"],
            current["event_id"],
        ):
            newest[_entity(record)] = record
    return [
        ProfileInput(tenant_id, entity_id, record["event_time"], record["joined"])
        for (tenant_id, entity_id), record in sorted(newest.items())
    ]


def _undo_erased(
    target: BigtableTarget,
    spec: CheckedSpec,
    written: list[dict[str, Any]],
    erasures: dict[EntityKey, int],
) -> list[dict[str, Any]]:
    """After the writes, a tombstone written meanwhile covers some of them (``DeleteEntity``
    ran its deletion pass before they landed): deletes those enriched rows, rebuilds the
    entities' touched buckets from what is left (dropping emptied buckets) and their profiles
    (deleted first, so a profile with nothing left is not kept). Returns the records that
    stay. Rare: a micro-batch racing an erasure of one of its entities."""
    covered = [record for record in written if _covered(erasures, record)]
    if not covered:
        return written
    hit = {_entity(record) for record in covered}
    bigtable_io.delete_rows(target, ENRICHED_EVENTS_TABLE, [r["row_key"] for r in covered])
    days = {_day_of(record) for record in written if _entity(record) in hit}
    bigtable_io.delete_rows(
        target,
        ENTITY_METRICS_TABLE,
        [key for day in sorted(days) for key in bigtable_io.day_metric_keys(*day)],
    )
    _write_metrics(target, spec, days)
    bigtable_io.delete_rows(
        target, ENTITY_PROFILES_TABLE, [row_key_for_profile(*entity) for entity in sorted(hit)]
    )
    kept = [record for record in written if not _covered(erasures, record)]
    inputs = _profile_inputs(record for record in kept if _entity(record) in hit)
    # An entity with nothing left in this batch: its profile is rebuilt from its day rows
    # (post-erasure activity of earlier batches), without dimension values, or not at all.
    remaining = {(i.tenant_id, i.entity_id) for i in inputs}
    inputs += [ProfileInput(t, e, -1, {}) for t, e in sorted(hit - remaining)]
    list(refresh_profiles_in_batches(target, inputs, time.time_ns() // 1000))
    return kept


def write_micro_batch(
    rows: Iterable[dict[str, Any]], target: BigtableTarget, spec: CheckedSpec
) -> Iterator[dict[str, Any]]:
    """Everything one micro-batch partition writes, in one pass: its enriched rows, then the
    hour/day buckets they touch (recomputed from the stored enriched rows, so a re-delivered
    event is not counted twice), then the touched entities' profiles.

    Erased entities (``storage.erasures``), as the store consumer honours them: before the
    writes, one read of the tombstones of the partition's entities drops every event a
    tombstone covers (never written, not counted in ``read``); after the writes, the same
    read again undoes what a tombstone written meanwhile covers (``_undo_erased``).

    Every event of an entity must be in this partition (_by_entity sees to it), or
    two tasks could recompute one bucket from different states. Yields result rows: kind
    "read" and "unmatched" with n, kind "entity" per profile written, and kind "non_finite"
    with ``where`` and n: the task's tally of non-finite values (bigtable_io).
    """
    bigtable_io.take_non_finite_counts()  # a reused worker: drop a failed task's tally
    records = [output_record(row, spec) for row in rows]
    erasures = bigtable_io.read_erasures(target, {_entity(record) for record in records})
    records = [record for record in records if not _covered(erasures, record)]
    if not records:
        return
    bigtable_io.write_rows(
        target,
        ENRICHED_EVENTS_TABLE,
        (bigtable_io.enriched_row(record, spec.version) for record in records),
    )
    _write_metrics(target, spec, (_day_of(record) for record in records))
    inputs = _profile_inputs(records)
    written = list(refresh_profiles_in_batches(target, inputs, time.time_ns() // 1000))
    erasures = bigtable_io.read_erasures(target, {_entity(record) for record in records})
    kept = _undo_erased(target, spec, records, erasures)
    if len(kept) < len(records):
        gone = {_entity(record) for record in records} - {_entity(record) for record in kept}
        written = [entity for entity in written if entity not in gone]
    yield {"kind": "read", "n": len(kept)}
    yield {"kind": "unmatched", "n": sum(1 for record in kept if record["unmatched"])}
    for tenant_id, entity_id in written:
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
