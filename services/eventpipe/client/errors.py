"""What a failed call raises: the project's one error hierarchy (``eventpipe.core.errors``),
rebuilt on the client from the gRPC status and its ``google.rpc`` details.

The server turns each ``EventPipeError`` into a status with ``BadRequest`` field violations and
``RetryInfo``; ``error_from_rpc`` turns that status back into the same class, so a client catches
``InvalidArgument`` and reads ``violations`` as the service raised them. Codes the services never
raise on purpose (DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, ...) get the client-side classes
below, all of them ``EventPipeError`` too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from eventpipe.core.errors import (
    AlreadyExists,
    EventPipeError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Violation,
)


@dataclass
class DeadlineExceeded(EventPipeError):
    """The call's deadline passed; the work may or may not have been done."""

    code: grpc.StatusCode = field(default=grpc.StatusCode.DEADLINE_EXCEEDED, init=False)


@dataclass
class Cancelled(EventPipeError):
    code: grpc.StatusCode = field(default=grpc.StatusCode.CANCELLED, init=False)


@dataclass
class Unimplemented(EventPipeError):
    """The service does not offer this RPC (an older server, or the wrong address)."""

    code: grpc.StatusCode = field(default=grpc.StatusCode.UNIMPLEMENTED, init=False)


@dataclass
class Internal(EventPipeError):
    """INTERNAL, UNKNOWN, DATA_LOSS and any code without a class of its own; ``status_code``
    keeps the one the server sent."""

    status_code: grpc.StatusCode = grpc.StatusCode.INTERNAL


@dataclass
class BufferFull(ResourceExhausted):
    """The client's own buffer is full (``max_buffered_events`` or ``max_buffered_bytes``):
    nothing was sent. Raised by ``EventProducer.send`` after ``max_block_seconds``."""


_BY_CODE: dict[grpc.StatusCode, type[EventPipeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}

# Retrying these is safe and may succeed: the service did not take the work, and says when
# to come back (RetryInfo) or is briefly unreachable.
RETRYABLE = (ResourceExhausted, Unavailable)


def _details(error: grpc.RpcError) -> tuple[list[Violation], float | None]:
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # a status whose details disagree with its code or message
        status = None
    violations: list[Violation] = []
    retry_after: float | None = None
    for detail in status.details if status is not None else ():
        bad_request = error_details_pb2.BadRequest()
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(bad_request):
            violations += [Violation(v.field, v.description) for v in bad_request.field_violations]
        elif detail.Unpack(retry):
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    if retry_after is None:
        retry_after = _retry_after_header(error)
    return violations, retry_after


def _retry_after_header(error: grpc.RpcError) -> float | None:
    trailing: Any = getattr(error, "trailing_metadata", lambda: None)()
    for key, value in trailing or ():
        if key == "retry-after":
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def error_from_rpc(error: grpc.RpcError) -> EventPipeError:
    """The ``EventPipeError`` for a failed call, with its violations and retry advice."""
    code: grpc.StatusCode = getattr(error, "code", lambda: grpc.StatusCode.UNKNOWN)()
    message: str = getattr(error, "details", lambda: "")() or code.name
    violations, retry_after = _details(error)
    kind = _BY_CODE.get(code)
    result: EventPipeError
    if kind is InvalidArgument:
        result = InvalidArgument(message, violations=violations)
    elif kind in (ResourceExhausted, Unavailable):
        result = kind(message, retry_after_seconds=retry_after)  # type: ignore[call-arg]
    elif kind is not None:
        result = kind(message)
    else:
        result = Internal(message, status_code=code)
    result.__cause__ = error
    return result


def item_error(code_name: str, message: str, violations: list[Violation]) -> EventPipeError:
    """The error for one rejected item of a batch (``ItemResult.code`` by name)."""
    code = getattr(grpc.StatusCode, code_name, grpc.StatusCode.UNKNOWN)
    kind = _BY_CODE.get(code)
    if kind is InvalidArgument:
        return InvalidArgument(message, violations=violations)
    if kind is not None:
        return kind(message)
    return Internal(message, status_code=code)


__all__ = [
    "RETRYABLE",
    "AlreadyExists",
    "BufferFull",
    "Cancelled",
    "DeadlineExceeded",
    "EventPipeError",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Violation",
    "error_from_rpc",
    "item_error",
]
