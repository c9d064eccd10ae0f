"""Streaming enrichment: the Kafka source decoded by the store's own rules, each micro-batch
enriched and written in one Spark job (in a span ``enrich.stream_batch`` when tracing is on),
the consumer lag of the streams, and the handle the job manager holds."""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eventpipe.core import tracing
from eventpipe.core.validation import EventLimits
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQueryListener

from enrich import metrics
from enrich.adapters import bigtable_io
from enrich.adapters.spark.layout import EVENT_SCHEMA, arrow_rows, event_tuple
from enrich.adapters.spark.session import first_line, tenant_pool
from enrich.adapters.spark.transforms import enrich_frame
from enrich.adapters.spark.writes import MICRO_BATCH_RESULT, write_micro_batch
from enrich.domain.spec import CheckedSpec
from enrich.domain.work import Counters

if TYPE_CHECKING:
    from enrich.adapters.spark_engine import SparkEngine

log = logging.getLogger(__name__)


def tenant_events(
    rows: Iterable[Any], tenant_id: str, limits: EventLimits, poison: Any
) -> Iterator[tuple[Any, ...]]:
    """The events of ``tenant_id`` among raw-topic rows of the Kafka source (key, value,
    headers, timestamp_ms), decoded by the store consumer's own ``decode_raw_event``: a message
    the store dead-letters is never enriched. Poison messages that name this tenant (key prefix
    or tenant header) are skipped and counted in the ``poison`` accumulator; other tenants'
    are skipped silently (their counts are not this tenant's business)."""
    from eventpipe.core.topic_contract import HEADER_TENANT, PoisonMessage, decode_raw_event

    key_prefix = f"{tenant_id}#".encode()
    tenant_header = tenant_id.encode()
    for row in rows:
        key = None if row["key"] is None else bytes(row["key"])
        headers = [
            (h["key"], b"" if h["value"] is None else bytes(h["value"]))
            for h in (row["headers"] or ())
        ]
        try:
            event = decode_raw_event(
                key,
                None if row["value"] is None else bytes(row["value"]),
                headers,
                row["timestamp_ms"],
                limits,
                time.time_ns() // 1000,
            )
        except PoisonMessage:
            if (key or b"").startswith(key_prefix) or (HEADER_TENANT, tenant_header) in headers:
                poison.add(1)
            continue
        if event.tenant_id == tenant_id:
            yield event_tuple(event)


@dataclass
class StreamingRequest:
    job_id: str
    tenant_id: str
    spec: CheckedSpec
    # Spark's Kafka source options: bootstrap servers and security (core.kafka.spark_kafka_options)
    kafka_options: Mapping[str, str]
    topic: str
    trigger_seconds: float
    checkpoint_dir: str
    dimension_refresh_seconds: float = 30.0
    max_events_per_batch: int = 200_000
    event_limits: EventLimits = field(default_factory=EventLimits)
    on_batch: Callable[[Counters], None] = lambda _c: None
    on_entities_changed: Callable[[list[tuple[str, str]]], None] = lambda _e: None


class StreamingHandle:
    """A running streaming query: ``stop()`` ends it, ``error()`` tells why it died."""

    def __init__(self, query: Any) -> None:
        self.query = query

    def started(self) -> bool:
        """True once the first micro-batch ran, so the source's start offsets are fixed."""
        return self.query.lastProgress is not None

    def is_active(self) -> bool:
        try:
            return bool(self.query.isActive)
        except Exception:  # the session under it broke
            return False

    def error(self) -> str | None:
        try:
            exc = self.query.exception()
        except Exception as broken:
            return first_line(broken)
        return None if exc is None else str(exc).splitlines()[0]

    def stop(self) -> None:
        try:
            self.query.stop()
        except Exception:
            log.info("stopping a stream on a broken session failed", exc_info=True)


# ---------------------------------------------------------------- consumer lag

PartitionLags = dict[tuple[str, str], int]
"""(topic, partition) -> messages behind the partition's latest offset."""


def partition_lags(end_offset: str | None, latest_offset: str | None) -> PartitionLags:
    """A Kafka source's lag from one progress report: its offsets are JSON objects
    ``{"topic": {"0": 42, ...}}``; a partition the latest offsets do not name is left out."""
    if not end_offset or not latest_offset:
        return {}
    try:
        end, latest = json.loads(end_offset), json.loads(latest_offset)
    except ValueError:
        return {}
    lags: PartitionLags = {}
    for topic, partitions in latest.items():
        for partition, offset in partitions.items():
            consumed = end.get(topic, {}).get(partition)
            if consumed is not None:
                lags[(topic, partition)] = max(0, int(offset) - int(consumed))
    return lags


