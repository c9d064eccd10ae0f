"""Pure functions of a job's windows: validation of the requested job, the batch window, a
schedule's window, its next due time and the retry backoff of a failed window."""

from __future__ import annotations

from typing import Any

from eventpipe.core.errors import InvalidArgument, Violation
from eventpipe.core.storage.times import micros
from eventpipe.enrich.v1 import enrich_pb2

MIN_SCHEDULE_INTERVAL_MICROS = 60_000_000
MIN_TRIGGER_MICROS = 100_000


def duration_micros(duration: Any) -> int:
    return int(duration.seconds) * 1_000_000 + int(duration.nanos) // 1000


def validate_job(job: enrich_pb2.EnrichmentJob, now_micros: int, retention_micros: int) -> None:
    violations: list[Violation] = []
    if job.mode == enrich_pb2.JOB_MODE_BATCH:
        start, end = batch_window(job, now_micros, retention_micros)
        if start >= end:
            violations.append(Violation("job.time_range", "start_time must be before end_time"))
    elif job.mode == enrich_pb2.JOB_MODE_SCHEDULED:
        if not job.HasField("schedule"):
            violations.append(Violation("job.schedule", "required for JOB_MODE_SCHEDULED"))
        else:
            if duration_micros(job.schedule.interval) < MIN_SCHEDULE_INTERVAL_MICROS:
                violations.append(Violation("job.schedule.interval", "at least 1 minute"))
            if duration_micros(job.schedule.window) <= 0:
                violations.append(Violation("job.schedule.window", "must be positive"))
            if duration_micros(job.schedule.lateness) < 0:
                violations.append(Violation("job.schedule.lateness", "must not be negative"))
    elif job.mode == enrich_pb2.JOB_MODE_STREAMING:
        if job.HasField("trigger_interval") and (
            duration_micros(job.trigger_interval) < MIN_TRIGGER_MICROS
        ):
            violations.append(Violation("job.trigger_interval", "at least 100ms"))
    else:
        violations.append(Violation("job.mode", "choose BATCH, SCHEDULED or STREAMING"))
    if job.spec_version < 0:
        violations.append(Violation("job.spec_version", "must not be negative"))
    if violations:
        raise InvalidArgument(
            f"invalid job: {violations[0].field}: {violations[0].description}",
            violations=violations,
        )


def batch_window(
    job: enrich_pb2.EnrichmentJob, now_micros: int, retention_micros: int
) -> tuple[int, int]:
    end = micros(job.time_range.end_time) if job.time_range.HasField("end_time") else now_micros
    start = (
        micros(job.time_range.start_time)
        if job.time_range.HasField("start_time")
        else now_micros - retention_micros
    )
    return start, end


def scheduled_window(schedule: enrich_pb2.Schedule, run_at_micros: int) -> tuple[int, int]:
    """The window a run due at ``run_at`` enriches: it ends ``lateness`` before the run."""
    end = run_at_micros - duration_micros(schedule.lateness)
    return end - duration_micros(schedule.window), end


def next_run_after(schedule: enrich_pb2.Schedule, due_micros: int, now_micros: int) -> int:
    """The next due time after a run: one interval on, skipping intervals missed while down
    (the window of the next run covers them if window >= interval)."""
    interval = duration_micros(schedule.interval)
    following = due_micros + interval
    if following <= now_micros:
        following += (now_micros - following) // interval * interval + interval
    return following


def retry_delay_micros(
    schedule: enrich_pb2.Schedule, failures: int, initial_micros: int, max_micros: int
) -> int:
    """How long to wait after the ``failures``-th failure in a row of a window: ``initial``
    doubled per earlier failure, capped at ``max`` and at the schedule's interval."""
    cap = min(max_micros, duration_micros(schedule.interval))
    doublings = min(max(failures - 1, 0), 62)  # beyond that the cap holds anyway
    return max(min(initial_micros << doublings, cap), 0)
