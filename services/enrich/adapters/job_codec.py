"""A job between the domain's plain ``Job`` and the wire's ``EnrichmentJob``: the servicer
answers with it, and the job store keeps its serialization (so stored rows read the same)."""

from __future__ import annotations

from eventpipe.core.storage.times import micros, timestamp_from_micros
from eventpipe.enrich.v1 import enrich_pb2

from enrich.domain.records import Job, JobMode, JobState, Schedule, TimeRange
from enrich.domain.work import Counters


def job_from_proto(message: enrich_pb2.EnrichmentJob) -> Job:
    """An unknown mode or state reads as UNSPECIFIED (validation refuses such a mode)."""
    mode = message.mode if message.mode in JobMode._value2member_map_ else 0
    state = message.state if message.state in JobState._value2member_map_ else 0
    time_range = message.time_range
    schedule = None
    if message.HasField("schedule"):
        schedule = Schedule(
            message.schedule.interval.ToMicroseconds(),
            message.schedule.window.ToMicroseconds(),
            message.schedule.lateness.ToMicroseconds(),
        )
    counters = message.counters
    return Job(
        job_id=message.job_id,
        mode=JobMode(mode),
        time_range=TimeRange(
            micros(time_range.start_time) if time_range.HasField("start_time") else None,
            micros(time_range.end_time) if time_range.HasField("end_time") else None,
        ),
        schedule=schedule,
        trigger_interval_micros=(
            message.trigger_interval.ToMicroseconds()
            if message.HasField("trigger_interval")
            else None
        ),
        spec_version=message.spec_version,
        state=JobState(state),
        progress=message.progress,
        counters=Counters(counters.read, counters.enriched, counters.unmatched, counters.failed),
        error=message.error,
        create_micros=micros(message.create_time) if message.HasField("create_time") else None,
        started_micros=micros(message.start_time) if message.HasField("start_time") else None,
        ended_micros=micros(message.end_time) if message.HasField("end_time") else None,
    )


def job_to_proto(job: Job) -> enrich_pb2.EnrichmentJob:
    message = enrich_pb2.EnrichmentJob(
        job_id=job.job_id,
        mode=int(job.mode),  # type: ignore[arg-type]
        spec_version=job.spec_version,
        state=int(job.state),  # type: ignore[arg-type]
        progress=job.progress,
        error=job.error,
    )
    if job.time_range.start_micros is not None:
        message.time_range.start_time.CopyFrom(timestamp_from_micros(job.time_range.start_micros))
    if job.time_range.end_micros is not None:
        message.time_range.end_time.CopyFrom(timestamp_from_micros(job.time_range.end_micros))
    if job.schedule is not None:
        schedule = message.schedule
        schedule.SetInParent()
        for target, value in (
            (schedule.interval, job.schedule.interval_micros),
            (schedule.window, job.schedule.window_micros),
            (schedule.lateness, job.schedule.lateness_micros),
        ):
            if value:
                target.FromMicroseconds(value)
    if job.trigger_interval_micros is not None:
        message.trigger_interval.FromMicroseconds(job.trigger_interval_micros)
    counters = job.counters
    if counters.read or counters.enriched or counters.unmatched or counters.failed:
        message.counters.read, message.counters.enriched = counters.read, counters.enriched
        message.counters.unmatched, message.counters.failed = counters.unmatched, counters.failed
    for name, moment in (
        ("create_time", job.create_micros),
        ("start_time", job.started_micros),
        ("end_time", job.ended_micros),
    ):
        if moment is not None:
            getattr(message, name).CopyFrom(timestamp_from_micros(moment))
    return message


def job_from_bytes(stored: bytes) -> Job:
    """A job as the job store keeps it (the proto's serialization)."""
    return job_from_proto(enrich_pb2.EnrichmentJob.FromString(stored))


def job_to_bytes(job: Job) -> bytes:
    return job_to_proto(job).SerializeToString()
