"""Store consumer: throughput into Bigtable as a ratio to a raw mutate_rows bulk write of the
same rows in the same run, freshness (producer ack -> row readable) at a steady rate, and the
consumer's peak RSS.

Runs against the local stack's Kafka and emulator (``eventpipe stack up``; the environment's
``BIGTABLE_EMULATOR_HOST``), with topic and table prefixes of its own. The consumer is the
real daemon, ``python -m store.consumer``, in its own process.

- Baseline: the rows (``schema.event_to_row`` of the same events, built beforehand) written
  with sequential 1,000-row MutateRows calls through the same client path the consumer uses,
  request building included. That is the emulator's and client's raw write ceiling.
- Consumer: the same events pre-produced to the raw topic; a fresh consumer group drains
  them. Rate = rows written between the first and the last observation of its
  ``eventpipe_store_rows_written_total`` counter (polled every 20 ms), so process start and
  the group join are not counted.
- Freshness: events produced at a steady rate (10k/s, or half the measured consumer rate if
  lower) by the topic contract (the ack is the Kafka
  delivery report, exactly when ingest acknowledges); one in 20 goes to a probe entity whose
  rows a reader scans every 10 ms. Freshness = first scan that shows the row - the ack.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from eventpipe.common.v1 import event_pb2
from eventpipe.core import topic_contract
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import producer_config
from eventpipe.core.schema import (
    RAW_EVENTS_TABLE,
    entity_prefix,
    event_to_row,
    prefix_end,
    timestamp_from_micros,
)
from eventpipe.core.topology import ensure_topology
from eventpipe.stack.probes import free_port
from eventpipe.stack.waiting import wait_until

from bench.harness import BenchContext, Measurement

NAME = "store_consumer"
REPO = Path(__file__).resolve().parents[2]
TENANT = "bench"
ROWS_WRITTEN = re.compile(rb"^eventpipe_store_rows_written_total ([0-9.e+]+)$", re.M)


def _settings(ctx: BenchContext, token: str) -> CommonSettings:
    return ctx.common.model_copy(
        update={"topic_prefix": f"bench{token}.", "table_prefix": f"bench{token}_"}
    )


def _events(count: int, entities: int = 1000) -> list[event_pb2.Event]:
    now = int(time.time() * 1_000_000)
    events = []
    for i in range(count):
        event = event_pb2.Event(
            tenant_id=TENANT,
            event_id=f"e{i:08d}",
            event_type="page_view" if i % 10 else "add_to_cart",
            entity_id=f"user-{(i * 7919) % entities}",
        )
        event.event_time.CopyFrom(timestamp_from_micros(now - i * 100))
        event.ingest_time.CopyFrom(timestamp_from_micros(now))
        event.attributes["url"].string_value = f"/products/{i % 5000}"
        event.attributes["session_id"].string_value = f"s{i // 20}"
        event.attributes["position"].int_value = i % 50
        event.attributes["price"].double_value = (i % 1000) / 10
        events.append(event)
    return events


def _produce(common: CommonSettings, events: list[event_pb2.Event]) -> None:
    producer = Producer(producer_config(common))
    for event in events:
        while True:
            try:
                producer.produce(
                    common.raw_topic,
                    key=topic_contract.message_key(event.tenant_id, event.entity_id),
                    value=event.SerializeToString(),
                    headers=topic_contract.message_headers(event),  # type: ignore[arg-type]
                )
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError("events not acknowledged by Kafka")


def _baseline_rate(common: CommonSettings, rows: list[Any]) -> float:
    from store.adapters.bigtable import BigtableRowWriter
    from store.server import ensure_store_tables

    ensure_store_tables(common)
    writer = BigtableRowWriter(common, 30.0, lambda: None)
    started = time.perf_counter()
    for offset in range(0, len(rows), 1000):
        failures = writer.write_rows(RAW_EVENTS_TABLE, rows[offset : offset + 1000])
        if failures:
            raise RuntimeError(f"baseline write failed: {failures[0]}")
    elapsed = time.perf_counter() - started
    writer.close()
    return len(rows) / elapsed


def _data_api_rate(common: CommonSettings, rows: list[Any]) -> float:
    """For the docs: the same rows through the data API's bulk_mutate_rows."""
    from google.cloud.bigtable.data import BigtableDataClient, RowMutationEntry, SetCell

    client = BigtableDataClient(project=common.bigtable_project)
    table = client.get_table(common.bigtable_instance, common.table_prefix + RAW_EVENTS_TABLE)
    started = time.perf_counter()
    for offset in range(0, len(rows), 1000):
        table.bulk_mutate_rows(
            [
                RowMutationEntry(
                    row.key,
                    [
                        SetCell(f, q, v, timestamp_micros=(row.timestamp_micros // 1000) * 1000)
                        for (f, q), v in row.cells.items()
                    ],
                )
                for row in rows[offset : offset + 1000]
            ]
        )
    elapsed = time.perf_counter() - started
    client.close()
    return len(rows) / elapsed


class ConsumerProcess:
    """``python -m store.consumer`` with its own group; rows written read from /metrics."""

    def __init__(self, common: CommonSettings, group: str, log: Path) -> None:
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS": common.kafka_bootstrap_servers,
            "EVENTPIPE_TOPIC_PREFIX": common.topic_prefix,
            "EVENTPIPE_TABLE_PREFIX": common.table_prefix,
            "EVENTPIPE_BIGTABLE_PROJECT": common.bigtable_project,
            "EVENTPIPE_BIGTABLE_INSTANCE": common.bigtable_instance,
            "EVENTPIPE_STORE_CONSUMER_GROUP": group,
            "EVENTPIPE_STORE_HOST": "127.0.0.1",
            "EVENTPIPE_STORE_METRICS_PORT": str(self.metrics_port),
            "EVENTPIPE_LOG_LEVEL": "WARNING",
        }
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "store.consumer"],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def rows_written(self) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            match = ROWS_WRITTEN.search(response.read())
        return float(match.group(1)) if match else 0.0

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _consumer_rate(common: CommonSettings, total: int, log: Path) -> tuple[float, int]:
    consumer = ConsumerProcess(common, f"{common.topic_prefix}bench-{uuid.uuid4().hex[:6]}", log)
    try:
        wait_until(
            lambda: consumer.rows_written() > 0,
            timeout=120,
            what="the consumer's first rows",
            interval=0.02,
            max_interval=0.02,
        )
        first_at, first_rows = time.perf_counter(), consumer.rows_written()
        while True:
            rows = consumer.rows_written()
            if rows >= total:
                break
            if consumer.process.poll() is not None:
                raise RuntimeError(f"consumer exited; see {log}")
            time.sleep(0.02)
        elapsed = time.perf_counter() - first_at
        return (total - first_rows) / elapsed, consumer.peak_rss()
    finally:
        consumer.stop()


