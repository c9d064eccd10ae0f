"""gRPC servicer of eventpipe.store.v1.StoreService: proto in, domain call, proto out.

RPCs not implemented yet inherit the generated base class and answer UNIMPLEMENTED.
"""

from __future__ import annotations

from eventpipe.store.v1 import store_pb2_grpc


class StoreServicer(store_pb2_grpc.StoreServiceServicer):
    """Thin adapter between the wire contract and the store domain logic."""
