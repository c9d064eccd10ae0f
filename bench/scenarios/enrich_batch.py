"""Enrichment: batch rows/s against the same Spark join read from Parquet, and streaming
freshness (ingest acknowledgement -> enriched row readable) against raw Kafka delivery.

Runs against the local stack's Kafka and Bigtable emulator (``make up``), with tables and
topics of its own prefix. Spark runs embedded (local[2]). Sizes: quick 20k events, full 1M
(``EVENTPIPE_BENCH_ENRICH_EVENTS`` overrides). Besides the Parquet ceiling, the run measures
the raw Bigtable read of the same events on its own, the floor the Bigtable side cannot go
under with a Python reader.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from typing import Any

from eventpipe.common.v1 import event_pb2
from eventpipe.core import bigtable as core_bigtable
from eventpipe.core import bigtable_rows
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import producer_config
from eventpipe.core.storage.attributes import ATTRIBUTE_FAMILIES, encode_double
from eventpipe.core.storage.keys import row_key_for_dimension, row_key_for_event
from eventpipe.core.storage.rows import event_to_row
from eventpipe.core.storage.tables import DIMENSIONS_TABLE, ENRICHED_EVENTS_TABLE, RAW_EVENTS_TABLE
from eventpipe.core.storage.times import micros, timestamp_from_micros
from eventpipe.core.topic_contract import message_headers, message_key
from eventpipe.core.topology import ensure_topology
from google.cloud.bigtable.row import DirectRow
from google.cloud.bigtable.row_filters import CellsColumnLimitFilter
from google.cloud.bigtable.row_set import RowSet

from bench.harness import BenchContext, Measurement, median_of, timed

NAME = "enrich_batch"
DAY = 86_400_000_000
BASE = 1_767_225_600_000_000


def _spec() -> Any:
    """The bench's spec, as the domain's plain ``enrich.domain.spec.Spec``."""
    from enrich.domain.spec import DerivedField, Join, Spec

    return Spec(
        joins=[
            Join(dimension="products", key_field="attributes.product_id", fields=["price"]),
            Join(dimension="users", key_field="entity_id", fields=["tier"]),
        ],
        derived_fields=[DerivedField(name="revenue", expression="quantity * products.price")],
        metric_fields=["quantity", "revenue"],
    )


def _event(tenant: str, n: int, t: int, rng: random.Random) -> event_pb2.Event:
    event = event_pb2.Event(
        tenant_id=tenant,
        event_id=f"ev{n}",
        event_type=rng.choice(["view", "purchase"]),
        entity_id=f"u{rng.randrange(2000)}",
    )
    event.attributes["product_id"].string_value = f"p{rng.randrange(200)}"
    event.attributes["quantity"].int_value = rng.randrange(1, 5)
    event.event_time.CopyFrom(timestamp_from_micros(t))
    event.ingest_time.CopyFrom(timestamp_from_micros(t))
    return event


def _load(settings: CommonSettings, tenant: str, count: int) -> None:
    rng = random.Random(1)
    client = bigtable_rows.gapic_client()
    raw = bigtable_rows.table_path(
        settings.bigtable_project,
        settings.bigtable_instance,
        settings.table_prefix + RAW_EVENTS_TABLE,
    )
    batch = []
    for n in range(count):
        batch.append(event_to_row(_event(tenant, n, BASE + rng.randrange(DAY), rng)))
        if len(batch) == 1000:
            bigtable_rows.mutate_rows_or_raise(client, raw, batch)
            batch = []
    bigtable_rows.mutate_rows_or_raise(client, raw, batch)
    dims = core_bigtable.table(settings, DIMENSIONS_TABLE)
    rows = []
    for p in range(200):
        for version, start in enumerate((BASE - DAY, BASE + DAY // 2)):
            row = DirectRow(row_key_for_dimension(tenant, "products", f"p{p}", start))
            row.set_cell(
                ATTRIBUTE_FAMILIES["double_value"], b"price", encode_double(1.0 + p + version)
            )
            rows.append(row)
    for u in range(2000):
        row = DirectRow(row_key_for_dimension(tenant, "users", f"u{u}", BASE - DAY))
        row.set_cell(ATTRIBUTE_FAMILIES["string_value"], b"tier", b"gold" if u % 3 else b"silver")
        rows.append(row)
    for start in range(0, len(rows), 1000):
        dims.mutate_rows(rows[start : start + 1000])


def _settings(ctx: BenchContext, token: str) -> CommonSettings:
    return ctx.common.model_copy(
        update={"table_prefix": f"bench{token}_", "topic_prefix": f"bench{token}."}
    )


def run(ctx: BenchContext) -> list[Measurement]:
    from enrich.adapters.bigtable_io import BigtableTarget
    from enrich.adapters.spark_engine import (
        EVENT_SCHEMA,
        BatchRequest,
        SparkEngine,
        SparkSettings,
        StreamingRequest,
        aggregate_frame,
        enrich_frame,
    )
    from enrich.domain.spec import validate_spec
    from eventpipe.stack.spark_connectors import connector_jars

    token = uuid.uuid4().hex[:8]
    settings = _settings(ctx, token)
    tenant = f"bench-{token}"
    count = int(os.environ.get("EVENTPIPE_BENCH_ENRICH_EVENTS", 20_000 if ctx.quick else 1_000_000))
    spark_settings = SparkSettings(
        master="local[2]",
        partitions=4,
        shuffle_partitions=4,
        jars=tuple(str(j) for j in connector_jars()),
    )
    target = BigtableTarget(
        settings.bigtable_project,
        settings.bigtable_instance,
        settings.table_prefix,
        os.environ.get("BIGTABLE_EMULATOR_HOST"),
    )
    engine = SparkEngine(spark_settings, target)
    spec = validate_spec(_spec(), version=1)
    # The JVM starts before this process opens gRPC channels (a fork after them failed here).
    spark = engine.spark
    ensure_topology(settings)
    _load(settings, tenant, count)
    measurements: list[Measurement] = []
    # Parquet copies and streaming checkpoints (a 1M-event run writes hundreds of MB): removed
    # at the end like the scenario's tables.
    scratch = tempfile.mkdtemp(prefix="enrich-bench-")
    try:
        # The ceiling: the same events and dimension versions as Parquet, the same joins and
        # aggregates, written to Spark's no-op sink.
        events = engine.read_events(tenant, BASE, BASE + DAY)
        folder = f"{scratch}/parquet"
        events.write.mode("overwrite").parquet(f"{folder}/events")
        dims, broadcast = engine.read_dimensions(tenant, spec)
        for name, frame in dims.items():
            frame.write.mode("overwrite").parquet(f"{folder}/{name}")

        def parquet_job() -> None:
            parquet_events = spark.read.schema(EVENT_SCHEMA).parquet(f"{folder}/events")
            parquet_dims = {n: spark.read.parquet(f"{folder}/{n}").cache() for n in dims}
            for frame in parquet_dims.values():
                frame.count()
            enriched = enrich_frame(parquet_events, parquet_dims, spec, broadcast).cache()
            enriched.write.format("noop").mode("overwrite").save()
            aggregate_frame(enriched, spec).write.format("noop").mode("overwrite").save()
            enriched.unpersist()

        def bigtable_job() -> None:
            engine.run_batch(BatchRequest(f"bench-{token}", tenant, spec, BASE, BASE + DAY))

        def bigtable_read() -> None:
            engine.read_events(tenant, BASE, BASE + DAY).write.format("noop").mode(
                "overwrite"
            ).save()

        def rate(job: Any) -> float:
            """Median events/s of ``job`` over the context's rounds."""
            return median_of(ctx.rounds, lambda: count / timed(job))

        parquet_rate = rate(parquet_job)
        read_rate = rate(bigtable_read)
        bigtable_rate = rate(bigtable_job)
        measurements.append(
            Measurement(
                name=f"batch enrichment, {count:,} events, 2 joins + aggregates + profiles",
                value=bigtable_rate,
                unit="events/s",
                baseline_name="same Spark joins + aggregates over Parquet (noop sink)",
                baseline_value=parquet_rate,
                note="Bigtable side: key-range partitioned reads in Spark tasks (raw GAPIC "
                "ReadRows, rows to Spark as Arrow), MutateRows of enriched rows, hour/day "
                "aggregates and profiles, on the emulator, local[2] on a 2-core machine.",
            )
        )
        measurements.append(
            Measurement(
                name=f"batch enrichment vs its Bigtable read alone, {count:,} events",
                value=bigtable_rate,
                unit="events/s",
                baseline_name="the job's key-range read of the same events into Spark (noop sink)",
                baseline_value=read_rate,
                note="The read alone is the floor of the Bigtable side: Python tasks decoding "
                "emulator rows share the 2 cores with the JVM and the emulator.",
            )
        )
        measurements += _freshness(
            ctx, settings, engine, spec, tenant, StreamingRequest, f"{scratch}/checkpoints"
        )
    finally:
        engine.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return measurements


