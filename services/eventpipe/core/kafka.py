"""Kafka client setup, written once: producer, consumer and admin configs, topic creation.

Every client built here carries the cluster's security settings (``EVENTPIPE_KAFKA_SECURITY_*``,
``_SASL_*``, ``_SSL_CA_LOCATION``: ``client_security_config``); Spark's Kafka source, which
speaks through the Java client, takes the same settings from ``spark_kafka_options``.
docs/cluster.md shows them for a managed Kafka.
"""

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


def client_security_config(settings: CommonSettings) -> dict[str, str]:
    """librdkafka's ``security.protocol``, ``sasl.*`` and ``ssl.*`` keys for ``settings``
    (CommonSettings has already refused incomplete combinations)."""
    config: dict[str, str] = {"security.protocol": settings.kafka_security_protocol}
    if settings.kafka_sasl_mechanism is not None:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username is not None:
        config["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password is not None:
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_location is not None:
        config["ssl.ca.location"] = settings.kafka_ssl_ca_location
    return config


def _client_config(settings: CommonSettings) -> dict[str, Any]:
    """What every client shares: where the cluster is, how to reach it, where logs go."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        **client_security_config(settings),
        "logger": LIBRDKAFKA_LOG,
    }


_JAAS_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def _jaas_quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def spark_kafka_options(settings: CommonSettings) -> dict[str, str]:
    """Options for Spark's Kafka source (``.options(**spark_kafka_options(common))``): the
    bootstrap servers and the same security settings as every other client, spelled for the
    Java client Spark uses (``kafka.``-prefixed; SASL credentials as a JAAS line, the CA file as
    a PEM trust store)."""
    options: dict[str, str] = {
        "kafka.bootstrap.servers": settings.kafka_bootstrap_servers,
        "kafka.security.protocol": settings.kafka_security_protocol,
    }
    mechanism = settings.kafka_sasl_mechanism
    if mechanism is not None:
        username = settings.kafka_sasl_username or ""
        password = settings.kafka_sasl_password
        options["kafka.sasl.mechanism"] = mechanism
        options["kafka.sasl.jaas.config"] = (
            f"{_JAAS_LOGIN_MODULES[mechanism]} required "
            f"username={_jaas_quoted(username)} "
            f"password={_jaas_quoted(password.get_secret_value() if password else '')};"
        )
    if settings.kafka_ssl_ca_location is not None:
        options["kafka.ssl.truststore.type"] = "PEM"
        options["kafka.ssl.truststore.location"] = settings.kafka_ssl_ca_location
    return options


def producer_config(settings: CommonSettings, **overrides: Any) -> dict[str, Any]:
    """A durable producer: every write confirmed by all in-sync replicas, no duplicates."""
    config: dict[str, Any] = {
        **_client_config(settings),
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
    }
    config.update(overrides)
    return config


def consumer_config(settings: CommonSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer that commits only what the application says it has durably handled."""
    config: dict[str, Any] = {
        **_client_config(settings),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
    }
    config.update(overrides)
    return config


@functools.cache
def admin_client(settings: CommonSettings) -> AdminClient:
    return AdminClient(_client_config(settings))


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
