"""Bootstrap of the query service: wires config, adapters and servicer into the shared server."""

from __future__ import annotations

from functools import partial

from eventpipe.core.bigtable import check_bigtable
from eventpipe.core.config import CommonSettings
from eventpipe.core.server import ServiceDefinition, run_service
from eventpipe.query.v1 import query_pb2, query_pb2_grpc

from query.config import QuerySettings
from query.servicer import QueryServicer

SERVICE_NAME = query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name


def build(settings: QuerySettings, common: CommonSettings) -> ServiceDefinition:
    servicer = QueryServicer()
    return ServiceDefinition(
        name="query",
        grpc_service_names=[SERVICE_NAME],
        register=partial(query_pb2_grpc.add_QueryServiceServicer_to_server, servicer),
        readiness_checks=[partial(check_bigtable, common)],
    )


def main() -> int:
    return run_service("query", QuerySettings, build)
