"""The real components the pipeline stands on: Kafka, the Bigtable emulator and Envoy."""

from __future__ import annotations

import json
import os
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from eventpipe.core.waiting import wait_until
from eventpipe.stack import probes
from eventpipe.stack.components import (
    BigtableEmulator,
    Envoy,
    KafkaBroker,
    render_envoy_config,
    validate_envoy_config,
)
from google.cloud import bigtable
from google.cloud.bigtable import column_family

from tests.conftest import Isolation
from tests.helpers.http import http


def _create_topic(broker: KafkaBroker, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(30)


def _topics(broker: KafkaBroker) -> set[str]:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    return set(admin.list_topics(timeout=10).topics)


def test_a_message_produced_to_kafka_is_consumed_back_byte_for_byte(
    kafka_broker: KafkaBroker, isolation: Isolation
) -> None:
    topic = f"{isolation.topic_prefix}roundtrip"
    _create_topic(kafka_broker, topic)
    payload = bytes(range(256)) + os.urandom(1024)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers, "acks": "all"})
    producer.produce(topic, key=b"entity-\x00-1", value=payload, headers={"h": b"\xff\x00"})
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap_servers,
            "group.id": f"{isolation.token}-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    received = []
    try:

        def got_one() -> bool:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                received.append(message)
            return bool(received)

        wait_until(got_one, timeout=30, what="the produced message", interval=0)
    finally:
        consumer.close()
    message = received[0]
    assert message.value() == payload
    assert message.key() == b"entity-\x00-1"
    assert message.headers() == [("h", b"\xff\x00")]


def test_a_cell_written_to_the_emulator_is_read_back(
    bigtable_emulator: BigtableEmulator, isolation: Isolation
) -> None:
    client = bigtable.Client(project="eventpipe-local", admin=True)
    table = client.instance("eventpipe").table(f"{isolation.table_prefix}cells")
    table.create(column_families={"f": column_family.MaxVersionsGCRule(1)})
    value = b"\x00cell value\xff"
    row = table.direct_row(b"tenant#entity#0001")
    row.set_cell("f", b"q", value)
    row.commit()

    read = table.read_row(b"tenant#entity#0001")

    assert read is not None
    assert read.cells["f"][b"q"][0].value == value


def test_envoy_accepts_the_rendered_config(tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text(
        render_envoy_config(
            listen_port=8080,
            admin_port=9901,
            upstream_ports={"ingest": 50051, "store": 50052, "enrich": 50053, "query": 50054},
        )
    )

    validate_envoy_config(config)  # raises with Envoy's reason if rejected


def _http(url: str, method: str = "GET") -> tuple[int, str, str]:
    reply = http(url, method=method, timeout=10)
    return reply.status, reply.content_type, reply.text


def test_an_unimplemented_grpc_answer_comes_back_through_rest_as_json_501(
    envoy_proxy: Envoy, upstream_ports: dict[str, int]
) -> None:
    # A real gRPC server with no handlers answers UNIMPLEMENTED to every method.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_insecure_port(f"127.0.0.1:{upstream_ports['store']}")
    server.start()
    try:
        status, content_type, body = _http(f"{envoy_proxy.base_url}/v1/store/consumerStatus")
    finally:
        server.stop(0)

    assert status == 501
    assert content_type == "application/json"
    assert json.loads(body)["code"] == grpc.StatusCode.UNIMPLEMENTED.value[0]


def test_envoy_rejects_a_rest_path_that_maps_to_no_method(envoy_proxy: Envoy) -> None:
    status, _content_type, _body = _http(f"{envoy_proxy.base_url}/v1/no/such/thing")

    assert status == 404


def test_envoy_rejects_an_unknown_query_parameter(envoy_proxy: Envoy) -> None:
    status, _content_type, body = _http(f"{envoy_proxy.base_url}/v1/store/consumerStatus?bogus=1")

    assert status == 400
    assert "bogus" in body


@pytest.mark.timeout(300)
def test_a_stopped_broker_starts_again_on_the_same_port_with_its_topics(
    kafka_broker: KafkaBroker, isolation: Isolation
) -> None:
    topic = f"{isolation.topic_prefix}survives-restart"
    _create_topic(kafka_broker, topic)
    port = kafka_broker.port

    kafka_broker.stop()
    assert not probes.tcp_open("127.0.0.1", port)
    kafka_broker.start()

    assert kafka_broker.port == port
    assert topic in _topics(kafka_broker)


def test_a_stopped_emulator_starts_again_on_the_same_port_empty(
    bigtable_emulator: BigtableEmulator, isolation: Isolation
) -> None:
    client = bigtable.Client(project="eventpipe-local", admin=True)
    instance = client.instance("eventpipe")
    instance.table(f"{isolation.table_prefix}lost").create()

    bigtable_emulator.stop()
    assert not bigtable_emulator.safe_is_healthy()
    bigtable_emulator.start()

    assert bigtable_emulator.safe_is_healthy()
    assert f"{isolation.table_prefix}lost" not in {t.table_id for t in instance.list_tables()}
