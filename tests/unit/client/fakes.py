"""An in-process gRPC server for the client's unit tests: fake servicers behind the project's
own ErrorMappingInterceptor, so that errors reach the client exactly as the services send them."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
from eventpipe.core.interceptors import ErrorMappingInterceptor
from eventpipe.enrich.v1 import enrich_pb2_grpc
from eventpipe.ingest.v1 import ingest_pb2_grpc
from eventpipe.query.v1 import query_pb2_grpc
from eventpipe.store.v1 import store_pb2_grpc

_ADDERS = {
    "ingest": ingest_pb2_grpc.add_IngestServiceServicer_to_server,
    "store": store_pb2_grpc.add_StoreServiceServicer_to_server,
    "enrich": enrich_pb2_grpc.add_EnrichServiceServicer_to_server,
    "query": query_pb2_grpc.add_QueryServiceServicer_to_server,
}


@contextmanager
def serving(**servicers: Any) -> Iterator[str]:
    """Serves the given servicers (``ingest=..., query=...``) on a free loopback port."""
    server = grpc.server(futures.ThreadPoolExecutor(8), interceptors=[ErrorMappingInterceptor()])
    for name, servicer in servicers.items():
        _ADDERS[name](servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)
