"""The job codec between the domain's Job and the EnrichmentJob proto: a stored row written
before the domain owned plain types reads back, and writes again, to the same message."""

from __future__ import annotations

from enrich.adapters.job_codec import job_from_proto, job_to_proto
from enrich.domain.records import Job, JobMode, JobState
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.enrich.v1 import enrich_pb2

T = 1_800_000_000_000_000


def test_a_stored_job_reads_and_writes_back_to_the_same_message() -> None:
    batch = enrich_pb2.EnrichmentJob(
        job_id="j1",
        mode=enrich_pb2.JOB_MODE_BATCH,
        spec_version=3,
        state=enrich_pb2.JOB_STATE_SUCCEEDED,
        progress=1.0,
        error="",
    )
    batch.time_range.start_time.CopyFrom(timestamp_from_micros(T - 60_000_000))
    batch.time_range.end_time.CopyFrom(timestamp_from_micros(T))
    batch.counters.read, batch.counters.unmatched = 10, 3
    for name, at in (("create_time", T), ("start_time", T + 1), ("end_time", T + 2)):
        getattr(batch, name).CopyFrom(timestamp_from_micros(at))
    scheduled = enrich_pb2.EnrichmentJob(
        job_id="j2", mode=enrich_pb2.JOB_MODE_SCHEDULED, state=enrich_pb2.JOB_STATE_RUNNING
    )
    scheduled.schedule.interval.FromSeconds(900)
    scheduled.schedule.window.FromSeconds(3600)
    scheduled.schedule.lateness.FromSeconds(60)
    scheduled.error = "RuntimeError: boom"
    streaming = enrich_pb2.EnrichmentJob(job_id="j3", mode=enrich_pb2.JOB_MODE_STREAMING)
    streaming.trigger_interval.FromMilliseconds(250)
    for message in (batch, scheduled, streaming):
        assert job_to_proto(job_from_proto(message)) == message

    job = job_from_proto(batch)
    assert (job.mode, job.state, job.time_range.end_micros) == (
        JobMode.BATCH,
        JobState.SUCCEEDED,
        T,
    )
    assert (job.counters.read, job.counters.unmatched, job.ended_micros) == (10, 3, T + 2)
    assert job_from_proto(streaming).trigger_interval_micros == 250_000


def test_unset_fields_stay_unset_and_an_unknown_mode_reads_as_unspecified() -> None:
    job = job_from_proto(enrich_pb2.EnrichmentJob(mode=99))  # type: ignore[arg-type]
    assert job == Job()
    assert job_to_proto(Job()) == enrich_pb2.EnrichmentJob()
