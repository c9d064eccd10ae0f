"""Prometheus metrics of the consumer daemon."""

from __future__ import annotations

from eventpipe.core.dead_letter_reasons import CLASS_NAMES
from prometheus_client import Counter, Gauge, Histogram

CONSUMER_LAG = Gauge(
    "eventpipe_store_consumer_lag",
    "High watermark minus committed offset, per partition.",
    ["topic", "partition"],
)
ROWS_WRITTEN = Counter("eventpipe_store_rows_written_total", "Event rows written to Bigtable.")
DEAD_LETTERED = Counter(
    "eventpipe_store_dead_lettered_total",
    "Messages sent to the dead-letter topic, by reason class "
    "(eventpipe.core.dead_letter_reasons: empty-value, undecodable, ..., other).",
    ["reason"],
)
for _name in CLASS_NAMES:  # every class exported from the start, at 0
    DEAD_LETTERED.labels(_name)
FRESHNESS = Histogram(
    "eventpipe_store_freshness_seconds",
    "From ingest's acknowledgement time (the event's ingest_time, header eventpipe-ingest-time) "
    "to the event's row being confirmed by Bigtable (readable), per stored event.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
)
BATCH_LATENCY = Histogram(
    "eventpipe_store_batch_latency_seconds",
    "From a batch's consumption to its offsets being committed.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
WRITE_RETRIES = Counter(
    "eventpipe_store_write_retries_total",
    "mutate_rows retries, by the gRPC code that caused them.",
    ["code"],
)
PAUSED = Gauge("eventpipe_store_consumer_paused", "1 while consumption is paused (Bigtable down).")
POISON = Counter(
    "eventpipe_store_poison_messages_total",
    "Messages dead-lettered because their content cannot become a row, by exception type "
    "(PoisonMessage: the topic contract refused it).",
    ["error"],
)
DUPLICATES = Counter(
    "eventpipe_store_duplicate_events_total",
    "Messages dropped because their (tenant_id, event_id) was already stored by another message.",
)
ERASED = Counter(
    "eventpipe_store_erased_events_dropped_total",
    "Events not stored (or deleted right after their write) because their entity was erased "
    "at or after their event time (DeleteEntity's tombstone).",
)
