"""gRPC servicer of eventpipe.enrich.v1.EnrichService: proto in, domain call, proto out.

RPCs not implemented yet inherit the generated base class and answer UNIMPLEMENTED.
"""

from __future__ import annotations

from eventpipe.enrich.v1 import enrich_pb2_grpc


class EnrichServicer(enrich_pb2_grpc.EnrichServiceServicer):
    """Thin adapter between the wire contract and the enrich domain logic."""
