"""The job manager with in-memory stores and a fake engine: lifecycle, cancel, recovery and
schedules that never run two windows of one schedule at once."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from enrich.domain.jobs import (
    BatchWork,
    Cancelled,
    JobManager,
    StreamWork,
    next_run_after,
    scheduled_window,
)
from enrich.domain.records import JobRecord
from eventpipe.core import schema
from eventpipe.core.errors import FailedPrecondition, InvalidArgument
from eventpipe.enrich.v1 import enrich_pb2
from eventpipe.stack.waiting import wait_until

MINUTE = 60_000_000


class MemorySpecs:
    def __init__(self) -> None:
        self.specs: dict[str, list[enrich_pb2.EnrichmentSpec]] = {}

    def put(self, tenant_id: str, spec: enrich_pb2.EnrichmentSpec) -> enrich_pb2.EnrichmentSpec:
        versions = self.specs.setdefault(tenant_id, [])
        stored = enrich_pb2.EnrichmentSpec()
        stored.CopyFrom(spec)
        stored.version = len(versions) + 1
        versions.append(stored)
        return stored

    def get(self, tenant_id: str, version: int = 0) -> enrich_pb2.EnrichmentSpec | None:
        versions = self.specs.get(tenant_id, [])
        if not versions or version > len(versions):
            return None
        return versions[version - 1] if version else versions[-1]


class MemoryJobs:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], bytes] = {}
        self.next_run: dict[tuple[str, str], int] = {}
        self.lock = threading.Lock()

    def save(self, record: JobRecord) -> None:
        with self.lock:
            key = (record.tenant_id, record.job.job_id)
            self.rows[key] = record.job.SerializeToString()
            self.next_run[key] = record.next_run_micros

    def _load(self, key: tuple[str, str]) -> JobRecord:
        return JobRecord(
            key[0], enrich_pb2.EnrichmentJob.FromString(self.rows[key]), self.next_run[key]
        )

    def get(self, tenant_id: str, job_id: str) -> JobRecord | None:
        with self.lock:
            key = (tenant_id, job_id)
            return self._load(key) if key in self.rows else None

    def list_page(
        self, tenant_id: str, page_size: int, after_job_id: str | None
    ) -> list[JobRecord]:
        with self.lock:
            keys = sorted(k for k in self.rows if k[0] == tenant_id and k[1] > (after_job_id or ""))
            return [self._load(k) for k in keys[:page_size]]

    def all_records(self) -> list[JobRecord]:
        with self.lock:
            return [self._load(k) for k in self.rows]


class FakeEngine:
    """Records windows; a batch blocks until released so tests control overlap and cancel."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.windows: list[tuple[int, int]] = []
        self.release = threading.Event()
        self.running = 0
        self.max_running = 0
        self.fail_with = fail_with
        self.cancelled: list[str] = []
        self.lock = threading.Lock()

    def run_batch(self, work: BatchWork) -> enrich_pb2.JobCounters:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.windows.append((work.start_micros, work.end_micros))
        try:
            while not self.release.wait(0.01):
                if work.cancelled.is_set():
                    raise Cancelled(work.job_id)
            if self.fail_with:
                raise self.fail_with
            work.on_progress(0.5, enrich_pb2.JobCounters(read=5))
            return enrich_pb2.JobCounters(read=10, enriched=7, unmatched=3)
        finally:
            with self.lock:
                self.running -= 1

    def start_stream(self, work: StreamWork) -> Any:
        raise NotImplementedError

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def spec() -> enrich_pb2.EnrichmentSpec:
    return enrich_pb2.EnrichmentSpec(
        joins=[enrich_pb2.Join(dimension="users", key_field="entity_id", fields=["tier"])]
    )


def batch_job(start: int, end: int) -> enrich_pb2.EnrichmentJob:
    job = enrich_pb2.EnrichmentJob(mode=enrich_pb2.JOB_MODE_BATCH)
    job.time_range.start_time.CopyFrom(schema.timestamp_from_micros(start))
    job.time_range.end_time.CopyFrom(schema.timestamp_from_micros(end))
    return job


@pytest.fixture
def parts() -> Any:
    engine = FakeEngine()
    yield MemorySpecs(), MemoryJobs(), engine, Clock(1_800_000_000_000_000)
    engine.release.set()  # no worker thread outlives its test


def manager_of(parts: tuple[MemorySpecs, MemoryJobs, FakeEngine, Clock]) -> JobManager:
    specs, jobs, engine, clock = parts
    return JobManager(specs, jobs, engine, clock=clock, tick_seconds=3600)


def test_a_batch_job_runs_to_success_with_its_counters(parts: Any) -> None:
    manager = manager_of(parts)
    manager.put_spec("t", spec())
    job = manager.create_job("t", batch_job(0, MINUTE))
    assert (job.state, job.spec_version) == (enrich_pb2.JOB_STATE_PENDING, 1)
    parts[2].release.set()
    wait_until(
        lambda: manager.get_job("t", job.job_id).state == enrich_pb2.JOB_STATE_SUCCEEDED,
        timeout=10,
        what="success",
    )
    done = manager.get_job("t", job.job_id)
    assert (done.counters.read, done.counters.unmatched, done.progress) == (10, 3, 1.0)
    assert parts[2].windows == [(0, MINUTE)]