def _freshness(
    common: CommonSettings, rate: int, seconds: float, log: Path
) -> tuple[list[float], float, int]:
    """Latencies (s) ack -> readable of the probe events, achieved rate, consumer peak RSS."""
    from store.adapters.bigtable import BigtableRowReader

    consumer = ConsumerProcess(common, f"{common.topic_prefix}fresh", log)
    reader = BigtableRowReader(common)
    probe_entity = "probe"
    acked: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def scan() -> None:
        start = entity_prefix(TENANT, probe_entity)
        while not done.is_set():
            try:
                rows = reader.read_range(RAW_EVENTS_TABLE, start, prefix_end(start), 50)
            except Exception:
                rows = []
            now = time.perf_counter()
            for row in rows:
                event_id = row.key.rsplit(b"#", 1)[1].decode()
                seen.setdefault(event_id, now)
            time.sleep(0.01)

    try:
        # Warm up: the consumer has joined its group once a first event is readable.
        _produce(common, [_probe_event(probe_entity, "warmup")])
        wait_until(
            lambda: bool(
                reader.read_range(
                    RAW_EVENTS_TABLE,
                    entity_prefix(TENANT, probe_entity),
                    prefix_end(entity_prefix(TENANT, probe_entity)),
                    1,
                )
            ),
            timeout=120,
            what="the consumer to join",
        )
        scanner = threading.Thread(target=scan, daemon=True)
        scanner.start()
        producer = Producer(producer_config(common, **{"linger.ms": 1}))
        background = _events(2000)
        total = int(rate * seconds)
        started = time.perf_counter()
        for i in range(total):
            due = started + i / rate
            while (now := time.perf_counter()) < due:
                producer.poll(0)
                time.sleep(min(0.0005, due - now))
            if i % 20 == 0:
                event = _probe_event(probe_entity, f"p{i}")

                def on_ack(error: Any, _message: Any, event_id: str = event.event_id) -> None:
                    if error is None:
                        acked[event_id] = time.perf_counter()
            else:
                event = background[i % len(background)]
                event.event_id = f"f{i:08d}"
                on_ack = None  # type: ignore[assignment]
            producer.produce(
                common.raw_topic,
                key=topic_contract.message_key(event.tenant_id, event.entity_id),
                value=event.SerializeToString(),
                headers=topic_contract.message_headers(event),  # type: ignore[arg-type]
                on_delivery=on_ack,
            )
            producer.poll(0)
        producer.flush(60)
        achieved = total / (time.perf_counter() - started)
        deadline = time.perf_counter() + 120
        while not acked.keys() <= seen.keys() and time.perf_counter() < deadline:
            time.sleep(0.05)
        done.set()
        scanner.join()
        # A probe never seen counts as seen at the deadline: pessimistic, never flattering.
        latencies = [seen.get(k, deadline) - acked[k] for k in acked]
        return latencies, achieved, consumer.peak_rss()
    finally:
        done.set()
        reader.close()
        consumer.stop()


