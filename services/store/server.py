"""Bootstrap of the store service: wires config, adapters and servicer into the shared server.

At start-up the topics and tables (with their GC rules) are created idempotently; the
consumer daemon then runs as a background worker of the same process (or alone, with
``python -m store.consumer``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from functools import partial
from typing import cast

from confluent_kafka import Consumer
from eventpipe.core import tracing
from eventpipe.core.bigtable import check_bigtable, ensure_tables
from eventpipe.core.config import CommonSettings, ConfigError, load_settings
from eventpipe.core.entity_changes import EntityChangePublisher
from eventpipe.core.kafka import check_kafka, consumer_config
from eventpipe.core.logging import configure_logging
from eventpipe.core.metrics import start_metrics_server
from eventpipe.core.page_tokens import PageTokenCodec
from eventpipe.core.server import BackgroundWorker, ServiceDefinition, run_service
from eventpipe.core.topology import ensure_topology, topology_table_specs
from eventpipe.core.waiting import wait_until
from eventpipe.store.v1 import store_pb2, store_pb2_grpc

from store.adapters.bigtable import BigtableRowReader, BigtableRowWriter
from store.adapters.dead_letter import KafkaDeadLetterSink
from store.config import StoreSettings
from store.consumer.backoff import Backoff
from store.consumer.daemon import ConsumerDaemon, KafkaConsumerLike
from store.consumer.status import ConsumerState, ConsumerStatus
from store.dimensions import DimensionStore
from store.erasure import EntityEraser
from store.raw_events import RawEventBrowser
from store.servicer import StoreServicer

SERVICE_NAME = store_pb2.DESCRIPTOR.services_by_name["StoreService"].full_name
STARTUP_TIMEOUT = 60.0
log = logging.getLogger(__name__)


def ensure_store_tables(common: CommonSettings) -> None:
    """Recreates missing tables (a fresh emulator keeps none); cheap when all exist."""
    ensure_tables(common, topology_table_specs(common))


def ensure_topology_at_start(common: CommonSettings) -> None:
    """Creates topics and tables, waiting a bounded time for Kafka and Bigtable to answer."""

    def attempt() -> bool:
        ensure_topology(common)
        return True

    wait_until(attempt, timeout=STARTUP_TIMEOUT, what="Kafka and Bigtable to create the topology")


def build_writer(settings: StoreSettings, common: CommonSettings) -> BigtableRowWriter:
    return BigtableRowWriter(
        common,
        attempt_timeout=settings.write_attempt_timeout_seconds,
        ensure_schema=partial(ensure_store_tables, common),
    )


def build_consumer(
    settings: StoreSettings, common: CommonSettings, writer: BigtableRowWriter
) -> ConsumerDaemon:
    def kafka_consumer() -> KafkaConsumerLike:
        consumer = Consumer(
            consumer_config(
                common,
                settings.group_id(common),
                **{
                    "queued.max.messages.kbytes": settings.fetch_queue_max_kbytes,
                    "session.timeout.ms": settings.session_timeout_ms,
                    "client.id": f"eventpipe-store-{os.getpid()}",
                },
            )
        )
        return cast(KafkaConsumerLike, consumer)

    return ConsumerDaemon(
        topic=common.raw_topic,
        consumer_factory=kafka_consumer,
        writer=writer,
        index_reader=writer,
        dead_letters=KafkaDeadLetterSink(common),
        limits=settings.event_limits(),
        backoff=Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds),
        batch_max_messages=settings.batch_max_messages,
        batch_max_wait=settings.batch_max_wait_ms / 1000,
    )


LIST_RAW_EVENTS = "eventpipe.store.v1.StoreService/ListRawEvents"
LIST_ERASURES = "eventpipe.store.v1.StoreService/ListEntityErasures"


def build(settings: StoreSettings, common: CommonSettings) -> ServiceDefinition:
    tracing.configure("store")  # off unless EVENTPIPE_OTEL_ENABLED
    ensure_topology_at_start(common)
    writer = build_writer(settings, common)
    reader = BigtableRowReader(common)
    secret = (
        settings.page_token_secret.get_secret_value().encode()
        if settings.page_token_secret
        else os.urandom(32)
    )
    workers: list[BackgroundWorker] = []
    liveness: list[Callable[[], None]] = []
    readiness: list[Callable[[], None]] = [
        partial(check_kafka, common),
        partial(check_bigtable, common),
    ]

    def stopped_status() -> ConsumerStatus:
        return ConsumerStatus(state=ConsumerState.STOPPED)

    status = stopped_status
    if settings.consumer_enabled:
        daemon = build_consumer(settings, common, writer)
        workers.append(daemon)
        liveness.append(daemon.check_alive)
        status = daemon.status

    servicer = StoreServicer(
        DimensionStore(writer, reader),
        RawEventBrowser(reader, PageTokenCodec(secret, LIST_RAW_EVENTS)),
        status,
        EntityEraser(
            writer,
            reader,
            reader,
            EntityChangePublisher(common),
            PageTokenCodec(secret, LIST_ERASURES),
        ),
    )
    return ServiceDefinition(
        name="store",
        grpc_service_names=[SERVICE_NAME],
        register=partial(store_pb2_grpc.add_StoreServiceServicer_to_server, servicer),
        readiness_checks=readiness,
        liveness_checks=liveness,
        workers=workers,
        on_shutdown=[reader.close, writer.close, tracing.shutdown],
    )


def main() -> int:
    return run_service("store", StoreSettings, build)


def consumer_main() -> int:
    """``python -m store.consumer``: only the consumer daemon, until SIGTERM (exit 0)."""
    try:
        common = load_settings(CommonSettings)
        settings = load_settings(StoreSettings)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    configure_logging("store-consumer", common.log_level)
    tracing.configure("store")
    ensure_topology_at_start(common)
    if settings.metrics_port:
        start_metrics_server(settings.host, settings.metrics_port)
    writer = build_writer(settings, common)
    daemon = build_consumer(settings, common, writer)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        daemon.request_stop(settings.shutdown_grace_seconds)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner = threading.Thread(target=daemon.run, name="store-consumer")
    runner.start()
    while runner.is_alive():
        runner.join(0.5)  # the main thread stays free to take signals
    writer.close()
    tracing.shutdown()
    return 0 if daemon.failed is None else 1
