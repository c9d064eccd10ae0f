"""The job manager with in-memory stores and a fake engine: lifecycle, cancel, recovery,
schedules that never run two windows of one schedule at once, retry a failed window with a
backoff, and run each window on only one of several managers sharing a store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from enrich.adapters.job_codec import job_from_bytes, job_to_bytes
from enrich.domain.jobs import JobManager
from enrich.domain.records import (
    TERMINAL,
    Job,
    JobMode,
    JobRecord,
    JobState,
    Schedule,
    TimeRange,
)
from enrich.domain.spec import Join, Spec
from enrich.domain.windows import next_run_after, retry_delay_micros, scheduled_window
from enrich.domain.work import BatchWork, Cancelled, Counters, StreamWork
from eventpipe.core.errors import FailedPrecondition, InvalidArgument
from eventpipe.core.waiting import wait_until
from eventpipe.enrich.v1 import enrich_pb2

SECOND = 1_000_000
MINUTE = 60_000_000
LEASE = 2 * MINUTE


class MemorySpecs:
    def __init__(self) -> None:
        self.specs: dict[str, list[Spec]] = {}

    def put(self, tenant_id: str, spec: Spec) -> Spec:
        versions = self.specs.setdefault(tenant_id, [])
        stored = spec.copy()
        stored.version = len(versions) + 1
        versions.append(stored)
        return stored

    def get(self, tenant_id: str, version: int = 0) -> Spec | None:
        versions = self.specs.get(tenant_id, [])
        if not versions or version > len(versions):
            return None
        return versions[version - 1] if version else versions[-1]


class MemoryJobs:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], bytes] = {}
        self.next_run: dict[tuple[str, str], int] = {}
        self.claims: dict[tuple[str, str], tuple[int, str, int]] = {}  # due, owner, expiry
        self.lock = threading.Lock()

    def save(self, record: JobRecord) -> None:
        with self.lock:
            key = (record.tenant_id, record.job.job_id)
            self.rows[key] = job_to_bytes(record.job)  # as the store keeps it
            self.next_run[key] = record.next_run_micros

    def _load(self, key: tuple[str, str]) -> JobRecord:
        job = job_from_bytes(self.rows[key])
        return JobRecord(key[0], job, self.next_run[key])

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

    def scheduled_records(self) -> list[JobRecord]:
        """BigtableJobStore's marked rows: scheduled jobs that have not ended."""
        return [
            r
            for r in self.all_records()
            if r.job.mode == JobMode.SCHEDULED and r.job.state not in TERMINAL
        ]

    def claim_window(
        self,
        tenant_id: str,
        job_id: str,
        due_micros: int,
        owner: str,
        now_micros: int,
        lease_micros: int,
    ) -> bool:
        """BigtableJobStore.claim_window's rule (tested on the emulator in integration)."""
        with self.lock:
            key = (tenant_id, job_id)
            if key not in self.rows:
                return False
            held = self.claims.get(key)
            if held is not None:
                held_due, held_owner, expiry = held
                if held_due > due_micros or (
                    held_due == due_micros and held_owner != owner and expiry > now_micros
                ):
                    return False
            self.claims[key] = (due_micros, owner, now_micros + lease_micros)
            return True


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

    def run_batch(self, work: BatchWork) -> Counters:
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
            work.on_progress(0.5, Counters(read=5))
            return Counters(read=10, enriched=7, unmatched=3)
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


def spec() -> Spec:
    return Spec(joins=[Join(dimension="users", key_field="entity_id", fields=["tier"])])


def batch_job(start: int, end: int) -> Job:
    return Job(mode=JobMode.BATCH, time_range=TimeRange(start, end))


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
    assert (job.state, job.spec_version) == (JobState.PENDING, 1)
    parts[2].release.set()
    wait_until(
        lambda: manager.get_job("t", job.job_id).state == JobState.SUCCEEDED,
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
        lambda: manager.get_job("t", job.job_id).state == JobState.FAILED,
        timeout=10,
        what="failure",
    )
    assert manager.get_job("t", job.job_id).error == "RuntimeError: Bigtable said no"


