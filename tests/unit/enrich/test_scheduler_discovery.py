"""Replicas find each other's schedules without a restart: a schedule created on one replica
after another started is ticked by both, and when its creator dies mid-window, the other takes
the window over once the lease expired (in-memory store, fake engines, one shared clock)."""

from __future__ import annotations

from typing import Any

from enrich.domain.records import JobState
from eventpipe.core.waiting import wait_until

from tests.unit.enrich.test_job_manager import (
    LEASE,
    MINUTE,
    SECOND,
    Clock,
    FakeEngine,
    MemoryJobs,
    MemorySpecs,
    replica,
    scheduled_job,
    spec,
)


def two_replicas() -> tuple[Any, Any, FakeEngine, FakeEngine, Clock, MemoryJobs]:
    """Replicas a and b on one store and clock, each with an engine of its own; b started
    first, before any job existed."""
    specs, jobs, clock = MemorySpecs(), MemoryJobs(), Clock(1_800_000_000_000_000)
    engine_a, engine_b = FakeEngine(), FakeEngine()
    b = replica((specs, jobs, engine_b, clock), "replica-b")
    b.start()
    a = replica((specs, jobs, engine_a, clock), "replica-a")
    return a, b, engine_a, engine_b, clock, jobs


def test_a_schedule_created_on_another_replica_after_start_is_found_and_ticked() -> None:
    a, b, engine_a, engine_b, _clock, _jobs = two_replicas()
    engine_a.release.set()
    engine_b.release.set()
    try:
        a.put_spec("t", spec())
        job_id = a.create_job("t", scheduled_job()).job_id
        assert job_id not in b._active
        assert b.discover_schedules() == 1
        assert b.discover_schedules() == 0  # known now: indexed once
        # Both tick the due window; the claim lets exactly one of them run it.
        b.tick()
        a.tick()
        wait_until(
            lambda: len(engine_a.windows) + len(engine_b.windows) == 1,
            timeout=10,
            what="the first window, on one replica",
        )
        assert (len(engine_a.windows), len(engine_b.windows)) == (0, 1)
    finally:
        b.stop()
        a.stop()


def test_the_window_of_a_replica_that_died_is_taken_over_after_its_lease() -> None:
    a, b, engine_a, engine_b, clock, jobs = two_replicas()
    engine_b.release.set()
    try:
        a.put_spec("t", spec())
        job_id = a.create_job("t", scheduled_job()).job_id
        a.tick()  # a claims the window and runs it ... and dies: its engine never returns
        wait_until(lambda: engine_a.running == 1, timeout=10, what="a runs the window")
        b.discover_schedules()
        b.tick()
        assert engine_b.windows == []  # a's lease is live
        clock.now += LEASE - SECOND
        b.tick()
        assert engine_b.windows == []
        clock.now += SECOND  # a renewed nothing: its lease ends now
        b.tick()
        wait_until(lambda: len(engine_b.windows) == 1, timeout=10, what="b takes over")
        assert engine_b.windows == engine_a.windows  # the same window, not a later one
        wait_until(
            lambda: jobs.get("t", job_id).next_run_micros > clock.now,
            timeout=10,
            what="the window done and the next one scheduled",
        )
        assert jobs.get("t", job_id).job.state == JobState.RUNNING
    finally:
        engine_a.release.set()
        b.stop()
        a.stop()


def test_a_schedule_cancelled_on_another_replica_leaves_this_ones_index() -> None:
    a, b, engine_a, engine_b, clock, _jobs = two_replicas()
    engine_a.release.set()
    engine_b.release.set()
    try:
        a.put_spec("t", spec())
        job_id = a.create_job("t", scheduled_job()).job_id
        b.discover_schedules()
        a.cancel_job("t", job_id)
        clock.now += MINUTE
        b.tick()
        assert job_id not in b._active
        assert b.discover_schedules() == 0
        assert engine_b.windows == []
    finally:
        b.stop()
        a.stop()
