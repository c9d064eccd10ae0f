"""The scheduled-window claim of BigtableJobStore on the real emulator: one CheckAndMutateRow
decides which replica runs a window, and a lease whose owner died can be taken over."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from enrich.adapters.repository import (
    ENRICH_JOBS_TABLE,
    BigtableJobStore,
    ensure_enrich_tables,
)
from enrich.domain.records import Job, JobMode, JobRecord, JobState
from eventpipe.core import bigtable as core_bigtable
from eventpipe.core.config import CommonSettings
from eventpipe.stack.components import BigtableEmulator

from tests.conftest import Isolation

NOW = 1_800_000_000_000_000
DUE = NOW - 5_000_000
LEASE = 60_000_000
INTERVAL = 900_000_000


@pytest.fixture
def store(bigtable_emulator: BigtableEmulator) -> BigtableJobStore:
    common = CommonSettings(table_prefix=Isolation.new().table_prefix)
    ensure_enrich_tables(common)
    return BigtableJobStore(core_bigtable.table(common, ENRICH_JOBS_TABLE))


@pytest.fixture
def job(store: BigtableJobStore) -> JobRecord:
    record = JobRecord(
        "tenant-a",
        Job(job_id="j1", mode=JobMode.SCHEDULED, state=JobState.RUNNING),
        next_run_micros=DUE,
    )
    store.save(record)
    return record


def claim(
    store: BigtableJobStore, owner: str, *, due: int = DUE, now: int = NOW, lease: int = LEASE
) -> bool:
    return store.claim_window("tenant-a", "j1", due, owner, now, lease)


def test_of_concurrent_claims_on_one_window_exactly_one_wins(
    store: BigtableJobStore, job: JobRecord
) -> None:
    owners = [f"replica-{n}" for n in range(8)]
    with ThreadPoolExecutor(len(owners)) as pool:
        won = dict(zip(owners, pool.map(lambda owner: claim(store, owner), owners), strict=True))
    winners = [owner for owner, ok in won.items() if ok]
    assert len(winners) == 1
    losers = [owner for owner in owners if owner != winners[0]]
    assert not any(claim(store, owner, now=NOW + LEASE - 1) for owner in losers)
    assert claim(store, winners[0], now=NOW + LEASE - 1)  # the owner renews its lease


def test_an_expired_lease_is_taken_over_and_the_old_owner_is_then_refused(
    store: BigtableJobStore, job: JobRecord
) -> None:
    assert claim(store, "replica-a")
    assert not claim(store, "replica-b", now=NOW + LEASE - 1)
    assert claim(store, "replica-b", now=NOW + LEASE)  # replica-a stopped renewing: it died
    assert not claim(store, "replica-a", now=NOW + LEASE + 1)


def test_a_released_claim_is_free_at_once(store: BigtableJobStore, job: JobRecord) -> None:
    assert claim(store, "replica-a")
    assert claim(store, "replica-a", now=NOW + 1, lease=0)
    assert claim(store, "replica-b", now=NOW + 1)


def test_a_claim_on_a_later_window_refuses_the_earlier_one_even_when_expired(
    store: BigtableJobStore, job: JobRecord
) -> None:
    assert claim(store, "replica-a")
    assert claim(store, "replica-b", due=DUE + INTERVAL, now=NOW + 1)  # a later window is free
    later = NOW + INTERVAL + 10 * LEASE
    assert not claim(store, "replica-a", now=later)  # a stale record's window: already done
    assert not claim(store, "replica-c", now=later)


def test_saving_the_record_keeps_its_claim_and_the_record_reads_back(
    store: BigtableJobStore, job: JobRecord
) -> None:
    assert claim(store, "replica-a")
    job.job.error = "RuntimeError: boom"
    store.save(job)
    assert not claim(store, "replica-b", now=NOW + 1)
    stored = store.get("tenant-a", "j1")
    assert stored is not None
    assert (stored.job.error, stored.next_run_micros) == ("RuntimeError: boom", DUE)
    assert [r.job.job_id for r in store.all_records()] == ["j1"]


def test_a_claim_on_a_missing_job_is_refused_and_creates_no_row(store: BigtableJobStore) -> None:
    assert not store.claim_window("tenant-a", "no-such-job", DUE, "replica-a", NOW, LEASE)
    assert store.all_records() == []


def test_an_owner_that_would_break_the_claim_encoding_is_rejected(
    store: BigtableJobStore, job: JobRecord
) -> None:
    with pytest.raises(ValueError, match="owner"):
        claim(store, "replica a/1")
