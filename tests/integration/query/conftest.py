"""Fixtures of the query integration tests: one query service process per module on the
session's real Kafka and emulator, behind the session's real Envoy, with names of its own."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from confluent_kafka import Producer
from eventpipe.core.config import CommonSettings
from eventpipe.core.entity_changes import EntityChange
from eventpipe.core.kafka import producer_config
from eventpipe.core.topology import ensure_topology
from eventpipe.core.waiting import wait_until
from eventpipe.query.v1 import query_pb2_grpc
from eventpipe.stack.components import BigtableEmulator, Envoy, GrpcService, KafkaBroker
from eventpipe.stack.probes import free_port

from tests.conftest import Isolation, start_or_fail
from tests.helpers.http import http, metric_values
from tests.integration.query.loader import RowLoader

PAGE_TOKEN_SECRET = "integration-test-page-token-secret"


@dataclass
class QueryUnderTest:
    """The running query service, its names, a row loader and a way to announce changes."""

    service: GrpcService
    common: CommonSettings
    metrics_port: int
    loader: RowLoader
    channel: grpc.Channel

    @property
    def stub(self) -> query_pb2_grpc.QueryServiceStub:
        return query_pb2_grpc.QueryServiceStub(self.channel)

    def new_tenant(self) -> str:
        return f"tenant-{uuid.uuid4().hex[:10]}"

    def metrics(self) -> dict[str, float]:
        return metric_values(self.metrics_port)

    def announce_change(self, tenant_id: str, entity_id: str) -> None:
        """Produces an EntityChange to real Kafka, as enrichment does, and waits for the ack."""
        producer = Producer(producer_config(self.common))
        change = EntityChange.now(tenant_id, entity_id)
        producer.produce(self.common.entity_changes_topic, key=change.key(), value=change.encode())
        assert producer.flush(10) == 0


@dataclass
class Rest:
    """GETs through the session's real Envoy (REST transcoded to the query service's gRPC)."""

    envoy: Envoy

    def __call__(self, path: str, params: list[tuple[str, str]] | None = None) -> tuple[int, Any]:
        """Returns (HTTP status, JSON body)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        reply = http(f"{self.envoy.base_url}{path}{query}", timeout=10)
        return reply.status, json.loads(reply.body or b"{}")


@pytest.fixture
def rest(query_service: QueryUnderTest, envoy_proxy: Envoy) -> Rest:
    return Rest(envoy_proxy)


@pytest.fixture(scope="module")
def query_service(
    run_dir: Path,
    kafka_broker: KafkaBroker,
    bigtable_emulator: BigtableEmulator,
    upstream_ports: dict[str, int],
) -> Iterator[QueryUnderTest]:
    names = Isolation.new()
    common = CommonSettings(
        kafka_bootstrap_servers=kafka_broker.bootstrap_servers,
        topic_prefix=names.topic_prefix,
        table_prefix=names.table_prefix,
    )
    ensure_topology(common)
    port, metrics_port = upstream_ports["query"], free_port()
    service = GrpcService(
        "query",
        run_dir / "query" / f"query-{port}-{uuid.uuid4().hex[:6]}",
        port,
        {
            "EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
            "BIGTABLE_EMULATOR_HOST": bigtable_emulator.emulator_host,
            "EVENTPIPE_TOPIC_PREFIX": names.topic_prefix,
            "EVENTPIPE_TABLE_PREFIX": names.table_prefix,
            "EVENTPIPE_QUERY_HOST": "127.0.0.1",
            "EVENTPIPE_QUERY_PORT": str(port),
            "EVENTPIPE_QUERY_METRICS_PORT": str(metrics_port),
            "EVENTPIPE_QUERY_PAGE_TOKEN_SECRET": PAGE_TOKEN_SECRET,
            # Long enough that only an invalidation can refresh an answer within a test.
            "EVENTPIPE_QUERY_CACHE_TTL_SECONDS": "600",
            # One worker: these tests read one process's cache through two paths (this gRPC
            # channel and Envoy's REST connection), which several workers would split between
            # caches of their own. Several workers' caches: test_query_workers.py.
            "EVENTPIPE_QUERY_WORKERS": "1",
        },
    )
    start_or_fail(service, 90)
    loader = RowLoader(common)
    channel = grpc.insecure_channel(service.address)
    under_test = QueryUnderTest(service, common, metrics_port, loader, channel)
    try:
        wait_until(
            lambda: under_test.metrics().get("eventpipe_query_cache_suspended") == 0.0,
            timeout=60,
            what="the query cache to turn on (entity-changes consumer positioned)",
        )
        yield under_test
    finally:
        channel.close()
        loader.close()
        service.stop()
