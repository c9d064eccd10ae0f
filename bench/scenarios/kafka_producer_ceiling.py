"""The raw producer ceiling: confluent-kafka straight into a topic shaped like the raw topic.

Same producer settings as ingest (acks=all, idempotence, lz4, from eventpipe.core.kafka), same
events (the demo clickstream, serialized), keys and headers, every delivery report checked.
Ingest scenarios compare themselves with this figure, measured once per bench run by
``ceiling(ctx)`` and reused.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import replace

from confluent_kafka import Producer
from eventpipe.common.v1 import event_pb2
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import ensure_topics, producer_config
from eventpipe.core.topic_contract import message_headers, message_key
from eventpipe.core.topology import topic_specs
from eventpipe.demo.generator import DemoSpec, generate

from bench.harness import BenchContext, Measurement

NAME = "kafka_producer_ceiling"
_MEASURED: dict[tuple[str, int], float] = {}
_CORES: dict[tuple[str, int], float] = {}


def event_count(ctx: BenchContext) -> int:
    return 20_000 if ctx.quick else 100_000


def demo_events(count: int) -> list[event_pb2.Event]:
    """``count`` valid demo events (the clickstream repeated with fresh ids), event_time now-ish."""
    spec = DemoSpec(users=2000, products=200, sessions=2000, days=2, seed=1)
    base = generate(replace(spec, now_micros=time.time_ns() // 1000)).events
    events = []
    for n in range(count):
        event = event_pb2.Event()
        event.CopyFrom(base[n % len(base)])
        event.event_id = f"bench-{n}"
        events.append(event)
    return events


def bench_settings(ctx: BenchContext) -> CommonSettings:
    """Settings with a topic prefix of this run's own, and its topics created."""
    settings = ctx.common.model_copy(update={"topic_prefix": f"bench-{uuid.uuid4().hex[:8]}."})
    ensure_topics(settings, topic_specs(settings))
    return settings


def _produce_once(
    settings: CommonSettings,
    messages: list[tuple[bytes, bytes]],
    headers: list[tuple[str, str | bytes | None]],
) -> tuple[float, float]:
    """Produces ``messages`` once; returns events/s and the cores this process used."""
    producer = Producer(
        producer_config(
            settings, **{"partitioner": "murmur2_random", "queue.buffering.max.messages": 1_000_000}
        )
    )
    failures = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(err)

    topic = settings.raw_topic
    started, cpu_started = time.perf_counter(), time.process_time()
    for index, (key, value) in enumerate(messages):
        while True:
            try:
                producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        # Serving reports every 1000 messages, not every message: per-message poll(0) halves
        # the rate, and the ceiling should be the best a Python producer does.
        if index % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(60)
    elapsed = time.perf_counter() - started
    if remaining or failures:
        raise RuntimeError(f"raw producer: {remaining} unflushed, {len(failures)} failed")
    # This process's CPU (Python and librdkafka's threads) over the wall time: cores used.
    return len(messages) / elapsed, (time.process_time() - cpu_started) / elapsed


def ceiling(ctx: BenchContext) -> float:
    """Median raw producer events/s over ``ctx.rounds``; measured once per run and bench size."""
    key = (ctx.common.kafka_bootstrap_servers, event_count(ctx))
    if key not in _MEASURED:
        settings = bench_settings(ctx)
        events = demo_events(event_count(ctx))
        for event in events:
            event.tenant_id = "bench"
        messages = [
            (message_key("bench", e.entity_id), e.SerializeToString(deterministic=True))
            for e in events
        ]
        headers: list[tuple[str, str | bytes | None]] = list(message_headers(events[0]))
        _produce_once(settings, messages[:2000], headers)  # warm-up: connections, metadata
        rates, cores = zip(
            *(_produce_once(settings, messages, headers) for _ in range(ctx.rounds)), strict=True
        )
        _MEASURED[key] = statistics.median(rates)
        _CORES[key] = statistics.median(cores)
    return _MEASURED[key]


def ceiling_cores(ctx: BenchContext) -> float:
    """The cores the raw producer used while ``ceiling`` measured it (median of the rounds)."""
    ceiling(ctx)
    return _CORES[(ctx.common.kafka_bootstrap_servers, event_count(ctx))]


def run(ctx: BenchContext) -> list[Measurement]:
    return [
        Measurement(
            "raw confluent-kafka producer (acks=all, idempotent)",
            ceiling(ctx),
            "events/s",
            note=f"{event_count(ctx)} demo events per round, median of {ctx.rounds} rounds; "
            f"the producer used {ceiling_cores(ctx):.2f} cores",
        )
    ]
