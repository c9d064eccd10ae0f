"""Prometheus metrics of the enrich service (docs/enrich.md, "Metrics"). The names are a
contract: the dashboards and alert rules of the deployment read them.

``eventpipe_enrich_non_finite_values_total`` lives beside the code that tallies it in Spark's
workers (``enrich.adapters.bigtable_io``)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Gauge, Histogram

JOB_DURATION = Histogram(
    "eventpipe_enrich_job_duration_seconds",
    "How long an enrichment job ran, from its start (its creation if it never started) to its "
    "end, by mode and end state; a scheduled job counts each window.",
    ["mode", "state"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
)
JOBS = Gauge(
    "eventpipe_enrich_jobs",
    "Jobs this replica holds, by state: pending (waiting for a slot, or a stream starting), "
    "running (a batch job, a scheduled window or a stream at work), scheduled (a schedule "
    "between windows; every replica ticks every schedule, so take the max across replicas).",
    ["state"],
    multiprocess_mode="livesum",
)
JOB_STATES = ("pending", "running", "scheduled")
STREAMING_LAG = Gauge(
    "eventpipe_enrich_streaming_lag",
    "Messages of a raw-topic partition not yet enriched: the partition's latest offset minus "
    "the end offset of the last micro-batch, the largest over this replica's streaming jobs.",
    ["topic", "partition"],
    multiprocess_mode="livemax",
)


def observe_job_end(mode: str, state: str, seconds: float) -> None:
    JOB_DURATION.labels(mode, state).observe(max(0.0, seconds))


def set_job_counts(counts: Mapping[str, int]) -> None:
    for state in JOB_STATES:
        JOBS.labels(state).set(counts.get(state, 0))
