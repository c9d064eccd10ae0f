"""The enrich metrics the dashboards and alerts read: job durations by mode and end state,
jobs by state, and the streaming consumer lag per partition."""

from __future__ import annotations

import uuid
from typing import Any

from enrich.adapters.spark.streaming import StreamLags, partition_lags
from enrich.domain.jobs import JobManager
from enrich.domain.records import JobState
from eventpipe.core.waiting import wait_until
from prometheus_client import REGISTRY

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


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def duration_count(mode: str, state: str) -> float:
    return sample("eventpipe_enrich_job_duration_seconds_count", mode=mode, state=state)


def duration_sum(mode: str, state: str) -> float:
    return sample("eventpipe_enrich_job_duration_seconds_sum", mode=mode, state=state)


def jobs_gauge(state: str) -> float:
    return sample("eventpipe_enrich_jobs", state=state)


def test_a_batch_job_counts_as_pending_then_running_and_its_duration_is_observed() -> None:
    engine, clock = FakeEngine(), Clock(1_800_000_000_000_000)
    manager = JobManager(MemorySpecs(), MemoryJobs(), engine, clock=clock, tick_seconds=3600)
    manager.put_spec("t", spec())
    succeeded = duration_count("batch", "succeeded")
    seconds = duration_sum("batch", "succeeded")
    try:
        job = manager.create_job("t", batch_job(0, MINUTE))
        wait_until(lambda: engine.running == 1, timeout=10, what="running")
        manager.report_job_counts()
        assert (jobs_gauge("running"), jobs_gauge("pending")) == (1, 0)
        clock.now += 3 * MINUTE
        engine.release.set()
        wait_until(
            lambda: manager.get_job("t", job.job_id).state == JobState.SUCCEEDED,
            timeout=10,
            what="success",
        )
        wait_until(lambda: not manager._active, timeout=10, what="job released")
        manager.report_job_counts()
        assert (jobs_gauge("running"), jobs_gauge("pending")) == (0, 0)
        assert duration_count("batch", "succeeded") == succeeded + 1
        assert duration_sum("batch", "succeeded") == seconds + 180
    finally:
        engine.release.set()
        manager.stop()


def test_a_cancelled_batch_is_observed_once_as_cancelled() -> None:
    engine, clock = FakeEngine(), Clock(1_800_000_000_000_000)
    manager = JobManager(MemorySpecs(), MemoryJobs(), engine, clock=clock, tick_seconds=3600)
    manager.put_spec("t", spec())
    cancelled = duration_count("batch", "cancelled")
    try:
        job = manager.create_job("t", batch_job(0, MINUTE))
        wait_until(lambda: engine.running == 1, timeout=10, what="running")
        manager.cancel_job("t", job.job_id)
        wait_until(lambda: engine.running == 0, timeout=10, what="stopped")
        wait_until(lambda: not manager._active, timeout=10, what="job released")
        assert duration_count("batch", "cancelled") == cancelled + 1
    finally:
        engine.release.set()
        manager.stop()


def test_a_schedule_counts_as_scheduled_between_windows_and_each_window_is_observed() -> None:
    engine, clock = FakeEngine(), Clock(1_800_000_000_000_000)
    manager = JobManager(MemorySpecs(), MemoryJobs(), engine, clock=clock, tick_seconds=3600)
    manager.put_spec("t", spec())
    windows = duration_count("scheduled", "succeeded")
    try:
        job_id = manager.create_job("t", scheduled_job()).job_id
        clock.now += MINUTE
        manager.report_job_counts()
        assert (jobs_gauge("scheduled"), jobs_gauge("running")) == (1, 0)
        manager.tick()
        wait_until(lambda: engine.running == 1, timeout=10, what="window running")
        manager.report_job_counts()
        assert (jobs_gauge("scheduled"), jobs_gauge("running")) == (0, 1)
        engine.release.set()
        wait_until(
            lambda: not manager._active[job_id].window_running, timeout=10, what="window done"
        )
        manager.report_job_counts()
        assert (jobs_gauge("scheduled"), jobs_gauge("running")) == (1, 0)
        assert duration_count("scheduled", "succeeded") == windows + 1
    finally:
        engine.release.set()
        manager.stop()


def test_lag_per_partition_is_the_latest_offset_minus_the_consumed_end() -> None:
    end = '{"raw": {"0": 10, "1": 7}}'
    latest = '{"raw": {"0": 15, "1": 7, "2": 3}}'
    assert partition_lags(end, latest) == {("raw", "0"): 5, ("raw", "1"): 0}
    assert partition_lags(None, latest) == {}
    assert partition_lags(end, "not json") == {}


def test_the_lag_gauge_shows_the_worst_stream_per_partition_and_forgets_ended_streams() -> None:
    topic = f"raw-{uuid.uuid4().hex[:8]}"
    lags = StreamLags()

    def lag(partition: str) -> Any:
        return REGISTRY.get_sample_value(
            "eventpipe_enrich_streaming_lag", {"topic": topic, "partition": partition}
        )

    lags.update("query-a", {(topic, "0"): 5, (topic, "1"): 2})
    lags.update("query-b", {(topic, "0"): 1, (topic, "1"): 9})
    assert (lag("0"), lag("1")) == (5, 9)
    lags.update("query-a", {(topic, "0"): 0, (topic, "1"): 0})
    assert (lag("0"), lag("1")) == (1, 9)
    lags.drop("query-b")
    assert (lag("0"), lag("1")) == (0, 0)
    lags.drop("query-a")
    assert (lag("0"), lag("1")) == (None, None)