def test_cancel_stops_a_running_batch_and_the_state_stays_cancelled(parts: Any) -> None:
    manager = manager_of(parts)
    manager.put_spec("t", spec())
    job = manager.create_job("t", batch_job(0, MINUTE))
    wait_until(lambda: parts[2].running == 1, timeout=10, what="running")
    assert manager.cancel_job("t", job.job_id).state == JobState.CANCELLED
    wait_until(lambda: parts[2].running == 0, timeout=10, what="stopped")
    assert manager.get_job("t", job.job_id).state == JobState.CANCELLED
    assert parts[2].cancelled == [job.job_id]


def test_a_job_without_a_spec_or_with_a_bad_window_is_refused(parts: Any) -> None:
    manager = manager_of(parts)
    with pytest.raises(FailedPrecondition):
        manager.create_job("t", batch_job(0, MINUTE))
    manager.put_spec("t", spec())
    with pytest.raises(InvalidArgument) as raised:
        manager.create_job("t", batch_job(MINUTE, 0))
    assert raised.value.violations[0].field == "job.time_range"
    scheduled = Job(mode=JobMode.SCHEDULED, schedule=Schedule(interval_micros=10 * SECOND))
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
    assert jobs.get("t", job.job_id).job.state == JobState.RUNNING

    second = JobManager(specs, jobs, engine, clock=clock, tick_seconds=3600)
    second.start()
    wait_until(
        lambda: second.get_job("t", job.job_id).state == JobState.SUCCEEDED,
        timeout=10,
        what="recovered",
    )
    second.stop()
    assert engine.windows == [(0, MINUTE), (0, MINUTE)]


def test_a_schedule_never_runs_two_windows_at_once_and_slides_its_window(parts: Any) -> None:
    _specs, _jobs, engine, clock = parts
    manager = manager_of(parts)
    manager.put_spec("t", spec())
    created = manager.create_job("t", scheduled_job())
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
    schedule = Schedule(900 * SECOND, 3600 * SECOND, 120 * SECOND)
    assert scheduled_window(schedule, 10 * 3600 * 10**6) == (
        9 * 3600 * 10**6 - 120 * 10**6,
        10 * 3600 * 10**6 - 120 * 10**6,
    )
    assert next_run_after(schedule, 0, 1) == 900 * 10**6
    assert next_run_after(schedule, 0, 2000 * 10**6) == 2700 * 10**6


def scheduled_job() -> Job:
    return Job(mode=JobMode.SCHEDULED, schedule=Schedule(15 * MINUTE, 3600 * SECOND, MINUTE))


def replica(
    parts: tuple[MemorySpecs, MemoryJobs, FakeEngine, Clock], owner: str, jobs: Any = None
) -> JobManager:
    """One enrich replica: managers built on the same ``parts`` share the store and the clock."""
    specs, shared_jobs, engine, clock = parts
    return JobManager(
        specs,
        jobs or shared_jobs,
        engine,
        clock=clock,
        tick_seconds=3600,
        owner_id=owner,
        retry_initial_micros=5 * SECOND,
        retry_max_micros=10 * MINUTE,
        claim_lease_micros=LEASE,
    )


def replica_with_job(parts: Any) -> tuple[JobManager, str]:
    """A replica that has just created a scheduled job, due at once."""
    manager = replica(parts, "replica-a")
    manager.put_spec("t", spec())
    return manager, manager.create_job("t", scheduled_job()).job_id


def window_finished(manager: JobManager, job_id: str) -> None:
    wait_until(
        lambda: not manager._active[job_id].window_running, timeout=10, what="window finished"
    )


def tick_starts_no_window(manager: JobManager, job_id: str) -> bool:
    """Ticks; True when it started no window (``tick`` marks one it starts before returning)."""
    manager.tick()
    return not manager._active[job_id].window_running


def run_due_window(manager: JobManager, job_id: str, engine: FakeEngine) -> tuple[int, int]:
    """Ticks, asserts that exactly one window ran to its end, and returns it."""
    ran = len(engine.windows)
    manager.tick()
    wait_until(lambda: len(engine.windows) == ran + 1, timeout=10, what="a window started")
    window_finished(manager, job_id)
    return engine.windows[-1]


