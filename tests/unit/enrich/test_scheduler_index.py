"""The scheduler's due-window index: a tick reads the records of the due windows only, never
the job table, however many schedules there are."""

from __future__ import annotations

from collections import Counter
from typing import Any

from enrich.domain.fair_shares import Quotas
from enrich.domain.jobs import JobManager
from enrich.domain.records import JobRecord
from eventpipe.core.waiting import wait_until

from tests.unit.enrich.test_job_manager import (
    MINUTE,
    Clock,
    FakeEngine,
    MemoryJobs,
    MemorySpecs,
    scheduled_job,
    spec,
)


class CountingJobs:
    """The in-memory job store, counting every call by method."""

    def __init__(self, jobs: MemoryJobs) -> None:
        self.jobs = jobs
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.jobs, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return method(*args, **kwargs)

        return counted


def test_a_tick_reads_only_the_due_windows_whatever_the_number_of_schedules() -> None:
    engine = FakeEngine()
    engine.release.set()
    clock = Clock(1_800_000_000_000_000)
    store = MemoryJobs()
    jobs = CountingJobs(store)
    manager = JobManager(
        MemorySpecs(),
        jobs,
        engine,
        quotas=Quotas(tenant_max_scheduled_jobs=1000),
        clock=clock,
        tick_seconds=3600,
    )
    manager.put_spec("t", spec())
    created = [manager.create_job("t", scheduled_job()).job_id for _ in range(200)]
    # All 200 are due at once: run their first windows, then they are due every 15 minutes.
    manager.tick()
    wait_until(lambda: len(engine.windows) == 200, timeout=30, what="first windows")
    wait_until(
        lambda: not any(manager._active[j].window_running for j in created),
        timeout=30,
        what="first windows ended",
    )
    # Stagger two schedules one minute earlier than the rest.
    for job_id in created[:2]:
        record = store.get("t", job_id)
        assert record is not None
        record.next_run_micros -= MINUTE
        store.save(record)
        manager._index(job_id, manager._active[job_id], record.next_run_micros)

    jobs.calls.clear()
    clock.now += 14 * MINUTE  # only the two staggered schedules are due
    manager.tick()
    wait_until(lambda: len(engine.windows) == 202, timeout=10, what="two due windows")
    wait_until(
        lambda: all(not manager._active[j].window_running for j in created[:2]),
        timeout=10,
        what="due windows ended",
    )
    assert jobs.calls["all_records"] == 0
    assert jobs.calls["list_page"] == 0
    # Per due window: read it, claim it, re-read it, then the window saves and re-reads it.
    assert jobs.calls["get"] <= 2 * 3
    assert jobs.calls["claim_window"] == 2

    jobs.calls.clear()
    manager.tick()  # nothing is due now: a tick reads nothing at all
    assert sum(jobs.calls.values()) == 0
    assert len(engine.windows) == 202


def test_a_cancelled_schedule_leaves_the_index() -> None:
    engine = FakeEngine()
    engine.release.set()
    clock = Clock(1_800_000_000_000_000)
    jobs = CountingJobs(MemoryJobs())
    manager = JobManager(MemorySpecs(), jobs, engine, clock=clock, tick_seconds=3600)
    manager.put_spec("t", spec())
    job_id = manager.create_job("t", scheduled_job()).job_id
    manager.cancel_job("t", job_id)
    jobs.calls.clear()
    manager.tick()
    assert sum(jobs.calls.values()) == 0
    assert engine.windows == []


def test_a_schedule_recovered_at_start_is_indexed_at_its_persisted_next_run() -> None:
    engine = FakeEngine()
    engine.release.set()
    clock = Clock(1_800_000_000_000_000)
    store = MemoryJobs()
    first = JobManager(MemorySpecs(), store, engine, clock=clock, tick_seconds=3600)
    first.put_spec("t", spec())
    job_id = first.create_job("t", scheduled_job()).job_id
    record = store.get("t", job_id)
    assert isinstance(record, JobRecord)
    record.next_run_micros = clock.now + 10 * MINUTE
    store.save(record)

    second = JobManager(first.specs, store, engine, clock=clock, tick_seconds=3600)
    second.start()
    try:
        second.tick()
        assert engine.windows == []
        clock.now += 10 * MINUTE
        second.tick()
        wait_until(lambda: len(engine.windows) == 1, timeout=10, what="window at next_run")
    finally:
        second.stop()
