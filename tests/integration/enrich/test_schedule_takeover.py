"""Two enrich schedulers in one process, on the real Bigtable emulator and the test session's
Spark: a schedule created on one replica after the other started is found by the other, which
takes its window over once the creator's claim expired, without a restart, and writes the
enriched rows an independent computation expects."""

from __future__ import annotations

import time
from typing import Any

import pytest
from enrich.adapters.repository import (
    ENRICH_JOBS_TABLE,
    ENRICH_SPECS_TABLE,
    BigtableJobStore,
    BigtableSpecStore,
    ensure_enrich_tables,
)
from enrich.adapters.spark_engine import SparkEngine
from enrich.adapters.spec_codec import spec_from_proto
from enrich.domain.jobs import JobManager
from enrich.domain.records import Job, JobMode, JobState, Schedule
from eventpipe.core import bigtable as core_bigtable
from eventpipe.core.storage.keys import row_key_for_job
from eventpipe.core.storage.rows import enriched_fields_from_cells, latest_cells
from eventpipe.core.storage.tables import ENRICHED_EVENTS_TABLE, META_FAMILY, RAW_EVENTS_TABLE
from eventpipe.core.waiting import wait_until
from google.cloud.bigtable.table import Table

from tests.integration.enrich import dataset
from tests.integration.enrich.conftest import recent, write_dimensions

SECOND = 1_000_000
HOUR = 3600 * SECOND
DAY = 24 * HOUR
CREATOR_LEASE = 5 * SECOND


def now_micros() -> int:
    return time.time_ns() // 1000


@pytest.fixture
def stores(common_settings: Any) -> tuple[BigtableSpecStore, BigtableJobStore, Table]:
    ensure_enrich_tables(common_settings)
    jobs_table = core_bigtable.table(common_settings, ENRICH_JOBS_TABLE)
    return (
        BigtableSpecStore(core_bigtable.table(common_settings, ENRICH_SPECS_TABLE)),
        BigtableJobStore(jobs_table),
        jobs_table,
    )


def test_a_schedule_created_on_a_replica_that_then_died_is_run_by_the_replica_started_before_it(
    engine: SparkEngine,
    tables: dict[str, Table],
    stores: tuple[BigtableSpecStore, BigtableJobStore, Table],
    isolation: Any,
) -> None:
    specs, jobs, jobs_table = stores
    tenant = isolation.tenant_id
    data = recent(dataset.generate(tenant, events=40))
    dataset.write_events(tables[RAW_EVENTS_TABLE], data.events)
    write_dimensions(tables, data)

    # The survivor starts first, when no job exists: it recovers nothing.
    survivor = JobManager(
        specs, jobs, engine, tick_seconds=0.2, rescan_seconds=0.5, owner_id="replica-b"
    )
    survivor.start()
    creator = JobManager(specs, jobs, engine, tick_seconds=3600, owner_id="replica-a")
    try:
        creator.put_spec(tenant, spec_from_proto(dataset.test_spec()))
        job_id = creator.create_job(
            tenant,
            Job(mode=JobMode.SCHEDULED, schedule=Schedule(HOUR, 5 * DAY, 0)),
        ).job_id
        record = jobs.get(tenant, job_id)
        assert record is not None and record.job.state == JobState.RUNNING
        due = record.next_run_micros
        # The creator claims its first window, then dies before running it: its ticker never
        # runs, so nothing renews the claim.
        assert jobs.claim_window(tenant, job_id, due, "replica-a", now_micros(), CREATOR_LEASE)

        wait_until(lambda: job_id in survivor._active, timeout=60, what="schedule discovered")

        def window_done() -> bool:
            latest = jobs.get(tenant, job_id)
            return latest is not None and latest.next_run_micros > due

        wait_until(window_done, timeout=600, what="the survivor ran the window")
    finally:
        survivor.stop()
        creator.stop()

    done = jobs.get(tenant, job_id)
    assert done is not None
    assert (done.job.state, done.job.error) == (JobState.RUNNING, "")
    assert done.job.counters.read == len(data.events)
    claim = latest_cells(jobs_table.read_row(row_key_for_job(tenant, job_id)))
    assert claim[(META_FAMILY, b"claim")].endswith(b"/replica-b")

    expected = dataset.expected_enriched(data)
    enriched = {
        bytes(row.row_key): latest_cells(row) for row in tables[ENRICHED_EVENTS_TABLE].read_rows()
    }
    assert set(enriched) == set(expected)
    for key, want in expected.items():
        cells = enriched[key]
        assert cells[(META_FAMILY, b"unmatched")].decode() == want["unmatched"], key
        fields = {
            name: getattr(value, value.WhichOneof("kind"))
            for name, value in enriched_fields_from_cells(cells).items()
        }
        assert fields == pytest.approx(want["fields"]), key
