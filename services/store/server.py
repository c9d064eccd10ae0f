"""Bootstrap of the store service: wires config, adapters and servicer into the shared server."""

from __future__ import annotations

from functools import partial

from eventpipe.core.bigtable import check_bigtable
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import check_kafka
from eventpipe.core.server import ServiceDefinition, run_service
from eventpipe.store.v1 import store_pb2, store_pb2_grpc

from store.config import StoreSettings
from store.servicer import StoreServicer

SERVICE_NAME = store_pb2.DESCRIPTOR.services_by_name["StoreService"].full_name


def build(settings: StoreSettings, common: CommonSettings) -> ServiceDefinition:
    servicer = StoreServicer()
    return ServiceDefinition(
        name="store",
        grpc_service_names=[SERVICE_NAME],
        register=partial(store_pb2_grpc.add_StoreServiceServicer_to_server, servicer),
        readiness_checks=[partial(check_kafka, common), partial(check_bigtable, common)],
    )


def main() -> int:
    return run_service("store", StoreSettings, build)
