"""gRPC servicer of eventpipe.query.v1.QueryService: proto in, domain call, proto out.

RPCs not implemented yet inherit the generated base class and answer UNIMPLEMENTED.
"""

from __future__ import annotations

from eventpipe.query.v1 import query_pb2_grpc


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    """Thin adapter between the wire contract and the query domain logic."""