def test_the_retry_delay_doubles_and_stops_at_the_cap_or_the_interval() -> None:
    hourly = Schedule(interval_micros=3600 * SECOND)
    assert [
        retry_delay_micros(hourly, n, 5 * SECOND, 10 * MINUTE) // SECOND for n in (1, 2, 3, 4)
    ] == [
        5,
        10,
        20,
        40,
    ]
    assert retry_delay_micros(hourly, 8, 5 * SECOND, 10 * MINUTE) == 10 * MINUTE
    assert retry_delay_micros(hourly, 100_000, 5 * SECOND, 10 * MINUTE) == 10 * MINUTE
    every_minute = Schedule(interval_micros=MINUTE)
    assert retry_delay_micros(every_minute, 5, 5 * SECOND, 10 * MINUTE) == MINUTE


def test_a_failed_window_is_retried_after_a_backoff_that_doubles_and_resets_after_a_success(
    parts: Any,
) -> None:
    _specs, jobs, engine, clock = parts
    engine.release.set()
    engine.fail_with = RuntimeError("Bigtable unavailable")
    due = clock.now
    manager, job_id = replica_with_job(parts)
    first = run_due_window(manager, job_id, engine)
    for backoff in (5, 10, 20):
        clock.now += backoff * SECOND - 1
        assert tick_starts_no_window(manager, job_id)  # still backing off
        clock.now += 1
        assert run_due_window(manager, job_id, engine) == first
    assert jobs.get("t", job_id).job.error == "RuntimeError: Bigtable unavailable"

    engine.fail_with = None
    clock.now += 40 * SECOND
    assert run_due_window(manager, job_id, engine) == first
    stored = jobs.get("t", job_id)
    assert (stored.next_run_micros, stored.job.error) == (due + 15 * MINUTE, "")
    assert stored.job.counters.read == 10  # only the successful attempt counts

    engine.fail_with = RuntimeError("Bigtable unavailable")
    clock.now = due + 15 * MINUTE
    second = run_due_window(manager, job_id, engine)
    assert second != first
    clock.now += 5 * SECOND - 1
    assert tick_starts_no_window(manager, job_id)
    clock.now += 1  # the backoff started again from 5 s
    assert run_due_window(manager, job_id, engine) == second


def test_a_failed_window_is_not_skipped_when_later_windows_fall_due(parts: Any) -> None:
    _specs, jobs, engine, clock = parts
    engine.release.set()
    engine.fail_with = RuntimeError("Bigtable unavailable")
    due = clock.now
    manager, job_id = replica_with_job(parts)
    failed = run_due_window(manager, job_id, engine)
    clock.now += 3 * 15 * MINUTE  # three more windows fell due meanwhile
    assert run_due_window(manager, job_id, engine) == failed
    assert jobs.get("t", job_id).next_run_micros == due
    engine.fail_with = None
    clock.now += 10 * MINUTE
    assert run_due_window(manager, job_id, engine) == failed
    assert jobs.get("t", job_id).next_run_micros == next_run_after(
        scheduled_job().schedule, due, clock.now
    )


@contextmanager
def two_replicas(
    parts: Any, second_jobs: Any = None
) -> Iterator[tuple[JobManager, JobManager, str]]:
    """A scheduled job created on a first replica and recovered by a second, as by a new pod."""
    first, job_id = replica_with_job(parts)
    second = replica(parts, "replica-b", jobs=second_jobs)
    second.start()
    try:
        yield first, second, job_id
    finally:
        parts[2].release.set()  # a window still blocked in the fake engine would block stop()
        second.stop()


def start_window(manager: JobManager, engine: FakeEngine) -> None:
    manager.tick()
    wait_until(lambda: engine.running == 1, timeout=10, what="a running window")


def test_a_window_claimed_by_one_manager_is_not_run_by_another_sharing_the_store(
    parts: Any,
) -> None:
    _specs, _jobs, engine, clock = parts
    with two_replicas(parts) as (first, second, job_id):
        start_window(first, engine)
        assert tick_starts_no_window(second, job_id)
        for _ in range(2):  # the first replica's ticks renew its lease past the original expiry
            clock.now += LEASE * 6 // 10
            first.tick()
            assert tick_starts_no_window(second, job_id)
        engine.release.set()
        window_finished(first, job_id)
        assert (len(engine.windows), engine.max_running) == (1, 1)


def test_a_window_whose_owner_stopped_renewing_is_taken_over_after_the_lease(parts: Any) -> None:
    _specs, _jobs, engine, clock = parts
    with two_replicas(parts) as (first, second, job_id):
        start_window(first, engine)
        clock.now += LEASE - 1  # the first replica hangs: it no longer ticks
        assert tick_starts_no_window(second, job_id)
        clock.now += 1
        second.tick()
        wait_until(lambda: len(engine.windows) == 2, timeout=10, what="window taken over")
        assert engine.windows[1] == engine.windows[0]
        assert second._active[job_id].window_running


