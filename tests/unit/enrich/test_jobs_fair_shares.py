"""Fair shares of the job manager (fake engine, in-memory stores): per-tenant quotas refused
with RESOURCE_EXHAUSTED, batch slots served round-robin across tenants, streams on threads of
their own, and a cancelled job that ends CANCELLED and frees its slot at once."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from enrich.domain.fair_shares import FairSlots, Quotas
from enrich.domain.jobs import JobManager
from enrich.domain.records import Job, JobMode, JobState
from enrich.domain.work import BatchWork, CancellationToken, Cancelled, Counters, StreamWork
from eventpipe.core.errors import ResourceExhausted
from eventpipe.core.waiting import wait_until

from tests.unit.enrich.test_job_manager import (
    MINUTE,
    Clock,
    FakeEngine,
    MemoryJobs,
    MemorySpecs,
    batch_job,
    scheduled_job,
    spec,
)


class FakeStream:
    def __init__(self) -> None:
        self.stopped = threading.Event()

    def is_active(self) -> bool:
        return not self.stopped.is_set()

    def error(self) -> str | None:
        return None

    def stop(self) -> None:
        self.stopped.set()


class StreamingEngine(FakeEngine):
    """FakeEngine whose streams run until stopped; batches record their tenant."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[FakeStream] = []
        self.tenants: list[str] = []

    def run_batch(self, work: BatchWork) -> Counters:
        with self.lock:
            self.tenants.append(work.tenant_id)
        return super().run_batch(work)

    def start_stream(self, work: StreamWork) -> Any:
        stream = FakeStream()
        self.streams.append(stream)
        return stream


def streaming_job() -> Job:
    return Job(mode=JobMode.STREAMING)


@pytest.fixture
def engine() -> Any:
    engine = StreamingEngine()
    yield engine
    engine.release.set()
    for stream in engine.streams:
        stream.stop()


def manager_with(engine: StreamingEngine, quotas: Quotas, *tenants: str) -> JobManager:
    manager = JobManager(
        MemorySpecs(), MemoryJobs(), engine, quotas=quotas, clock=Clock(1_800_000_000_000_000)
    )
    for tenant in tenants:
        manager.put_spec(tenant, spec())
    return manager


def state(manager: JobManager, tenant: str, job: Job) -> JobState:
    return manager.get_job(tenant, job.job_id).state


def test_a_tenant_over_its_stream_quota_is_refused_with_resource_exhausted(engine: Any) -> None:
    manager = manager_with(engine, Quotas(tenant_max_streams=2, max_streams=8), "a", "b")
    streams = [manager.create_job("a", streaming_job()) for _ in range(2)]
    with pytest.raises(ResourceExhausted, match="tenant 'a' already runs 2 streaming jobs"):
        manager.create_job("a", streaming_job())
    manager.create_job("b", streaming_job())  # another tenant's quota is its own
    manager.cancel_job("a", streams[0].job_id)
    manager.create_job("a", streaming_job())  # a cancelled stream frees its place
    manager.stop()


def test_the_process_wide_stream_limit_refuses_every_tenant(engine: Any) -> None:
    manager = manager_with(engine, Quotas(tenant_max_streams=2, max_streams=3), "a", "b")
    for tenant in ("a", "a", "b"):
        manager.create_job(tenant, streaming_job())
    with pytest.raises(ResourceExhausted, match="enrich service already runs 3 streaming jobs"):
        manager.create_job("b", streaming_job())
    manager.stop()


def test_batch_and_schedule_quotas_count_only_the_tenants_own_unfinished_jobs(
    engine: Any,
) -> None:
    quotas = Quotas(tenant_max_batch_jobs=2, tenant_max_scheduled_jobs=1)
    manager = manager_with(engine, quotas, "a", "b")
    first = manager.create_job("a", batch_job(0, MINUTE))
    manager.create_job("a", batch_job(0, MINUTE))
    with pytest.raises(ResourceExhausted, match="2 batch jobs pending or running"):
        manager.create_job("a", batch_job(0, MINUTE))
    manager.create_job("b", batch_job(0, MINUTE))
    manager.create_job("a", scheduled_job())
    with pytest.raises(ResourceExhausted, match="1 active scheduled jobs"):
        manager.create_job("a", scheduled_job())
    manager.cancel_job("a", first.job_id)
    manager.create_job("a", batch_job(0, MINUTE))
    engine.release.set()
    manager.stop()


def test_a_refused_job_leaves_no_record(engine: Any) -> None:
    manager = manager_with(engine, Quotas(tenant_max_streams=1), "a")
    manager.create_job("a", streaming_job())
    with pytest.raises(ResourceExhausted):
        manager.create_job("a", streaming_job())
    jobs, _token = manager.list_jobs("a", 10, "")
    assert len(jobs) == 1
    manager.stop()


