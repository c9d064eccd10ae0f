"""Finite numbers out, on real Spark and the emulator: events whose double attribute is 1.7e308
overflow derived fields, metric sums and profile totals; what is written holds no Infinity or
NaN (the overflowed values are absent), what the query service would serve neither, and the
enrich service's ``eventpipe_enrich_non_finite_values_total`` counts what its Spark tasks
left out."""

from __future__ import annotations

import math
from typing import Any

import pytest
from enrich.adapters import bigtable_io
from enrich.adapters.bigtable_io import BigtableTarget, ProfileInput
from enrich.adapters.spark_engine import SparkEngine
from enrich.adapters.spec_codec import spec_from_proto
from enrich.domain.spec import validate_spec
from enrich.domain.work import BatchWork
from eventpipe.common.v1 import event_pb2
from eventpipe.core.storage.attributes import decode_double
from eventpipe.core.storage.keys import row_key_for_event, row_key_for_metric, row_key_for_profile
from eventpipe.core.storage.rows import enriched_fields_from_cells, latest_cells
from eventpipe.core.storage.tables import (
    ENRICHED_EVENTS_TABLE,
    ENTITY_METRICS_TABLE,
    ENTITY_PROFILES_TABLE,
    RAW_EVENTS_TABLE,
    VALUES_FAMILY,
)
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.core.waiting import wait_until
from eventpipe.enrich.v1 import enrich_pb2
from eventpipe.stack.probes import free_port
from google.cloud.bigtable.table import Table
from google.protobuf import json_format
from query import decode

from tests.helpers.http import metric_values
from tests.integration.enrich import dataset
from tests.integration.enrich.dataset import BASE, DAY, HOUR

pytestmark = [pytest.mark.abuse]

BIG = 1.7e308
DOUBLE_FAMILIES = ("d", "xd", VALUES_FAMILY)


def event(tenant_id: str, n: int, entity: str, time: int, amount: float) -> event_pb2.Event:
    result = event_pb2.Event(
        tenant_id=tenant_id,
        event_id=f"ev{n}",
        event_type="buy",
        entity_id=entity,
        attributes={"amount": event_pb2.AttributeValue(double_value=amount)},
    )
    result.event_time.CopyFrom(timestamp_from_micros(time))
    result.ingest_time.CopyFrom(timestamp_from_micros(time + 1000))
    return result


def overflow_spec() -> enrich_pb2.EnrichmentSpec:
    return enrich_pb2.EnrichmentSpec(
        derived_fields=[
            enrich_pb2.DerivedField(name="twice", expression="amount * 2"),
            enrich_pb2.DerivedField(name="doubled", expression="amount + amount"),
            enrich_pb2.DerivedField(name="label", expression="'a' + amount * 10"),
            enrich_pb2.DerivedField(name="half", expression="amount / 2"),
        ],
        metric_fields=["amount", "half"],
    )


def dump(table: Table) -> dict[bytes, dict[tuple[str, bytes], bytes]]:
    return {bytes(row.row_key): latest_cells(row) for row in table.read_rows()}


def doubles(cells: dict[tuple[str, bytes], bytes]) -> dict[str, float]:
    return {
        f"{family}:{qualifier.decode()}": decode_double(raw)
        for (family, qualifier), raw in cells.items()
        if family in DOUBLE_FAMILIES and not qualifier.endswith(b".count")
    }


def overflow_events(tenant: str) -> list[event_pb2.Event]:
    """e1: two 1.7e308 in one day; e2: one 1.7e308 on each of two days; e3: 1.0."""
    return [
        event(tenant, 1, "e1", BASE, BIG),
        event(tenant, 2, "e1", BASE + HOUR, BIG),
        event(tenant, 3, "e2", BASE, BIG),
        event(tenant, 4, "e2", BASE + DAY, BIG),
        event(tenant, 5, "e3", BASE, 1.0),
    ]