def test_a_failed_window_is_held_by_its_replica_until_its_retry_is_due(parts: Any) -> None:
    _specs, _jobs, engine, clock = parts
    engine.release.set()
    engine.fail_with = RuntimeError("Bigtable unavailable")
    with two_replicas(parts) as (first, second, job_id):
        failed = run_due_window(first, job_id, engine)
        clock.now += 5 * SECOND - 1
        assert tick_starts_no_window(second, job_id)  # it backs off with the first replica
        clock.now += 1
        assert run_due_window(second, job_id, engine) == failed


def test_a_replica_stopping_mid_window_releases_its_claim_at_once(parts: Any) -> None:
    _specs, jobs, engine, _clock = parts
    with two_replicas(parts) as (first, second, job_id):
        start_window(first, engine)
        first._stopped.set()  # shutting down: the engine stops the window
        engine.fail_with = RuntimeError("interrupted")
        engine.release.set()
        window_finished(first, job_id)
        assert jobs.get("t", job_id).job.error == ""  # a shutdown is not a failure
        engine.fail_with = None
        interrupted = engine.windows[0]
        assert run_due_window(second, job_id, engine) == interrupted


class StaleScan:
    """The shared store, except that scans answer what they answered when ``freeze`` ran."""

    def __init__(self, jobs: MemoryJobs) -> None:
        self.jobs = jobs
        self.frozen: list[JobRecord] | None = None

    def freeze(self) -> None:
        self.frozen = self.jobs.all_records()

    def all_records(self) -> list[JobRecord]:
        return self.frozen if self.frozen is not None else self.jobs.all_records()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.jobs, name)


def test_a_replica_with_a_stale_record_does_not_rerun_a_window_another_one_finished(
    parts: Any,
) -> None:
    _specs, jobs, engine, clock = parts
    engine.release.set()
    stale = StaleScan(jobs)
    with two_replicas(parts, second_jobs=stale) as (first, second, job_id):
        stale.freeze()  # the second replica read the record before the first one's window ended
        run_due_window(first, job_id, engine)
        clock.now += LEASE  # and the first replica's claim has expired by its next tick
        assert tick_starts_no_window(second, job_id)
        assert len(engine.windows) == 1


def test_job_pages_continue_with_signed_tokens_bound_to_their_tenant(parts: Any) -> None:
    manager = manager_of(parts)
    manager.put_spec("t", spec())
    created = {manager.create_job("t", batch_job(0, MINUTE)).job_id for _ in range(3)}
    first, token = manager.list_jobs("t", 2, "")
    assert len(first) == 2 and token
    assert first[-1].job_id not in token  # opaque, not the bare job id
    rest, last_token = manager.list_jobs("t", 2, token)
    assert {j.job_id for j in first + rest} == created and last_token == ""
    for bad in (first[-1].job_id, token[:-2], token + "A"):
        with pytest.raises(InvalidArgument) as refused:
            manager.list_jobs("t", 2, bad)
        assert refused.value.violations[0].field == "page_token"
    with pytest.raises(InvalidArgument):
        manager.list_jobs("other", 2, token)  # another tenant's token
    parts[2].release.set()
    manager.stop()


def test_the_servicer_refuses_a_tenant_id_the_shared_id_rule_refuses() -> None:
    from unittest import mock

    from enrich.servicer import EnrichServicer

    manager = mock.Mock()
    servicer = EnrichServicer(manager)
    for bad in ("", "a b", "t\n", "x" * 129, "tenant/1"):
        with pytest.raises(InvalidArgument) as refused:
            servicer.GetEnrichmentJob(
                enrich_pb2.GetEnrichmentJobRequest(tenant_id=bad, job_id="j1"), mock.Mock()
            )
        assert refused.value.violations[0].field == "tenant_id"
    manager.get_job.assert_not_called()
    manager.get_job.return_value = Job(job_id="j1")
    servicer.GetEnrichmentJob(
        enrich_pb2.GetEnrichmentJobRequest(tenant_id="acme-1.eu:x_y", job_id="j1"), mock.Mock()
    )
    manager.get_job.assert_called_once_with("acme-1.eu:x_y", "j1")