def test_one_tenants_streams_never_hold_another_tenants_batch_job(engine: Any) -> None:
    manager = manager_with(
        engine, Quotas(max_running_jobs=1, tenant_max_running_jobs=1, tenant_max_streams=2), "a"
    )
    manager.put_spec("b", spec())
    for _ in range(2):
        manager.create_job("a", streaming_job())
    wait_until(lambda: len(engine.streams) == 2, timeout=10, what="streams started")
    engine.release.set()
    job = manager.create_job("b", batch_job(0, MINUTE))
    wait_until(
        lambda: state(manager, "b", job) == JobState.SUCCEEDED,
        timeout=10,
        what="b's batch job done while a's streams run",
    )
    assert all(s.is_active() for s in engine.streams)
    manager.stop()


def test_queued_batch_work_is_served_round_robin_across_tenants() -> None:
    order: list[str] = []
    gate = threading.Event()
    slots = FairSlots(1, 1, name="test-slot")
    slots.submit("blocker", gate.wait)
    for tenant, n in [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("c", 1), ("b", 2)]:
        slots.submit(tenant, lambda t=tenant, n=n: order.append(f"{t}{n}"))
    gate.set()
    wait_until(lambda: len(order) == 6, timeout=10, what="all work ran")
    slots.close(5)
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]


def test_a_tenant_never_holds_more_slots_than_its_share() -> None:
    gate = threading.Event()
    slots = FairSlots(3, 1, name="test-share")
    ran: list[str] = []
    slots.submit("a", gate.wait)
    slots.submit("a", lambda: ran.append("a"))
    slots.submit("b", lambda: ran.append("b"))
    wait_until(lambda: ran == ["b"], timeout=10, what="b ran beside a's running work")
    assert slots.running("a") == 1  # a's second item waits although two slots are free
    gate.set()
    wait_until(lambda: ran == ["b", "a"], timeout=10, what="a's second item ran")
    slots.close(5)


def test_a_job_cancelled_while_it_waits_for_a_slot_never_runs(engine: Any) -> None:
    manager = manager_with(engine, Quotas(max_running_jobs=1, tenant_max_running_jobs=1), "a")
    running = manager.create_job("a", batch_job(0, MINUTE))
    wait_until(lambda: engine.running == 1, timeout=10, what="first job running")
    queued = manager.create_job("a", batch_job(MINUTE, 2 * MINUTE))
    manager.cancel_job("a", queued.job_id)
    engine.release.set()
    wait_until(
        lambda: state(manager, "a", running) == JobState.SUCCEEDED,
        timeout=10,
        what="first job done",
    )
    manager.stop()
    assert engine.windows == [(0, MINUTE)]
    assert state(manager, "a", queued) == JobState.CANCELLED


def test_a_cancelled_job_frees_its_slot_for_the_next_job_at_once(engine: Any) -> None:
    manager = manager_with(engine, Quotas(max_running_jobs=1, tenant_max_running_jobs=1), "a")
    stuck = manager.create_job("a", batch_job(0, MINUTE))
    wait_until(lambda: engine.running == 1, timeout=10, what="first job running")
    following = manager.create_job("a", batch_job(MINUTE, 2 * MINUTE))
    manager.cancel_job("a", stuck.job_id)
    wait_until(lambda: len(engine.windows) == 2, timeout=10, what="the next job got the slot")
    engine.release.set()
    wait_until(
        lambda: state(manager, "a", following) == JobState.SUCCEEDED,
        timeout=10,
        what="next job done",
    )
    assert state(manager, "a", stuck) == JobState.CANCELLED
    manager.stop()


def test_a_cancellation_token_runs_its_callbacks_once_even_when_registered_late() -> None:
    token = CancellationToken()
    calls: list[str] = []
    token.on_cancel(lambda: calls.append("early"))
    token.cancel()
    token.cancel()
    token.on_cancel(lambda: calls.append("late"))
    assert calls == ["early", "late"]
    assert token.is_set() and token.wait(0)


class InterruptingEngine(StreamingEngine):
    """Like the Spark engine: cancel interrupts a running batch, which raises Cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = threading.Event()

    def run_batch(self, work: BatchWork) -> Counters:
        with self.lock:
            self.running += 1
        try:
            self.interrupted.wait(10)
            raise Cancelled(work.job_id)
        finally:
            with self.lock:
                self.running -= 1

    def cancel(self, job_id: str) -> None:
        self.interrupted.set()


def test_a_job_interrupted_by_shutdown_stays_running_for_the_next_process() -> None:
    engine = InterruptingEngine()
    manager = manager_with(engine, Quotas(), "a")
    job = manager.create_job("a", batch_job(0, MINUTE))
    wait_until(lambda: engine.running == 1, timeout=10, what="job running")
    manager.stop()
    assert state(manager, "a", job) == JobState.RUNNING
