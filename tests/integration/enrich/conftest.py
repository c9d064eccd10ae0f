"""Fixtures of the enrich integration tests: ONE local Spark session for the whole test session
(starting one costs ~5 s), and an engine bound to each test's own table prefix."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from enrich.adapters.bigtable_io import BigtableTarget
from enrich.adapters.spark.session import SparkSettings, build_session
from enrich.adapters.spark.streaming import StreamingHandle, StreamingRequest
from enrich.adapters.spark_engine import SparkEngine
from enrich.adapters.spec_codec import spec_from_proto
from enrich.domain.spec import validate_spec
from eventpipe.common.v1 import event_pb2
from eventpipe.core import bigtable as core_bigtable
from eventpipe.core.kafka import spark_kafka_options
from eventpipe.core.storage.tables import (
    DIMENSIONS_TABLE,
    ENRICHED_EVENTS_TABLE,
    ENTITY_METRICS_TABLE,
    ENTITY_PROFILES_TABLE,
    RAW_EVENTS_TABLE,
)
from eventpipe.core.storage.times import micros, timestamp_from_micros
from eventpipe.enrich.v1 import enrich_pb2_grpc
from eventpipe.stack.spark_connectors import connector_jars
from google.rpc import error_details_pb2, status_pb2
from pyspark.sql import SparkSession

from tests.integration.enrich import dataset

SPARK_SETTINGS = SparkSettings(
    master="local[2]", partitions=4, shuffle_partitions=4, broadcast_max_rows=1000
)


@pytest.fixture(scope="session")
def spark_session(bigtable_emulator: Any) -> Iterator[SparkSession]:
    settings = SparkSettings(
        **{**SPARK_SETTINGS.__dict__, "jars": tuple(str(j) for j in connector_jars())}
    )
    session = build_session(settings)
    yield session
    session.stop()


@pytest.fixture
def target(common_settings: Any) -> BigtableTarget:
    return BigtableTarget(
        project=common_settings.bigtable_project,
        instance=common_settings.bigtable_instance,
        table_prefix=common_settings.table_prefix,
        emulator_host=os.environ.get("BIGTABLE_EMULATOR_HOST"),
    )


@pytest.fixture
def engine(spark_session: SparkSession, target: BigtableTarget, tmp_path: Any) -> SparkEngine:
    return SparkEngine(SPARK_SETTINGS, target, run_dir=tmp_path, session=spark_session)


@pytest.fixture
def tables(common_settings: Any) -> dict[str, Any]:
    return {
        name: core_bigtable.table(common_settings, name)
        for name in (
            RAW_EVENTS_TABLE,
            DIMENSIONS_TABLE,
            ENRICHED_EVENTS_TABLE,
            ENTITY_METRICS_TABLE,
            ENTITY_PROFILES_TABLE,
        )
    }


def recent(data: dataset.Dataset, now_micros: int | None = None) -> dataset.Dataset:
    """``data`` moved by whole days so its events lie one to three days before now, with
    ``ingest_time`` now: what the raw topic's contract accepts (``decode_raw_event`` refuses
    an event older than the retention or an ingest_time far from the Kafka timestamp)."""
    now = time.time_ns() // 1000 if now_micros is None else now_micros
    shift = ((now - dataset.BASE) // dataset.DAY - 3) * dataset.DAY
    moved = dataset.Dataset(data.tenant_id)
    for event in data.events:
        copy = event_pb2.Event()
        copy.CopyFrom(event)
        copy.event_time.CopyFrom(timestamp_from_micros(micros(event.event_time) + shift))
        copy.ingest_time.CopyFrom(timestamp_from_micros(now))
        moved.events.append(copy)
    moved.dims = {
        name: [dataset.DimVersion(v.key, v.valid_from + shift, v.attributes) for v in versions]
        for name, versions in data.dims.items()
    }
    return moved


StartEnrich = Callable[..., tuple[Any, enrich_pb2_grpc.EnrichServiceStub]]


@pytest.fixture
def start_enrich(start_service: Any) -> Iterator[StartEnrich]:
    """Starts the enrich service as a process (local[2] Spark) with extra settings; returns it
    and a stub on a channel closed at the end of the test."""
    channels: list[grpc.Channel] = []

    def start(**env: str) -> tuple[Any, enrich_pb2_grpc.EnrichServiceStub]:
        service = start_service(
            "enrich",
            env={
                "EVENTPIPE_ENRICH_SPARK_MASTER": "local[2]",
                "EVENTPIPE_ENRICH_SPARK_PARTITIONS": "2",
                **env,
            },
            timeout=120,
        )
        channel = grpc.insecure_channel(service.address)
        channels.append(channel)
        return service, enrich_pb2_grpc.EnrichServiceStub(channel)

    yield start
    for channel in channels:
        channel.close()


@pytest.fixture
def enrich_stub(start_enrich: StartEnrich) -> tuple[Any, enrich_pb2_grpc.EnrichServiceStub]:
    """The enrich service with the default test settings, and a stub."""
    return start_enrich()


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """The google.rpc.BadRequest field violations of a refused call: {field: description}."""
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    return {v.field: v.description for v in bad.field_violations}
    return {}


def write_dimensions(tables: dict[str, Any], data: dataset.Dataset) -> None:
    for name, versions in data.dims.items():
        dataset.write_dimension(tables[DIMENSIONS_TABLE], data.tenant_id, name, versions)


def start_test_stream(
    engine: SparkEngine,
    common_settings: Any,
    tenant_id: str,
    checkpoint: Path,
    on_batch: Callable[[Any], None],
    trigger_seconds: float = 1.0,
) -> StreamingHandle:
    """A streaming enrichment of ``tenant_id`` with the test spec on the test's raw topic."""
    return engine.start_streaming(
        StreamingRequest(
            f"stream-{tenant_id}",
            tenant_id,
            validate_spec(spec_from_proto(dataset.test_spec()), version=1),
            spark_kafka_options(common_settings),
            common_settings.raw_topic,
            trigger_seconds,
            str(checkpoint),
            on_batch=on_batch,
        )
    )


def produce_events(
    common_settings: Any, events: list[event_pb2.Event], traceparent: str | None = None
) -> None:
    """Sends ``events`` to the test's raw topic as ingest does (key, headers), and waits for
    every delivery."""
    from confluent_kafka import Producer
    from eventpipe.core.kafka import producer_config
    from eventpipe.core.topic_contract import message_headers, message_key

    producer = Producer(producer_config(common_settings))
    for event in events:
        producer.produce(
            common_settings.raw_topic,
            key=message_key(event.tenant_id, event.entity_id),
            value=event.SerializeToString(),
            headers=message_headers(event, traceparent),
        )
    assert producer.flush(30) == 0
