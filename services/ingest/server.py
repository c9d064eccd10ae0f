"""Bootstrap of the ingest service: wires config, adapters and servicer into the shared server."""

from __future__ import annotations

from functools import partial

from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import check_kafka
from eventpipe.core.server import ServiceDefinition, run_service
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from ingest.config import IngestSettings
from ingest.servicer import IngestServicer

SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name


def build(settings: IngestSettings, common: CommonSettings) -> ServiceDefinition:
    servicer = IngestServicer()
    return ServiceDefinition(
        name="ingest",
        grpc_service_names=[SERVICE_NAME],
        register=partial(ingest_pb2_grpc.add_IngestServiceServicer_to_server, servicer),
        readiness_checks=[partial(check_kafka, common)],
    )


def main() -> int:
    return run_service("ingest", IngestSettings, build)