@pytest.fixture
def overflowed(
    engine: SparkEngine, tables: dict[str, Table], isolation: Any
) -> dict[str, dict[bytes, dict[tuple[str, bytes], bytes]]]:
    """e1: two 1.7e308 in one day (its day sum overflows, each hour's does not); e2: one
    1.7e308 on each of two days (each day is finite, the profile total overflows); e3: 1.0."""
    tenant = isolation.tenant_id
    events = overflow_events(tenant)
    dataset.write_events(tables[RAW_EVENTS_TABLE], events)
    spec = validate_spec(spec_from_proto(overflow_spec()), version=1)
    counters = engine.run_batch(BatchWork("job-overflow", tenant, spec, BASE, BASE + 2 * DAY))
    assert counters.read == len(events)
    return {
        name: dump(tables[name])
        for name in (
            ENRICHED_EVENTS_TABLE,
            ENTITY_METRICS_TABLE,
            ENTITY_PROFILES_TABLE,
        )
    }


def test_no_written_double_is_infinite_or_nan_and_overflowed_values_are_absent(
    overflowed: dict[str, dict[bytes, dict[tuple[str, bytes], bytes]]], isolation: Any
) -> None:
    tenant = isolation.tenant_id
    for table in overflowed.values():
        for key, cells in table.items():
            assert all(math.isfinite(v) for v in doubles(cells).values()), (key, doubles(cells))

    enriched = overflowed[ENRICHED_EVENTS_TABLE]
    big = enriched[row_key_for_event(tenant, "e1", BASE, "ev1")]
    fields = enriched_fields_from_cells(big)
    assert set(fields) == {"half"}
    assert fields["half"].double_value == BIG / 2
    assert decode_double(big[("d", b"amount")]) == BIG
    small = enriched_fields_from_cells(enriched[row_key_for_event(tenant, "e3", BASE, "ev5")])
    assert {name: getattr(v, v.WhichOneof("kind")) for name, v in small.items()} == {
        "twice": 2.0,
        "doubled": 2.0,
        "label": "a10",
        "half": 0.5,
    }

    metrics = overflowed[ENTITY_METRICS_TABLE]
    day = doubles(metrics[row_key_for_metric(tenant, "e1", "d", BASE)])
    assert "v:amount.sum" not in day
    assert (day["v:amount.min"], day["v:amount.max"], day["v:half.sum"]) == (BIG, BIG, BIG)
    hour = doubles(metrics[row_key_for_metric(tenant, "e1", "h", BASE)])
    assert hour["v:amount.sum"] == BIG

    profiles = overflowed[ENTITY_PROFILES_TABLE]
    totals = {
        entity: doubles(profiles[row_key_for_profile(tenant, entity)])
        for entity in ("e1", "e2", "e3")
    }
    assert totals == {
        "e1": {"v:half": BIG},  # one day, its amount sum absent
        "e2": {"v:half": BIG},  # two finite days, their total not finite
        "e3": {"v:amount": 1.0, "v:half": 0.5},
    }


def test_what_the_query_service_serves_from_these_rows_is_json_without_infinity_or_nan(
    overflowed: dict[str, dict[bytes, dict[tuple[str, bytes], bytes]]], isolation: Any
) -> None:
    served = []
    for cells in overflowed[ENTITY_PROFILES_TABLE].values():
        served.append(decode.profile_from_cells(isolation.tenant_id, "e", cells))
    for key, cells in overflowed[ENTITY_METRICS_TABLE].items():
        bucket = decode.metric_bucket_from_cells(key, cells, ())
        assert bucket is not None
        served.append(bucket)
    for cells in overflowed[ENRICHED_EVENTS_TABLE].values():
        served.append(decode.entity_event_from_cells(cells, enriched=True))
    assert len(served) > 10
    for message in served:
        text = json_format.MessageToJson(message)
        assert "Infinity" not in text and "NaN" not in text, text