def test_a_failing_job_reports_its_error(parts: Any) -> None:
    specs, jobs, _engine, clock = parts
    engine = FakeEngine(fail_with=RuntimeError("Bigtable said no\nstack..."))
    engine.release.set()
    manager = JobManager(specs, jobs, engine, clock=clock, tick_seconds=3600)
    manager.put_spec("t", spec())
    job = manager.create_job("t", batch_job(0, MINUTE))
    wait_until(
        lambda: manager.get_job("t", job.job_id).state == enrich_pb2.JOB_STATE_FAILED,
        timeout=10,
        what="failure",
    )
    assert manager.get_job("t", job.job_id).error == "RuntimeError: Bigtable said no"


def test_cancel_stops_a_running_batch_and_the_state_stays_cancelled(parts: Any) -> None:
    manager = manager_of(parts)
    manager.put_spec("t", spec())
    job = manager.create_job("t", batch_job(0, MINUTE))
    wait_until(lambda: parts[2].running == 1, timeout=10, what="running")
    assert manager.cancel_job("t", job.job_id).state == enrich_pb2.JOB_STATE_CANCELLED
    wait_until(lambda: parts[2].running == 0, timeout=10, what="stopped")
    assert manager.get_job("t", job.job_id).state == enrich_pb2.JOB_STATE_CANCELLED
    assert parts[2].cancelled == [job.job_id]


def test_a_job_without_a_spec_or_with_a_bad_window_is_refused(parts: Any) -> None:
    manager = manager_of(parts)
    with pytest.raises(FailedPrecondition):
        manager.create_job("t", batch_job(0, MINUTE))
    manager.put_spec("t", spec())
    with pytest.raises(InvalidArgument) as raised:
        manager.create_job("t", batch_job(MINUTE, 0))
    assert raised.value.violations[0].field == "job.time_range"
    scheduled = enrich_pb2.EnrichmentJob(mode=enrich_pb2.JOB_MODE_SCHEDULED)
    scheduled.schedule.interval.FromSeconds(10)
    with pytest.raises(InvalidArgument) as raised:
        manager.create_job("t", scheduled)
    assert {v.field for v in raised.value.violations} == {
        "job.schedule.interval",
        "job.schedule.window",
    }


def test_a_restarted_manager_runs_pending_jobs_again(parts: Any) -> None:
    specs, jobs, engine, clock = parts
    first = manager_of(parts)
    first.put_spec("t", spec())
    job = first.create_job("t", batch_job(0, MINUTE))
    wait_until(lambda: engine.running == 1, timeout=10, what="running")
    first._stopped.set()  # the process goes down mid-run: the record stays RUNNING
    engine.fail_with = RuntimeError("interrupted")
    engine.release.set()
    wait_until(lambda: engine.running == 0, timeout=10, what="first run gone")
    engine.fail_with = None
    assert jobs.get("t", job.job_id).job.state == enrich_pb2.JOB_STATE_RUNNING

    second = JobManager(specs, jobs, engine, clock=clock, tick_seconds=3600)
    second.start()
    wait_until(
        lambda: second.get_job("t", job.job_id).state == enrich_pb2.JOB_STATE_SUCCEEDED,
        timeout=10,
        what="recovered",
    )
    second.stop()
    assert engine.windows == [(0, MINUTE), (0, MINUTE)]


def test_a_schedule_never_runs_two_windows_at_once_and_slides_its_window(parts: Any) -> None:
    _specs, _jobs, engine, clock = parts
    manager = manager_of(parts)
    manager.put_spec("t", spec())
    job = enrich_pb2.EnrichmentJob(mode=enrich_pb2.JOB_MODE_SCHEDULED)
    job.schedule.interval.FromSeconds(15 * 60)
    job.schedule.window.FromSeconds(3600)
    job.schedule.lateness.FromSeconds(60)
    created = manager.create_job("t", job)
    start = clock.now
    manager.tick()
    wait_until(lambda: engine.running == 1, timeout=10, what="first window")
    clock.now += 30 * MINUTE  # two intervals later, the first window still runs
    manager.tick()
    manager.tick()
    assert engine.running == 1
    engine.release.set()
    wait_until(lambda: engine.running == 0, timeout=10, what="window done")
    wait_until(
        lambda: not manager._active[created.job_id].window_running, timeout=10, what="released"
    )
    manager.tick()  # the next window is due 45 minutes after the first: not yet
    assert len(engine.windows) == 1
    clock.now = start + 45 * MINUTE
    manager.tick()
    wait_until(lambda: len(engine.windows) == 2, timeout=10, what="second window")
    assert engine.max_running == 1
    assert engine.windows == [
        (start - 61 * MINUTE, start - MINUTE),
        (start - 16 * MINUTE, start + 44 * MINUTE),
    ]


def test_window_arithmetic() -> None:
    schedule = enrich_pb2.Schedule()
    schedule.interval.FromSeconds(900)
    schedule.window.FromSeconds(3600)
    schedule.lateness.FromSeconds(120)
    assert scheduled_window(schedule, 10 * 3600 * 10**6) == (
        9 * 3600 * 10**6 - 120 * 10**6,
        10 * 3600 * 10**6 - 120 * 10**6,
    )
    assert next_run_after(schedule, 0, 1) == 900 * 10**6
    assert next_run_after(schedule, 0, 2000 * 10**6) == 2700 * 10**6
