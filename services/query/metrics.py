"""Prometheus metrics of the query service: cache behaviour and Bigtable read latency."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CACHE_HITS = Counter("eventpipe_query_cache_hits_total", "Answers served from the cache.", ["kind"])
CACHE_MISSES = Counter(
    "eventpipe_query_cache_misses_total",
    "Lookups that had to read Bigtable (or join one).",
    ["kind"],
)
CACHE_SHARED_READS = Counter(
    "eventpipe_query_cache_single_flight_joins_total",
    "Misses that waited for a read of the same key already in flight instead of reading.",
    ["kind"],
)
CACHE_EVICTIONS = Counter(
    "eventpipe_query_cache_evictions_total", "Entries dropped to stay within the size bounds."
)
CACHE_EXPIRATIONS = Counter(
    "eventpipe_query_cache_expirations_total", "Entries dropped because their TTL ran out."
)
CACHE_INVALIDATIONS = Counter(
    "eventpipe_query_cache_invalidations_total", "Entity changes applied to the cache."
)
CACHE_INVALIDATED_ENTRIES = Counter(
    "eventpipe_query_cache_invalidated_entries_total", "Entries dropped by entity changes."
)
# Each worker process has a cache of its own: entries and bytes add up, and the cache counts
# as suspended while any worker's is.
CACHE_ENTRIES = Gauge(
    "eventpipe_query_cache_entries", "Answers currently cached.", multiprocess_mode="livesum"
)
CACHE_BYTES = Gauge(
    "eventpipe_query_cache_bytes",
    "Estimated memory charged to cached answers.",
    multiprocess_mode="livesum",
)
CACHE_SUSPENDED = Gauge(
    "eventpipe_query_cache_suspended",
    "1 while the cache is bypassed because entity changes cannot be consumed.",
    multiprocess_mode="livemax",
)
BIGTABLE_READ_LATENCY = Histogram(
    "eventpipe_query_bigtable_read_seconds",
    "Bigtable reads by the query service, by operation.",
    ["operation"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BIGTABLE_READ_ERRORS = Counter(
    "eventpipe_query_bigtable_read_errors_total",
    "Failed Bigtable reads, by operation.",
    ["operation"],
)
INVALIDATION_DELAY = Histogram(
    "eventpipe_query_invalidation_delay_seconds",
    "From an entity change's changed_at to its invalidation being applied.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
