"""Demo data for `eventpipe stack up`: a small synthetic clickstream, loaded once services run.

Dimensions (users, products) go through StoreService.UpsertDimensionRecords, events through
IngestService.StreamEvents. A service that is missing or does not implement its RPC yet only
earns a warning: the demo data is a convenience and must never fail `make up`.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import grpc

from eventpipe.demo.generator import DemoSpec, batches, generate
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from eventpipe.stack.stack import StackConfig, dev_token
from eventpipe.store.v1 import store_pb2, store_pb2_grpc

log = logging.getLogger(__name__)

DEMO_TENANT = "demo"
DEMO_SPEC = DemoSpec(users=100, products=40, sessions=300, days=3, seed=7)


def _warn(message: str) -> None:
    log.warning(message)
    print(f"demo data: WARNING: {message}")


def _describe(error: grpc.RpcError) -> str:
    return f"{error.code().name}: {error.details()}"  # type: ignore[attr-defined]


def load_demo_data(config: object) -> None:
    """Generates the demo set and loads it through the running services (never raises)."""
    ports = getattr(config, "service_ports", {"ingest": 50051, "store": 50052})
    token = (
        dev_token(config, DEMO_TENANT, ["ingest", "admin"])
        if isinstance(config, StackConfig)
        else None
    )
    metadata = [("authorization", f"Bearer {token}")] if token else None
    now_micros = time.time_ns() // 1000
    data = generate(dataclasses.replace(DEMO_SPEC, now_micros=now_micros))

    with grpc.insecure_channel(f"127.0.0.1:{ports['store']}") as channel:
        store = store_pb2_grpc.StoreServiceStub(channel)
        for dimension, records in (("users", data.users), ("products", data.products)):
            try:
                written = 0
                for chunk in batches(records, 500):
                    response = store.UpsertDimensionRecords(
                        store_pb2.UpsertDimensionRecordsRequest(
                            tenant_id=DEMO_TENANT, dimension=dimension, records=chunk
                        ),
                        timeout=30,
                        metadata=metadata,
                    )
                    written += response.summary.accepted_count
                print(f"demo data: {written} {dimension} versions upserted")
            except grpc.RpcError as error:  # e.g. UNIMPLEMENTED while the store is being built
                _warn(f"{dimension} not loaded, the store answered {_describe(error)}")
                break

    with grpc.insecure_channel(f"127.0.0.1:{ports['ingest']}") as channel:
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        requests = (
            ingest_pb2.StreamEventsRequest(batch_id=str(n), tenant_id=DEMO_TENANT, events=chunk)
            for n, chunk in enumerate(batches(data.events, 500))
        )
        try:
            accepted = sum(
                r.summary.accepted_count
                for r in ingest.StreamEvents(requests, timeout=120, metadata=metadata)
            )
            print(f"demo data: {accepted} of {len(data.events)} events ingested (tenant demo)")
        except grpc.RpcError as error:
            _warn(f"events not ingested, ingest answered {_describe(error)}")
