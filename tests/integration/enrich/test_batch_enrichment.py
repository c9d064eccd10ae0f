"""Batch enrichment on real Spark and the emulator, checked against an independent
plain-Python computation over the same generated data."""

from __future__ import annotations

from typing import Any

import pytest
from enrich.adapters.spark.session import JobCancelled
from enrich.adapters.spark_engine import SparkEngine
from enrich.adapters.spec_codec import spec_from_proto
from enrich.domain.spec import validate_spec
from enrich.domain.work import BatchWork
from eventpipe.core.storage.attributes import decode_double, decode_int
from eventpipe.core.storage.keys import row_key_for_event
from eventpipe.core.storage.rows import enriched_fields_from_cells, event_from_cells, latest_cells
from eventpipe.core.storage.tables import (
    DIMENSIONS_TABLE,
    ENRICHED_EVENTS_TABLE,
    ENTITY_METRICS_TABLE,
    ENTITY_PROFILES_TABLE,
    RAW_EVENTS_TABLE,
)
from eventpipe.core.storage.times import micros
from google.cloud.bigtable.table import Table

from tests.integration.enrich import dataset
from tests.integration.enrich.dataset import BASE, DAY, HOUR, DimVersion

Dump = dict[bytes, dict[tuple[str, bytes], bytes]]


def dump(table: Table) -> Dump:
    return {bytes(row.row_key): latest_cells(row) for row in table.read_rows()}


def run(engine: SparkEngine, tenant: str, start: int, end: int, version: int = 1) -> Any:
    spec = validate_spec(spec_from_proto(dataset.test_spec()), version=version)
    changed: list[tuple[str, str]] = []
    engine.on_entities_changed = changed.extend
    counters = engine.run_batch(BatchWork("job-test", tenant, spec, start, end))
    return counters, changed


def decoded_enriched(cells: dict[tuple[str, bytes], bytes]) -> dict[str, Any]:
    fields = {
        name: getattr(value, value.WhichOneof("kind"))
        for name, value in enriched_fields_from_cells(cells).items()
    }
    return {"unmatched": cells[("m", b"unmatched")].decode(), "fields": fields}


@pytest.fixture
def loaded(tables: dict[str, Table], isolation: Any) -> dataset.Dataset:
    data = dataset.generate(isolation.tenant_id)
    dataset.write_events(tables[RAW_EVENTS_TABLE], data.events)
    for name, versions in data.dims.items():
        dataset.write_dimension(tables[DIMENSIONS_TABLE], isolation.tenant_id, name, versions)
    return data


def test_batch_job_output_matches_an_independent_python_computation(
    engine: SparkEngine, tables: dict[str, Table], loaded: dataset.Dataset
) -> None:
    counters, changed = run(engine, loaded.tenant_id, BASE, BASE + 2 * DAY)

    expected = dataset.expected_enriched(loaded)
    enriched = dump(tables[ENRICHED_EVENTS_TABLE])
    assert set(enriched) == set(expected)
    for key, want in expected.items():
        got = decoded_enriched(enriched[key])
        assert got["unmatched"] == want["unmatched"], key
        assert got["fields"] == pytest.approx(want["fields"]), key
        assert decode_int(enriched[key][("m", b"spec_version")]) == 1
    assert event_from_cells(next(iter(enriched.values()))).tenant_id == loaded.tenant_id

    unmatched = sum(1 for row in expected.values() if row["unmatched"])
    assert (counters.read, counters.unmatched, counters.enriched) == (
        len(loaded.events),
        unmatched,
        len(loaded.events) - unmatched,
    )
    assert 0 < unmatched < len(loaded.events)

    metrics = dump(tables[ENTITY_METRICS_TABLE])
    want_metrics = dataset.expected_metrics(loaded)
    assert set(metrics) == set(want_metrics)
    for key, want in want_metrics.items():
        cells = metrics[key]
        counts = {q.decode(): decode_int(v) for (f, q), v in cells.items() if f == "c"}
        values = {
            q.decode(): (decode_int(v) if q.endswith(b".count") else decode_double(v))
            for (f, q), v in cells.items()
            if f == "v"
        }
        assert counts == want["c"], key
        assert values == pytest.approx(want["v"]), key

    profiles = dump(tables[ENTITY_PROFILES_TABLE])
    want_profiles = dataset.expected_profiles(loaded)
    assert set(profiles) == set(want_profiles)
    for key, want in want_profiles.items():
        cells = profiles[key]
        assert decode_int(cells[("m", b"first_seen")]) == want["first_seen"]
        assert decode_int(cells[("m", b"last_seen")]) == want["last_seen"]
        assert decode_int(cells[("m", b"event_count")]) == want["event_count"]
        counts = {q.decode(): decode_int(v) for (f, q), v in cells.items() if f == "c"}
        assert counts == want["c"]
        totals = {q.decode(): decode_double(v) for (f, q), v in cells.items() if f == "v"}
        assert totals == pytest.approx(want["v"])
        fields = {
            name: getattr(value, value.WhichOneof("kind"))
            for name, value in enriched_fields_from_cells(cells).items()
        }
        assert fields == pytest.approx(want["x"])
    assert sorted(changed) == sorted({(loaded.tenant_id, e.entity_id) for e in loaded.events})


