"""Streaming enrichment honours erased entities as the store consumer does
(``eventpipe.core.storage.erasures``): an event of an erased entity at or before its erasure
is never enriched, aggregated or profiled, whether the tombstone was there before the
micro-batch or was written while it ran; the entity's later activity and every other entity
are enriched as usual. Real Kafka, Bigtable emulator and Spark."""

from __future__ import annotations

from typing import Any

import pytest
from enrich.adapters import bigtable_io
from enrich.adapters.spark.layout import EVENT_SCHEMA, event_tuple
from enrich.adapters.spark.transforms import enrich_frame
from enrich.adapters.spark.writes import write_micro_batch
from enrich.adapters.spark_engine import SparkEngine
from enrich.adapters.spec_codec import spec_from_proto
from enrich.domain.spec import validate_spec
from eventpipe.core import bigtable as core_bigtable
from eventpipe.core.storage.attributes import decode_int
from eventpipe.core.storage.erasures import erasure_row
from eventpipe.core.storage.keys import row_key_for_event, row_key_for_profile
from eventpipe.core.storage.tables import (
    ENRICHED_EVENTS_TABLE,
    ENTITY_METRICS_TABLE,
    ENTITY_PROFILES_TABLE,
    ERASURES_TABLE,
)
from eventpipe.core.storage.times import cell_time, micros
from eventpipe.core.waiting import wait_until
from google.cloud.bigtable.row import DirectRow
from google.cloud.bigtable.table import Table

from tests.integration.enrich import dataset
from tests.integration.enrich.conftest import (
    produce_events,
    recent,
    start_test_stream,
    write_dimensions,
)
from tests.integration.enrich.test_batch_enrichment import dump

ERASED = "e1"


def write_tombstone(common_settings: Any, tenant_id: str, entity_id: str, at: int) -> None:
    stored = erasure_row(tenant_id, entity_id, at)
    row = DirectRow(stored.key)
    for (family, qualifier), value in stored.cells.items():
        row.set_cell(family, qualifier, value, cell_time(stored.timestamp_micros))
    table = core_bigtable.table(common_settings, ERASURES_TABLE)
    assert all(status.code == 0 for status in table.mutate_rows([row]))


def split_at_erasure(data: dataset.Dataset) -> tuple[int, list[Any], list[Any]]:
    """The erasure time (the middle of the erased entity's events), its covered events, and
    every event that stays (the entity's later ones included)."""
    times = sorted(micros(e.event_time) for e in data.events if e.entity_id == ERASED)
    assert len(times) >= 2, "the dataset needs two events of the erased entity"
    erased_at = times[len(times) // 2 - 1]
    covered = [
        e for e in data.events if e.entity_id == ERASED and micros(e.event_time) <= erased_at
    ]
    kept = [e for e in data.events if e not in covered]
    return erased_at, covered, kept


def stored_keys(table: Table) -> set[bytes]:
    return set(dump(table))


def expected_keys(data: dataset.Dataset, events: list[Any]) -> set[bytes]:
    subset = dataset.Dataset(data.tenant_id, list(events), data.dims)
    return set(dataset.expected_enriched(subset))


def test_a_stream_never_enriches_an_erased_entitys_events_from_before_its_erasure(
    engine: SparkEngine,
    tables: dict[str, Table],
    common_settings: Any,
    isolation: Any,
    tmp_path: Any,
) -> None:
    data = recent(dataset.generate(isolation.tenant_id, events=40, seed=11))
    write_dimensions(tables, data)
    erased_at, covered, kept = split_at_erasure(data)
    write_tombstone(common_settings, isolation.tenant_id, ERASED, erased_at)
    batches: list[Any] = []
    handle = start_test_stream(
        engine, common_settings, isolation.tenant_id, tmp_path / "checkpoint", batches.append
    )
    try:
        wait_until(handle.started, timeout=180, what="first micro-batch")
        produce_events(common_settings, data.events)  # a replay: the covered ones come back
        wait_until(
            lambda: stored_keys(tables[ENRICHED_EVENTS_TABLE]) == expected_keys(data, kept),
            timeout=120,
            what="the kept events enriched",
        )
        wait_until(
            lambda: sum(b.read for b in batches) == len(kept),
            timeout=60,
            what="the micro-batches finished",
        )
    finally:
        handle.stop()

    assert sum(b.read for b in batches) == len(kept)  # covered events are not read
    enriched = stored_keys(tables[ENRICHED_EVENTS_TABLE])
    for event in covered:
        key = row_key_for_event(
            event.tenant_id, event.entity_id, micros(event.event_time), event.event_id
        )
        assert key not in enriched
    # The entity's buckets and profile hold its later activity only.
    later = [e for e in kept if e.entity_id == ERASED]
    assert later, "the dataset needs an event of the erased entity after its erasure"
    profile = dump(tables[ENTITY_PROFILES_TABLE])[row_key_for_profile(isolation.tenant_id, ERASED)]
    assert decode_int(profile[("m", b"event_count")]) == len(later)
    assert decode_int(profile[("m", b"first_seen")]) > erased_at


def test_a_tombstone_written_while_a_micro_batch_writes_undoes_what_it_covers(
    engine: SparkEngine,
    tables: dict[str, Table],
    common_settings: Any,
    isolation: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DeleteEntity writes its tombstone between the batch's first read of the tombstones and
    its writes: the read after the writes finds it and removes what it covers."""
    data = recent(dataset.generate(isolation.tenant_id, events=40, seed=11))
    write_dimensions(tables, data)
    erased_at, covered, kept = split_at_erasure(data)
    spec = validate_spec(spec_from_proto(dataset.test_spec()), version=1)
    spark = engine.spark
    events = spark.createDataFrame([event_tuple(e) for e in data.events], EVENT_SCHEMA)
    dims, broadcast = engine.read_dimensions(isolation.tenant_id, spec)
    rows = [row.asDict() for row in enrich_frame(events, dims, spec, broadcast).collect()]

    real_read = bigtable_io.read_erasures
    reads: list[int] = []

    def erased_meanwhile(target: Any, entities: Any) -> dict[tuple[str, str], int]:
        found = real_read(target, entities)
        reads.append(len(found))
        if len(reads) == 1:  # after the batch's first read, before its writes
            write_tombstone(common_settings, isolation.tenant_id, ERASED, erased_at)
        return found

    monkeypatch.setattr(bigtable_io, "read_erasures", erased_meanwhile)
    results = list(write_micro_batch(rows, engine.target, spec))

    assert reads == [0, 1]
    assert sum(r["n"] for r in results if r["kind"] == "read") == len(kept)
    assert stored_keys(tables[ENRICHED_EVENTS_TABLE]) == expected_keys(data, kept)
    later = [e for e in kept if e.entity_id == ERASED]
    want_metrics = dataset.expected_metrics(dataset.Dataset(data.tenant_id, kept, data.dims))
    assert stored_keys(tables[ENTITY_METRICS_TABLE]) == set(want_metrics)
    profiles = dump(tables[ENTITY_PROFILES_TABLE])
    profile = profiles[row_key_for_profile(isolation.tenant_id, ERASED)]
    assert decode_int(profile[("m", b"event_count")]) == len(later)
    assert covered
