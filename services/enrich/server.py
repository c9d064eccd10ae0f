"""Bootstrap of the enrich service: wires config, adapters and servicer into the shared server."""

from __future__ import annotations

from functools import partial

from eventpipe.core.bigtable import check_bigtable
from eventpipe.core.config import CommonSettings
from eventpipe.core.server import ServiceDefinition, run_service
from eventpipe.enrich.v1 import enrich_pb2, enrich_pb2_grpc

from enrich.config import EnrichSettings
from enrich.servicer import EnrichServicer

SERVICE_NAME = enrich_pb2.DESCRIPTOR.services_by_name["EnrichService"].full_name


def build(settings: EnrichSettings, common: CommonSettings) -> ServiceDefinition:
    servicer = EnrichServicer()
    return ServiceDefinition(
        name="enrich",
        grpc_service_names=[SERVICE_NAME],
        register=partial(enrich_pb2_grpc.add_EnrichServiceServicer_to_server, servicer),
        readiness_checks=[partial(check_bigtable, common)],
    )


def main() -> int:
    return run_service("enrich", EnrichSettings, build)
