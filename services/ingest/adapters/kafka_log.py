"""The raw-events topic as an ``EventLog``: a durable confluent-kafka producer.

The producer comes from ``eventpipe.core.kafka.producer_config`` (acks=all, idempotence) and
one daemon thread polls it, so delivery reports arrive while RPC threads wait on them. A fatal
producer error (possible with idempotence, e.g. after an unrecoverable sequence gap) replaces
the producer on the next write, which is how ingest recovers from a Kafka outage without a
process restart; messages of the broken producer are purged and so reported failed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, Producer
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import producer_config

from ingest.ports import DeliveryReport

log = logging.getLogger(__name__)

# Java clients hash keys with murmur2; librdkafka's default (crc32) would put the same key on a
# different partition, so a direct Java producer and ingest would not agree on an entity's order.
PARTITIONER = "murmur2_random"


class KafkaEventLog:
    """Produces to one topic and reports each delivery to the caller's callback."""

    def __init__(
        self,
        settings: CommonSettings,
        topic: str,
        *,
        message_timeout_seconds: float,
        max_queue_messages: int,
        max_queue_kbytes: int,
        **overrides: Any,
    ) -> None:
        self.topic = topic
        self._config = producer_config(
            settings,
            **{
                "message.timeout.ms": int(message_timeout_seconds * 1000),
                "queue.buffering.max.messages": max_queue_messages,
                "queue.buffering.max.kbytes": max_queue_kbytes,
                "partitioner": PARTITIONER,
                "error_cb": self._on_error,
                **overrides,
            },
        )
        self._lock = threading.Lock()
        self._fatal: KafkaError | None = None
        self._producer = Producer(self._config)
        self._stopped = threading.Event()
        self._poller = threading.Thread(target=self._poll_forever, name="kafka-poll", daemon=True)
        self._poller.start()

    def _on_error(self, err: KafkaError) -> None:
        # Transport errors (broker down) are transient: librdkafka reconnects by itself and
        # reports affected messages through their delivery callbacks.
        if err.fatal():
            log.error("fatal producer error: replacing the producer", extra={"error": str(err)})
            self._fatal = err
        else:
            log.warning("kafka producer error", extra={"error": str(err)})

    def _poll_forever(self) -> None:
        while not self._stopped.is_set():
            self._producer.poll(0.05)

    def _replace_broken_producer(self) -> None:
        with self._lock:
            if self._fatal is None:
                return
            broken = self._producer
            self._producer = Producer(self._config)
            self._fatal = None
        # Everything the broken producer still holds is reported as failed: never acknowledged.
        broken.purge()
        broken.flush(1.0)

    def produce(
        self,
        keys: Sequence[bytes],
        values: Sequence[bytes],
        headers: list[tuple[str, bytes]],
        on_delivery: DeliveryReport,
    ) -> int:
        if self._fatal is not None:
            self._replace_broken_producer()
        produce = self._producer.produce
        topic = self.topic
        kafka_headers: list[tuple[str, str | bytes | None]] = list(headers)
        # The batch's one callback goes to librdkafka as it is: no per-message closure, and the
        # poll thread makes one Python call per report.
        for queued, (key, value) in enumerate(zip(keys, values, strict=True)):
            try:
                produce(topic, value, key, headers=kafka_headers, on_delivery=on_delivery)
            except BufferError:
                return queued
        return len(values)

    def describe_failure(self, error: object) -> str:
        if isinstance(error, KafkaError):
            return f"{error.name()}: {error.str()}"
        return str(error)

    def queue_depth(self) -> int:
        return len(self._producer)

    def close(self, timeout: float) -> None:
        remaining = self._producer.flush(timeout)
        self._stopped.set()
        self._poller.join(timeout=1.0)
        if remaining:
            log.warning("closing with unconfirmed messages", extra={"count": remaining})
