"""Prometheus metrics of the ingest service (served on the shared /metrics endpoint)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "eventpipe_ingest_events_total",
    "Events answered, by tenant, outcome (accepted, duplicate, rejected) and reason "
    "(for rejected: the code and the first refused field, e.g. INVALID_ARGUMENT:event_time).",
    ["tenant", "outcome", "reason"],
)
PRODUCE_LATENCY = Histogram(
    "eventpipe_ingest_produce_latency_seconds",
    "From queuing a batch's messages to the last Kafka delivery report of the batch.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUE_DEPTH = Gauge(
    "eventpipe_ingest_producer_queue_depth",
    "Messages in the Kafka producer's queue or in flight, not yet reported.",
)
IN_FLIGHT_EVENTS = Gauge(
    "eventpipe_ingest_in_flight_events", "Events produced and not yet confirmed (the bounded work)."
)
IN_FLIGHT_BYTES = Gauge(
    "eventpipe_ingest_in_flight_bytes", "Serialized bytes produced and not yet confirmed."
)
STREAMS_IDLE_CLOSED = Counter(
    "eventpipe_ingest_streams_idle_closed_total",
    "StreamEvents calls closed because they sent no batch within the idle timeout.",
)