def _probe_event(entity: str, event_id: str) -> event_pb2.Event:
    now = int(time.time() * 1_000_000)
    event = event_pb2.Event(
        tenant_id=TENANT, event_id=event_id, event_type="probe", entity_id=entity
    )
    event.event_time.CopyFrom(timestamp_from_micros(now))
    event.ingest_time.CopyFrom(timestamp_from_micros(now))
    return event


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(ctx: BenchContext) -> list[Measurement]:
    total = 20_000 if ctx.quick else 60_000
    seconds = 5.0 if ctx.quick else 15.0
    log_dir = REPO / "bench" / "results"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "store_consumer.log"

    events = _events(total)
    rows = [event_to_row(e) for e in events]
    baseline_rates, consumer_rates, peaks = [], [], []
    for _round in range(ctx.rounds):
        token = uuid.uuid4().hex[:8]
        common = _settings(ctx, token)
        ensure_topology(common)
        _produce(common, events)
        baseline_rates.append(_baseline_rate(_settings(ctx, token + "b"), rows))
        rate_, peak = _consumer_rate(common, total, log)
        consumer_rates.append(rate_)
        peaks.append(peak)
    baseline, consumer = statistics.median(baseline_rates), statistics.median(consumer_rates)

    measurements = [
        Measurement(
            "consumer throughput into the emulator",
            consumer,
            "rows/s",
            baseline_name="raw MutateRows of the same rows",
            baseline_value=baseline,
            note=f"{total:,} events (8-10 cells each) per round, median of {ctx.rounds}; "
            f"consumer rounds {[round(r) for r in consumer_rates]}, "
            f"baseline rounds {[round(r) for r in baseline_rates]}",
        )
    ]
    if not ctx.quick:
        data_common = _settings(ctx, uuid.uuid4().hex[:8] + "d")
        from store.server import ensure_store_tables

        ensure_store_tables(data_common)
        measurements.append(
            Measurement(
                "data API bulk_mutate_rows of the same rows (for comparison)",
                _data_api_rate(data_common, rows[:10_000]),
                "rows/s",
                baseline_name="raw MutateRows of the same rows",
                baseline_value=baseline,
            )
        )

    # The issue asks for 10k events/s "or the highest rate the machine holds": a steady rate
    # is one the consumer sustains with headroom, so offer at most half its measured ceiling.
    rate = int(min(10_000, consumer / 2) // 100 * 100) or 100
    fresh_common = _settings(ctx, uuid.uuid4().hex[:8])
    ensure_topology(fresh_common)
    latencies, achieved, fresh_peak = _freshness(fresh_common, rate, seconds, log)
    measurements += [
        Measurement(
            "freshness p50 (ack -> readable)",
            _percentile(latencies, 0.5) * 1000,
            "ms",
            higher_is_better=False,
        ),
        Measurement(
            "freshness p99 (ack -> readable)",
            _percentile(latencies, 0.99) * 1000,
            "ms",
            higher_is_better=False,
            note=f"steady {achieved:,.0f} events/s offered (target {rate:,}) for {seconds:.0f} s; "
            f"{len(latencies)} probe events; goal p99 < 1000 ms",
        ),
        Measurement(
            "consumer peak RSS (VmHWM)",
            max([*peaks, fresh_peak]) / 2**20,
            "MiB",
            higher_is_better=False,
            note="the consumer process, over the throughput and freshness runs",
        ),
    ]
    return measurements