class StreamLags:
    """The lag of every streaming query of this process, published per partition as
    ``eventpipe_enrich_streaming_lag``: several jobs (tenants) read the same raw topic, each
    at its own offsets, so a partition shows the largest lag of them."""

    def __init__(self, gauge: Any = metrics.STREAMING_LAG) -> None:
        self._gauge = gauge
        self._by_query: dict[str, PartitionLags] = {}
        self._published: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def update(self, query_id: str, lags: PartitionLags) -> None:
        with self._lock:
            self._by_query[query_id] = lags
            self._publish()

    def drop(self, query_id: str) -> None:
        with self._lock:
            self._by_query.pop(query_id, None)
            self._publish()

    def _publish(self) -> None:
        worst: PartitionLags = {}
        for lags in self._by_query.values():
            for label, lag in lags.items():
                worst[label] = max(lag, worst.get(label, 0))
        for label in self._published - set(worst):
            self._gauge.remove(*label)
        for (topic, partition), lag in worst.items():
            self._gauge.labels(topic, partition).set(lag)
        self._published = set(worst)


STREAM_LAGS = StreamLags()


class LagListener(StreamingQueryListener):
    """Feeds ``STREAM_LAGS`` from the progress Spark reports after every micro-batch (and
    every ``spark.sql.streaming.noDataProgressEventInterval`` while a stream is idle)."""

    def onQueryStarted(self, event: Any) -> None:
        pass

    def onQueryProgress(self, event: Any) -> None:
        progress = event.progress
        lags: PartitionLags = {}
        for source in progress.sources:
            lags.update(partition_lags(source.endOffset, source.latestOffset))
        STREAM_LAGS.update(str(progress.id), lags)

    def onQueryIdle(self, event: Any) -> None:
        pass

    def onQueryTerminated(self, event: Any) -> None:
        STREAM_LAGS.drop(str(event.id))


_LISTENED: weakref.WeakSet[SparkSession] = weakref.WeakSet()
_LISTENED_LOCK = threading.Lock()


def listen_for_lag(spark: SparkSession) -> None:
    """Registers the lag listener once per session (a rebuilt session gets its own)."""
    with _LISTENED_LOCK:
        if spark not in _LISTENED:
            spark.streams.addListener(LagListener())
            _LISTENED.add(spark)


# ---------------------------------------------------------------- traces


def batch_traceparent(batch: DataFrame, tenant_id: str) -> bytes | None:
    """The ``traceparent`` header of one of the tenant's messages in ``batch``: the span of the
    micro-batch continues that message's trace (one parent per span; the other messages'
    traces are not linked). A small extra Spark action, run only while tracing is on."""
    prefix = f"{tenant_id}#"
    headers = F.filter(F.col("headers"), lambda h: h["key"] == tracing.HEADER)
    rows = (
        batch.where(F.col("key").cast("string").startswith(prefix))
        .select(headers.getItem(0).getField("value").alias("traceparent"))
        .where(F.col("traceparent").isNotNull())
        .limit(1)
        .collect()
    )
    return bytes(rows[0]["traceparent"]) if rows else None


SINGLE_TASK_MAX_EVENTS = 5_000
"""Micro-batches up to this size run in one task: no shuffle, the lowest latency."""


