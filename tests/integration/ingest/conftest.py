"""Fixtures of the ingest integration tests: an ingest service process on the session's real
Kafka (behind the session's real Envoy), topics of its own, and a reader of its raw topic."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import ensure_topics
from eventpipe.core.topology import topic_specs
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2_grpc
from eventpipe.stack.components import Envoy, GrpcService, KafkaBroker
from eventpipe.stack.probes import free_port

from tests.conftest import Isolation, start_or_fail


def settings_for(broker: KafkaBroker, isolation: Isolation) -> CommonSettings:
    return CommonSettings(
        kafka_bootstrap_servers=broker.bootstrap_servers, topic_prefix=isolation.topic_prefix
    )


def create_topics(settings: CommonSettings) -> None:
    ensure_topics(settings, topic_specs(settings))


@dataclass
class IngestUnderTest:
    """A running ingest service process and what a test needs to talk to it."""

    service: GrpcService
    settings: CommonSettings
    tenant_id: str
    metrics_port: int

    @property
    def address(self) -> str:
        return self.service.address

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(
            self.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        )

    def stub(self, channel: grpc.Channel) -> ingest_pb2_grpc.IngestServiceStub:
        return ingest_pb2_grpc.IngestServiceStub(channel)


def start_ingest(
    run_dir: Path,
    broker: KafkaBroker,
    isolation: Isolation,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> IngestUnderTest:
    settings = settings_for(broker, isolation)
    create_topics(settings)
    port = port or free_port()
    metrics_port = free_port()
    service = GrpcService(
        "ingest",
        run_dir / "ingest" / f"ingest-{port}-{uuid.uuid4().hex[:6]}",
        port,
        {
            "EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "EVENTPIPE_TOPIC_PREFIX": isolation.topic_prefix,
            "EVENTPIPE_INGEST_HOST": "127.0.0.1",
            "EVENTPIPE_INGEST_PORT": str(port),
            "EVENTPIPE_INGEST_METRICS_PORT": str(metrics_port),
            **(env or {}),
        },
    )
    start_or_fail(service)
    return IngestUnderTest(service, settings, isolation.tenant_id, metrics_port)


@pytest.fixture(scope="module")
def ingest_env() -> dict[str, str]:
    """Extra EVENTPIPE_INGEST_* settings of the module's service; modules override it."""
    return {}


@pytest.fixture(scope="module")
def ingest_service(
    run_dir: Path,
    kafka_broker: KafkaBroker,
    upstream_ports: dict[str, int],
    ingest_env: dict[str, str],
) -> Iterator[IngestUnderTest]:
    """One ingest service per test module, on the port the session's Envoy routes to."""
    running = start_ingest(
        run_dir, kafka_broker, Isolation.new(), port=upstream_ports["ingest"], env=ingest_env
    )
    yield running
    running.service.stop()


@pytest.fixture(scope="module")
def envoy_url(envoy_proxy: Envoy, ingest_service: IngestUnderTest) -> str:
    return envoy_proxy.base_url


@pytest.fixture
def ingest_channel(ingest_service: IngestUnderTest) -> Iterator[grpc.Channel]:
    with ingest_service.channel() as channel:
        yield channel


def read_topic(
    settings: CommonSettings,
    expected: int,
    *,
    key_prefix: bytes = b"",
    timeout: float = 60.0,
    topic: str | None = None,
    until: Callable[[list[Message]], bool] | None = None,
) -> list[Message]:
    """Reads the topic from the beginning until ``expected`` messages whose key starts with
    ``key_prefix`` arrived (the module's tests share one topic); returns only those."""
    topic = topic or settings.raw_topic
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    received: list[Message] = []
    try:

        def enough() -> bool:
            for message in consumer.consume(1000, 0.5):
                if message.error() is None and (message.key() or b"").startswith(key_prefix):
                    received.append(message)
            return until(received) if until else len(received) >= expected

        wait_until(enough, timeout=timeout, what=f"{expected} messages on {topic}", interval=0)
    finally:
        consumer.close()
    return received


def topic_message_count(settings: CommonSettings, topic: str | None = None) -> int:
    """Messages in the topic now: the sum of the partitions' high watermarks."""
    topic = topic or settings.raw_topic
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "watermarks"}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()
