"""What a gRPC error or request carries, for assertions in every tier."""

from __future__ import annotations

import grpc
from eventpipe.common.v1 import event_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def field_violations(error: grpc.RpcError) -> list[str]:
    """The fields named by the ``google.rpc.BadRequest`` details of an error, in order."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"{error} carries no google.rpc.Status details"
    fields: list[str] = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields += [violation.field for violation in bad_request.field_violations]
    return fields


def time_range(start: Timestamp | None = None, end: Timestamp | None = None) -> event_pb2.TimeRange:
    """A TimeRange with the bounds given; a bound left None stays unset (open)."""
    result = event_pb2.TimeRange()
    if start is not None:
        result.start_time.CopyFrom(start)
    if end is not None:
        result.end_time.CopyFrom(end)
    return result
