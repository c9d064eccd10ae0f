"""Kafka client setup, written once: producer, consumer and admin configs, topic creation."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from eventpipe.core.config import CommonSettings

log = logging.getLogger(__name__)
# librdkafka's own messages (connection failures, ...) go through Python logging, so services
# emit them as JSON lines and tests capture them, instead of raw lines on stderr.
LIBRDKAFKA_LOG = logging.getLogger("kafka.librdkafka")


class MessageLike(Protocol):
    """The part of ``confluent_kafka.Message`` that EventPipe reads; test fakes implement it too."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(
        self,
    ) -> list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None] | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def error(self) -> object | None: ...


def message_headers(message: MessageLike) -> list[tuple[str, bytes]]:
    """A message's headers as (name, bytes) pairs, in order; a missing value reads as b""."""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [
        (name, value.encode() if isinstance(value, str) else value or b"") for name, value in pairs
    ]


def producer_config(settings: CommonSettings, **overrides: Any) -> dict[str, Any]:
    """A durable producer: every write confirmed by all in-sync replicas, no duplicates."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "lz4",
        # The Java client's partitioner, so direct producers in any language agree with ingest
        # on the partition of a (tenant, entity) key.
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "batch.size": 256 * 1024,
        # A write not confirmed within this bound is reported as failed, never acknowledged.
        "message.timeout.ms": 10_000,
        "socket.keepalive.enable": True,
        "logger": LIBRDKAFKA_LOG,
    }
    config.update(overrides)
    return config


def consumer_config(settings: CommonSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer that commits only what the application says it has durably handled."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "logger": LIBRDKAFKA_LOG,
    }
    config.update(overrides)
    return config


@functools.cache
def admin_client(settings: CommonSettings) -> AdminClient:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "logger": LIBRDKAFKA_LOG,
    }
    return AdminClient(config)


def check_kafka(settings: CommonSettings, timeout: float = 3.0) -> None:
    """Readiness check: raises unless the cluster answers a metadata request."""
    admin_client(settings).list_topics(timeout=timeout)


@dataclass(frozen=True)
class TopicSpec:
    """A topic and the settings it is created with."""

    name: str
    partitions: int
    replication_factor: int = 1
    config: dict[str, str] = field(default_factory=dict)


def ensure_topics(settings: CommonSettings, topics: list[TopicSpec], timeout: float = 30.0) -> None:
    """Creates missing topics; existing ones are left alone (idempotent)."""
    admin = admin_client(settings)
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [t for t in topics if t.name not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [
            NewTopic(
                t.name,
                num_partitions=t.partitions,
                replication_factor=t.replication_factor,
                config=t.config,
            )
            for t in missing
        ],
        operation_timeout=timeout,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
            log.info("created topic", extra={"topic": name})
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
