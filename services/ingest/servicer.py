"""gRPC servicer of eventpipe.ingest.v1.IngestService: proto in, domain call, proto out.

RPCs not implemented yet inherit the generated base class and answer UNIMPLEMENTED.
"""

from __future__ import annotations

from eventpipe.ingest.v1 import ingest_pb2_grpc


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """Thin adapter between the wire contract and the ingest domain logic."""
