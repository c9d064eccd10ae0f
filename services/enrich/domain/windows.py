"""Pure functions of a job's windows: validation of the requested job, the batch window, a
schedule's window, its next due time and the retry backoff of a failed window."""

from __future__ import annotations

from eventpipe.core.errors import InvalidArgument, Violation

from enrich.domain.records import Job, JobMode, Schedule

MIN_SCHEDULE_INTERVAL_MICROS = 60_000_000
MIN_TRIGGER_MICROS = 100_000


def validate_job(job: Job, now_micros: int, retention_micros: int) -> None:
    violations: list[Violation] = []
    if job.mode == JobMode.BATCH:
        start, end = batch_window(job, now_micros, retention_micros)
        if start >= end:
            violations.append(Violation("job.time_range", "start_time must be before end_time"))
    elif job.mode == JobMode.SCHEDULED:
        if job.schedule is None:
            violations.append(Violation("job.schedule", "required for JOB_MODE_SCHEDULED"))
        else:
            if job.schedule.interval_micros < MIN_SCHEDULE_INTERVAL_MICROS:
                violations.append(Violation("job.schedule.interval", "at least 1 minute"))
            if job.schedule.window_micros <= 0:
                violations.append(Violation("job.schedule.window", "must be positive"))
            if job.schedule.lateness_micros < 0:
                violations.append(Violation("job.schedule.lateness", "must not be negative"))
    elif job.mode == JobMode.STREAMING:
        if job.trigger_interval_micros is not None and (
            job.trigger_interval_micros < MIN_TRIGGER_MICROS
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


def batch_window(job: Job, now_micros: int, retention_micros: int) -> tuple[int, int]:
    """The requested window; an unset end is now, an unset start the retention before now."""
    requested = job.time_range
    end = requested.end_micros if requested.end_micros is not None else now_micros
    start = (
        requested.start_micros
        if requested.start_micros is not None
        else now_micros - retention_micros
    )
    return start, end


def scheduled_window(schedule: Schedule, run_at_micros: int) -> tuple[int, int]:
    """The window a run due at ``run_at`` enriches: it ends ``lateness`` before the run."""
    end = run_at_micros - schedule.lateness_micros
    return end - schedule.window_micros, end


def next_run_after(schedule: Schedule, due_micros: int, now_micros: int) -> int:
    """The next due time after a run: one interval on, skipping intervals missed while down
    (the window of the next run covers them if window >= interval)."""
    interval = schedule.interval_micros
    following = due_micros + interval
    if following <= now_micros:
        following += (now_micros - following) // interval * interval + interval
    return following


def retry_delay_micros(
    schedule: Schedule, failures: int, initial_micros: int, max_micros: int
) -> int:
    """How long to wait after the ``failures``-th failure in a row of a window: ``initial``
    doubled per earlier failure, capped at ``max`` and at the schedule's interval."""
    cap = min(max_micros, schedule.interval_micros)
    doublings = min(max(failures - 1, 0), 62)  # beyond that the cap holds anyway
    return max(min(initial_micros << doublings, cap), 0)
