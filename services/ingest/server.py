"""Bootstrap of the ingest service: wires config, adapters and servicer into the shared server."""

from __future__ import annotations

from functools import partial

from eventpipe.core import tracing
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import check_kafka
from eventpipe.core.server import ServiceDefinition, run_service
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from ingest.adapters.kafka_log import KafkaEventLog
from ingest.capacity import InFlightLimiter
from ingest.config import IngestSettings
from ingest.pipeline import IngestPipeline
from ingest.ports import EventLog
from ingest.servicer import IngestServicer

SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name


def kafka_event_log(settings: IngestSettings, common: CommonSettings) -> KafkaEventLog:
    # The producer's own queue is twice the in-flight bound, so the bound trips first and a
    # full producer queue (BufferError) stays a safety net.
    return KafkaEventLog(
        common,
        common.raw_topic,
        message_timeout_seconds=settings.produce_timeout_seconds,
        max_queue_messages=min(settings.max_in_flight_events * 2, 10_000_000),
        max_queue_kbytes=min(settings.max_in_flight_bytes * 2 // 1024, 2_097_151),
    )


def build(
    settings: IngestSettings, common: CommonSettings, event_log: EventLog | None = None
) -> ServiceDefinition:
    tracing.configure("ingest")  # off unless EVENTPIPE_OTEL_ENABLED; in each worker process
    event_log = event_log or kafka_event_log(settings, common)
    pipeline = IngestPipeline(
        event_log,
        InFlightLimiter(settings.max_in_flight_events, settings.max_in_flight_bytes),
        limits=settings.event_limits(),
        max_batch_bytes=settings.max_batch_bytes,
        produce_timeout_seconds=settings.produce_timeout_seconds,
        retry_after_seconds=settings.retry_after_seconds,
    )
    servicer = IngestServicer(
        pipeline,
        stream_window=settings.stream_window_batches,
        stream_capacity_wait=settings.stream_capacity_wait_seconds,
        stream_idle_timeout=settings.stream_idle_timeout_seconds,
    )
    return ServiceDefinition(
        name="ingest",
        grpc_service_names=[SERVICE_NAME],
        register=partial(ingest_pb2_grpc.add_IngestServiceServicer_to_server, servicer),
        readiness_checks=[partial(check_kafka, common)],
        # Stopped before the gRPC server drains: idle streams end instead of holding the grace.
        workers=[servicer.stream_drain],
        # After the gRPC server drained: whatever is still queued gets its chance to be written.
        on_shutdown=[partial(event_log.close, settings.produce_timeout_seconds), tracing.shutdown],
    )


def main() -> int:
    return run_service("ingest", IngestSettings, build)
