"""Store consumer: throughput into Bigtable as a ratio to a raw mutate_rows bulk write of the
same rows in the same run, freshness (producer ack -> row readable) at a steady rate, and the
consumer's peak RSS.

Runs against the local stack's Kafka and emulator (``eventpipe stack up``; the environment's
``BIGTABLE_EMULATOR_HOST``), with topic and table prefixes of its own. The consumer is the
real daemon, ``python -m store.consumer``, in its own process.

- Baseline: the rows (``storage.rows.event_to_row`` of the same events, built beforehand) written
  with sequential 1,000-row MutateRows calls through the same client path the consumer uses,
  request building included. That is the emulator's and client's raw write ceiling.
- Consumer: the same events pre-produced to the raw topic; a fresh consumer group drains
  them. Rate = rows written between the first and the last observation of its
  ``eventpipe_store_rows_written_total`` counter (polled every 20 ms), so process start and
  the group join are not counted.
- Freshness: events produced at a steady rate (10k/s, or half the measured consumer rate if
  lower) by the topic contract (the ack is the Kafka
  delivery report, exactly when ingest acknowledges); one in 20 is a probe. Every 10 ms a
  reader asks for every probe key not yet seen in one ReadRows (a row set of those keys), so
  no probe is missed however many rows one consumer batch writes. Freshness = the end of the
  first read that returns the row - the ack (0 when the row was readable before the ack
  reached the producer's callback). A probe still not readable 120 s after the last ack is
  reported as missing, and left out of the percentiles.
"""

from __future__ import annotations

import collections
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from eventpipe.common.v1 import event_pb2
from eventpipe.core import bigtable_rows, topic_contract
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import producer_config
from eventpipe.core.storage.keys import row_key_for_event
from eventpipe.core.storage.rows import event_to_row
from eventpipe.core.storage.tables import RAW_EVENTS_TABLE
from eventpipe.core.storage.times import cell_timestamp_micros, micros, timestamp_from_micros
from eventpipe.core.topology import ensure_topology
from eventpipe.core.waiting import wait_until
from eventpipe.stack.probes import free_port

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
                        SetCell(
                            f, q, v, timestamp_micros=cell_timestamp_micros(row.timestamp_micros)
                        )
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


@dataclass
class Freshness:
    """What the freshness run saw: latencies (s) of the probes that became readable."""

    latencies: list[float]
    achieved_rate: float
    consumer_peak_rss: int
    missing: int  # acknowledged, never readable before the deadline
    unacknowledged: int  # delivery failed: not a freshness sample
    failed_reads: int


class ProbeWatcher:
    """Asks Bigtable, in one ReadRows of the pending keys, which probe rows are readable."""

    def __init__(self, common: CommonSettings, interval: float = 0.01) -> None:
        self._client = bigtable_rows.gapic_client()
        self._table = bigtable_rows.table_path(
            common.bigtable_project,
            common.bigtable_instance,
            common.table_prefix + RAW_EVENTS_TABLE,
        )
        self._interval = interval
        self._new: collections.deque[bytes] = collections.deque()
        self.seen: dict[bytes, float] = {}
        self.failed_reads = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def readable(self, keys: list[bytes]) -> list[bytes]:
        """The keys among ``keys`` whose rows exist now."""
        return [
            key
            for key, _cells in bigtable_rows.read_rows(
                self._client, self._table, keys=keys, timeout=10
            )
        ]

    def watch(self, key: bytes) -> None:
        """Adds a probe (thread-safe: called by the producing thread)."""
        self._new.append(key)

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        pending: set[bytes] = set()
        while not self._done.is_set():
            while self._new:
                pending.add(self._new.popleft())
            if pending:
                try:
                    found = self.readable(list(pending))
                except Exception:
                    self.failed_reads += 1
                    found = []
                now = time.perf_counter()
                for key in found:
                    self.seen.setdefault(key, now)
                pending.difference_update(found)
            time.sleep(self._interval)

    def stop(self) -> None:
        """Stops watching and closes the channel; safe to call twice."""
        if self._done.is_set():
            return
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(30)
        self._client.transport.close()


def _freshness(common: CommonSettings, rate: int, seconds: float, log: Path) -> Freshness:
    """Probe latencies ack -> readable at a steady ``rate``; see the module docstring."""
    consumer = ConsumerProcess(common, f"{common.topic_prefix}fresh", log)
    watcher = ProbeWatcher(common)
    probe_entity = "probe"
    acked: dict[bytes, float] = {}
    failed: list[bytes] = []
    try:
        # Warm up: the consumer has joined its group once a first event is readable.
        warmup = _probe_event(probe_entity, "warmup")
        _produce(common, [warmup])
        wait_until(
            lambda: bool(watcher.readable([_probe_key(warmup)])),
            timeout=120,
            what="the consumer to join",
        )
        watcher.start()
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
                key = _probe_key(event)
                watcher.watch(key)

                def on_ack(error: Any, _message: Any, key: bytes = key) -> None:
                    if error is None:
                        acked[key] = time.perf_counter()
                    else:
                        failed.append(key)

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
        while not acked.keys() <= watcher.seen.keys() and time.perf_counter() < deadline:
            time.sleep(0.05)
        watcher.stop()
        seen = dict(watcher.seen)
        # A probe never seen is missing: reported as such, never given a latency.
        latencies = [max(0.0, seen[k] - acked[k]) for k in acked if k in seen]
        return Freshness(
            latencies,
            achieved,
            consumer.peak_rss(),
            missing=sum(1 for k in acked if k not in seen),
            unacknowledged=len(failed),
            failed_reads=watcher.failed_reads,
        )
    finally:
        watcher.stop()
        consumer.stop()


def _probe_key(event: event_pb2.Event) -> bytes:
    return row_key_for_event(
        event.tenant_id, event.entity_id, micros(event.event_time), event.event_id
    )


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
    fresh = _freshness(fresh_common, rate, seconds, log)
    if not fresh.latencies:
        raise RuntimeError(
            f"no freshness probe became readable ({fresh.missing} missing); see {log}"
        )
    sampled = (
        f"steady {fresh.achieved_rate:,.0f} events/s offered (target {rate:,}) for "
        f"{seconds:.0f} s; {len(fresh.latencies)} probe events readable, {fresh.missing} "
        f"missing (left out), {fresh.unacknowledged} not acknowledged, "
        f"{fresh.failed_reads} failed probe reads; goal p99 < 1000 ms"
    )
    measurements += [
        Measurement(
            "freshness p50 (ack -> readable)",
            _percentile(fresh.latencies, 0.5) * 1000,
            "ms",
            higher_is_better=False,
        ),
        Measurement(
            "freshness p99 (ack -> readable)",
            _percentile(fresh.latencies, 0.99) * 1000,
            "ms",
            higher_is_better=False,
            note=sampled,
        ),
        Measurement(
            "freshness probes never readable (within 120 s of the last ack)",
            fresh.missing,
            "probes",
            higher_is_better=False,
        ),
        Measurement(
            "consumer peak RSS (VmHWM)",
            max([*peaks, fresh.consumer_peak_rss]) / 2**20,
            "MiB",
            higher_is_better=False,
            note="the consumer process, over the throughput and freshness runs",
        ),
    ]
    return measurements