def _freshness(
    ctx: BenchContext,
    settings: CommonSettings,
    engine: Any,
    spec: Any,
    tenant: str,
    request_type: Any,
    folder: str,
) -> list[Measurement]:
    from confluent_kafka import Consumer, Producer

    os.makedirs(folder, exist_ok=True)
    handle = engine.start_streaming(
        request_type(
            f"bench-stream-{tenant}",
            tenant,
            spec,
            settings.kafka_bootstrap_servers,
            settings.raw_topic,
            1.0,
            folder,
        )
    )
    deadline = time.monotonic() + 180
    while not handle.started() and time.monotonic() < deadline:
        time.sleep(0.2)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"bench-{tenant}",
            "auto.offset.reset": "latest",
        }
    )
    consumer.subscribe([settings.raw_topic])
    while not consumer.assignment():
        consumer.poll(0.2)
    producer = Producer(producer_config(settings, **{"linger.ms": 0}))
    enriched_table = core_bigtable.table(settings, ENRICHED_EVENTS_TABLE)
    acked: dict[bytes, float] = {}
    consumed: dict[bytes, float] = {}
    readable: dict[bytes, float] = {}
    stop = threading.Event()

    client = bigtable_rows.gapic_client()
    raw_path = bigtable_rows.table_path(
        settings.bigtable_project,
        settings.bigtable_instance,
        settings.table_prefix + RAW_EVENTS_TABLE,
    )

    def consume() -> None:
        while not stop.is_set():
            message = consumer.poll(0.1)
            if message is not None and message.error() is None:
                event = event_pb2.Event.FromString(message.value() or b"")
                key = row_key_for_event(
                    tenant, event.entity_id, micros(event.event_time), event.event_id
                )
                # The raw path: a plain consumer writing the event's row itself.
                bigtable_rows.mutate_rows_or_raise(client, raw_path, [event_to_row(event)])
                consumed.setdefault(key, time.monotonic())

    def watch() -> None:
        # Polls every acknowledged, not yet readable row in one read_rows call, while events
        # are still being produced, so a row is timed when it appears, not after the run.
        while not stop.is_set():
            pending = [k for k in list(acked) if k not in readable]
            if pending:
                row_set = RowSet()
                for key in pending:
                    row_set.add_row_key(key)
                seen = time.monotonic()
                for row in enriched_table.read_rows(
                    row_set=row_set, filter_=CellsColumnLimitFilter(1)
                ):
                    readable.setdefault(bytes(row.row_key), seen)
            time.sleep(0.05)

    threads = [
        threading.Thread(target=consume, daemon=True),
        threading.Thread(target=watch, daemon=True),
    ]
    for thread in threads:
        thread.start()
    rng = random.Random(2)
    total = 40 if ctx.quick else 150
    # The first micro-batches after start run on a cold JVM and cold Python workers; a running
    # job's freshness is measured after 10 s of unmeasured traffic.
    warmup = 100
    now = time.time_ns() // 1000
    for n in range(-warmup, total):
        event = _event(tenant, 10_000_000 + n, now + n, rng)
        key = row_key_for_event(tenant, event.entity_id, micros(event.event_time), event.event_id)

        def delivered(err: Any, _msg: Any, key: bytes = key, measured: bool = n >= 0) -> None:
            if err is None and measured:
                acked[key] = time.monotonic()

        producer.produce(
            settings.raw_topic,
            key=message_key(tenant, event.entity_id),
            value=event.SerializeToString(),
            headers=message_headers(event),  # type: ignore[arg-type]
            on_delivery=delivered,
        )
        producer.flush(10)
        time.sleep(0.1)
    deadline = time.monotonic() + 120
    while len(readable) < len(acked) and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join(5)
    consumer.close()
    handle.stop()
    lags = sorted(readable[k] - acked[k] for k in readable)
    raw = sorted(consumed[k] - acked[k] for k in consumed if k in acked)
    if not lags or not raw:
        return []

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    note = f"{len(readable)}/{len(acked)} events readable; trigger 1 s; 10 events/s"
    return [
        Measurement(
            name="streaming freshness p50 (ack -> enriched row readable)",
            value=pct(lags, 0.5),
            unit="s",
            baseline_name="plain consumer writing the row itself, ack -> written p50",
            baseline_value=pct(raw, 0.5),
            higher_is_better=False,
            note=note,
        ),
        Measurement(
            name="streaming freshness p99 (ack -> enriched row readable)",
            value=pct(lags, 0.99),
            unit="s",
            baseline_name="plain consumer writing the row itself, ack -> written p99",
            baseline_value=pct(raw, 0.99),
            higher_is_better=False,
        ),
    ]