def test_streaming_recomputation_and_profile_refresh_leave_out_and_count_the_overflow(
    overflowed: dict[str, dict[bytes, dict[tuple[str, bytes], bytes]]],
    target: BigtableTarget,
    isolation: Any,
) -> None:
    # What a streaming micro-batch runs (in a Spark worker there; in this process here, so
    # that the tally can be read).
    bigtable_io.take_non_finite_counts()
    aggregates = bigtable_io.aggregates_from_enriched(
        target, isolation.tenant_id, "e1", BASE, ("amount", "half")
    )
    rows = [bigtable_io.metric_row(aggregate) for aggregate in aggregates]
    day_key = row_key_for_metric(isolation.tenant_id, "e1", "d", BASE)
    day = next(row for row in rows if row.key == day_key)
    assert all(math.isfinite(v) for v in doubles(day.cells).values())
    assert "v:amount.sum" not in doubles(day.cells)
    assert bigtable_io.take_non_finite_counts() == {bigtable_io.METRIC: 1}

    written = bigtable_io.refresh_profiles(
        target, [ProfileInput(isolation.tenant_id, "e2", BASE + DAY, {})], update_time=BASE
    )
    assert written == [(isolation.tenant_id, "e2")]
    assert bigtable_io.take_non_finite_counts() == {bigtable_io.PROFILE_TOTAL: 1}


def non_finite_counted(metrics_port: int) -> dict[str, float]:
    values = metric_values(metrics_port)
    return {
        where: values.get(f'eventpipe_enrich_non_finite_values_total{{where="{where}"}}', 0.0)
        for where in bigtable_io.NON_FINITE_WHERE
    }


def test_the_enrich_service_counts_what_its_spark_tasks_left_out_in_its_own_metrics(
    start_enrich: Any, tables: dict[str, Table], isolation: Any
) -> None:
    metrics_port = free_port()
    _service, stub = start_enrich(EVENTPIPE_ENRICH_METRICS_PORT=str(metrics_port))
    tenant = isolation.tenant_id
    assert set(non_finite_counted(metrics_port).values()) == {0.0}
    dataset.write_events(tables[RAW_EVENTS_TABLE], overflow_events(tenant))
    stub.PutEnrichmentSpec(
        enrich_pb2.PutEnrichmentSpecRequest(tenant_id=tenant, spec=overflow_spec())
    )
    job = enrich_pb2.EnrichmentJob(mode=enrich_pb2.JOB_MODE_BATCH)
    job.time_range.start_time.CopyFrom(timestamp_from_micros(BASE))
    job.time_range.end_time.CopyFrom(timestamp_from_micros(BASE + 2 * DAY))
    created = stub.CreateEnrichmentJob(
        enrich_pb2.CreateEnrichmentJobRequest(tenant_id=tenant, job=job)
    ).job

    def state() -> int:
        request = enrich_pb2.GetEnrichmentJobRequest(tenant_id=tenant, job_id=created.job_id)
        return stub.GetEnrichmentJob(request).job.state

    # Generous: the 2-core machine is shared, and the first job also starts the Spark session.
    wait_until(
        lambda: state() in (enrich_pb2.JOB_STATE_SUCCEEDED, enrich_pb2.JOB_STATE_FAILED),
        timeout=600,
        what="the overflow job ends",
    )
    assert state() == enrich_pb2.JOB_STATE_SUCCEEDED
    # The four 1.7e308 events overflow `twice` and `doubled` (2 numeric derived fields each;
    # `label` is text: its overflowed operand makes it absent, not a non-finite number); e1's
    # day sum of amount (one metric); e1's and e2's running totals of amount (two profiles).
    assert non_finite_counted(metrics_port) == {
        bigtable_io.DERIVED_FIELD: 8.0,
        bigtable_io.EVENT_FIELD: 0.0,
        bigtable_io.METRIC: 1.0,
        bigtable_io.PROFILE_TOTAL: 2.0,
    }