def _without_update_time(rows: Dump) -> Dump:
    return {
        k: {c: v for c, v in cells.items() if c != ("m", b"update_time")}
        for k, cells in rows.items()
    }


def test_re_running_a_batch_job_changes_no_row(
    engine: SparkEngine, tables: dict[str, Table], loaded: dataset.Dataset
) -> None:
    outputs = (
        ENRICHED_EVENTS_TABLE,
        ENTITY_METRICS_TABLE,
        ENTITY_PROFILES_TABLE,
    )
    run(engine, loaded.tenant_id, BASE, BASE + 2 * DAY)
    first = {name: _without_update_time(dump(tables[name])) for name in outputs}

    # A window that cuts through day buckets must still leave whole-day aggregates exact.
    run(engine, loaded.tenant_id, BASE + 5 * HOUR, BASE + 30 * HOUR)
    run(engine, loaded.tenant_id, BASE, BASE + 2 * DAY)

    second = {name: _without_update_time(dump(tables[name])) for name in outputs}
    assert second == first


def test_a_dimension_change_then_re_enrichment_rewrites_exactly_the_affected_rows(
    engine: SparkEngine, tables: dict[str, Table], loaded: dataset.Dataset
) -> None:
    run(engine, loaded.tenant_id, BASE, BASE + 2 * DAY)
    before = dump(tables[ENRICHED_EVENTS_TABLE])

    change = DimVersion("p1", BASE + DAY + 6 * HOUR, {"price": 99.0, "category": "c1"})
    dataset.write_dimension(tables[DIMENSIONS_TABLE], loaded.tenant_id, "products", [change])
    loaded.dims["products"].append(change)
    run(engine, loaded.tenant_id, BASE, BASE + 2 * DAY)
    after = dump(tables[ENRICHED_EVENTS_TABLE])

    changed_rows = {key for key in after if after[key] != before[key]}
    affected = {
        row_key_for_event(loaded.tenant_id, e.entity_id, micros(e.event_time), e.event_id)
        for e in loaded.events
        if e.attributes["product_id"].string_value == "p1"
        and micros(e.event_time) >= change.valid_from
    }
    assert affected
    assert changed_rows == affected
    for key in affected:
        assert decoded_enriched(after[key])["fields"]["products.price"] == 99.0


def test_cancelling_a_running_batch_stops_it_before_it_writes(
    engine: SparkEngine, tables: dict[str, Table], loaded: dataset.Dataset
) -> None:
    spec = validate_spec(spec_from_proto(dataset.test_spec()), version=1)
    request = BatchWork("job-cancel", loaded.tenant_id, spec, BASE, BASE + 2 * DAY)

    def cancel_after_the_first_stage(_progress: float, _counters: Any) -> None:
        request.cancelled.cancel()
        engine.cancel(request.job_id)

    request.on_progress = cancel_after_the_first_stage
    with pytest.raises(JobCancelled):
        engine.run_batch(request)
    assert dump(tables[ENRICHED_EVENTS_TABLE]) == {}
