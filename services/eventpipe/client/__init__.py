"""The EventPipe Python client library (docs/client.md).

from eventpipe.client import EventPipeClient

with EventPipeClient("localhost:8080", token=token, tenant_id="acme") as client:
    future = client.events.send(event)      # batched, retried, bounded
    client.events.flush()
    for event in client.entities.iter_events("user-1"):   # every page
        ...
"""

from eventpipe.client.client import (
    Dimensions,
    Entities,
    EventPipeClient,
    Jobs,
    time_range,
    timestamp,
)
from eventpipe.client.errors import (
    AlreadyExists,
    BufferFull,
    Cancelled,
    DeadlineExceeded,
    EventPipeError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Violation,
    error_from_rpc,
)
from eventpipe.client.producer import EventProducer, ProducerSettings
from eventpipe.client.retry import RetryPolicy
from eventpipe.core.results import ItemOutcome, ItemStatus

__all__ = [
    "AlreadyExists",
    "BufferFull",
    "Cancelled",
    "DeadlineExceeded",
    "Dimensions",
    "Entities",
    "EventPipeClient",
    "EventPipeError",
    "EventProducer",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "ItemOutcome",
    "ItemStatus",
    "Jobs",
    "NotFound",
    "PermissionDenied",
    "ProducerSettings",
    "ResourceExhausted",
    "RetryPolicy",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Violation",
    "error_from_rpc",
    "time_range",
    "timestamp",
]