def _by_entity(frame: DataFrame, query: Any, max_partitions: int = 64) -> DataFrame:
    """Puts every event of an entity in one partition: a small micro-batch in one task
    (coalesce, no shuffle), a large one hash-partitioned by entity. The previous batch's size
    picks the way (the current one is not known without reading it twice); both are correct,
    only the speed differs."""
    progress = query.lastProgress if query is not None else None
    rows = int(progress["numInputRows"]) if progress else 0
    if rows <= SINGLE_TASK_MAX_EVENTS:
        return frame.coalesce(1)
    partitions = min(max_partitions, -(-rows // SINGLE_TASK_MAX_EVENTS))
    return frame.repartition(partitions, "tenant_id", "entity_id")


def start_streaming_query(engine: SparkEngine, request: StreamingRequest) -> StreamingHandle:
    spark = engine.spark
    target = engine.target
    spec = request.spec
    tenant_id = request.tenant_id
    state: dict[str, Any] = {"dims": None, "loaded_at": 0.0}

    def dimensions() -> tuple[dict[str, DataFrame], dict[str, bool]]:
        now = time.monotonic()
        if state["dims"] is None or now - state["loaded_at"] > request.dimension_refresh_seconds:
            if state["dims"] is not None:
                for frame in state["dims"][0].values():
                    frame.unpersist()
            state["dims"] = engine.read_dimensions(tenant_id, spec)
            state["loaded_at"] = now
        return state["dims"]  # type: ignore[no-any-return]

    def process(batch: DataFrame, batch_id: int) -> None:
        if not tracing.enabled():
            enrich_batch(batch)
            return
        with tracing.span(
            "enrich.stream_batch",
            parent=batch_traceparent(batch, tenant_id),
            attributes={
                "eventpipe.tenant_id": tenant_id,
                "eventpipe.job_id": request.job_id,
                "eventpipe.batch_id": batch_id,
            },
        ) as current:
            counters = enrich_batch(batch)
            if current is not None and counters is not None:
                current.set_attribute("eventpipe.events_read", counters.read)
                current.set_attribute("eventpipe.events_unmatched", counters.unmatched)

    def enrich_batch(batch: DataFrame) -> Counters | None:
        sc = spark.sparkContext
        sc.setJobGroup(request.job_id, f"stream {tenant_id}", interruptOnCancel=True)
        sc.setLocalProperty("spark.scheduler.pool", tenant_pool(tenant_id))

        poison = sc.accumulator(0)
        limits = request.event_limits

        def decode(rows: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
            return tenant_events(rows, tenant_id, limits, poison)

        raw = batch.select(
            "key", "value", "headers", F.unix_millis("timestamp").alias("timestamp_ms")
        )
        events = spark.createDataFrame(raw.rdd.mapPartitions(decode), EVENT_SCHEMA)
        dims, broadcast = dimensions()
        # One Spark job per micro-batch: the joins, then the writes (see write_micro_batch)
        # with each entity's events in one task.
        frame = _by_entity(
            enrich_frame(events, dims, spec, broadcast),
            state.get("query"),
            engine.settings.shuffle_partitions,
        )

        def write(batches: Iterable[Any]) -> Iterator[Any]:
            import pyarrow as pa
            from pyspark.sql.pandas.types import to_arrow_schema

            results = list(write_micro_batch(arrow_rows(batches), target, spec))
            yield pa.RecordBatch.from_pylist(results, schema=to_arrow_schema(MICRO_BATCH_RESULT))

        results = frame.mapInArrow(write, MICRO_BATCH_RESULT).collect()
        non_finite: Counter[str] = Counter()
        for r in results:
            if r["kind"] == "non_finite":
                non_finite[r["where"]] += r["n"]
        bigtable_io.count_non_finite(non_finite)
        read = sum(r["n"] for r in results if r["kind"] == "read")
        skipped = int(poison.value)
        if skipped:
            log.warning(
                "skipped raw-topic messages that break the topic contract",
                extra={"job_id": request.job_id, "poison_messages": skipped},
            )
        if not read:
            if skipped:
                request.on_batch(Counters(0, 0, 0, skipped))
            return None
        unmatched = sum(r["n"] for r in results if r["kind"] == "unmatched")
        request.on_entities_changed(
            [(r["tenant_id"], r["entity_id"]) for r in results if r["kind"] == "entity"]
        )
        counters = Counters(read, read - unmatched, unmatched, skipped)
        request.on_batch(counters)
        return counters

    listen_for_lag(spark)
    query: Any = (
        spark.readStream.format("kafka")
        .options(**request.kafka_options)
        .option("subscribe", request.topic)
        .option("includeHeaders", "true")  # decode_raw_event checks them
        .option("startingOffsets", "latest")
        .option("failOnDataLoss", "false")
        # A task reads a fixed offset range; the broker's default 500 ms fetch wait on each
        # partition's last fetch was most of a small micro-batch's time.
        .option("kafka.fetch.max.wait.ms", "20")
        # Bounds a micro-batch after a pause or backlog, so one batch cannot exhaust memory.
        .option("maxOffsetsPerTrigger", str(request.max_events_per_batch))
        .load()
        .writeStream.queryName(f"enrich-{request.job_id}")
        .option("checkpointLocation", request.checkpoint_dir)
        .trigger(processingTime=f"{int(request.trigger_seconds * 1000)} milliseconds")
        .foreachBatch(process)
        .start()
    )
    state["query"] = query
    return StreamingHandle(query)


class RestartingStream:
    """A streaming job's query that, when the Spark session under it broke and was rebuilt,
    starts again from its checkpoint on the new session (at most ``max_restarts`` times):
    another tenant breaking the session does not fail this one's stream."""

    def __init__(self, engine: SparkEngine, request: StreamingRequest, max_restarts: int = 3):
        self.engine = engine
        self.request = request
        self.restarts_left = max_restarts
        self._stopped = False
        self._lock = threading.Lock()
        self.engine.ensure_session()
        self._generation = engine.generation
        self._handle: StreamingHandle = engine.start_streaming(request)

    def is_active(self) -> bool:
        with self._lock:
            if self._handle.is_active():
                return True
            if self._stopped or self.restarts_left <= 0:
                return False
            if not self.engine.recover(self._generation):
                return False  # the query died by itself: error() says why
            self.restarts_left -= 1
            log.warning(
                "restarting a stream on the rebuilt Spark session",
                extra={"job_id": self.request.job_id},
            )
            self._generation = self.engine.generation
            self._handle = self.engine.start_streaming(self.request)
            return True

    def error(self) -> str | None:
        return self._handle.error()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            handle = self._handle
        handle.stop()
