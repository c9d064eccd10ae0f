"""The raw-events topic contract, shared by ingest, direct producers and the store consumer.

- key: ``<tenant_id>#<entity_id>`` (UTF-8), so one entity's events share a partition, in order;
- value: the serialized ``eventpipe.common.v1.Event`` (protobuf binary);
- headers: ``eventpipe-tenant``, ``eventpipe-schema`` (the message's full name and version),
  ``eventpipe-ingest-time`` (microseconds since the epoch, decimal), and ``traceparent``
  (W3C trace context) when the producer has one.

docs/kafka-topic-contract.md describes it for producers in other languages.
"""

from __future__ import annotations

from eventpipe.common.v1 import event_pb2

SCHEMA_NAME = "eventpipe.common.v1.Event"
SCHEMA_VERSION = "1"
HEADER_TENANT = "eventpipe-tenant"
HEADER_SCHEMA = "eventpipe-schema"
HEADER_INGEST_TIME = "eventpipe-ingest-time"
HEADER_TRACEPARENT = "traceparent"
# Dead-letter headers, added by the store consumer.
HEADER_DLQ_ERROR = "eventpipe-dlq-error"
HEADER_DLQ_SOURCE = "eventpipe-dlq-source"  # "<topic>/<partition>/<offset>"


def message_key(tenant_id: str, entity_id: str) -> bytes:
    return f"{tenant_id}#{entity_id}".encode()


def message_headers(
    event: event_pb2.Event, traceparent: str | None = None
) -> list[tuple[str, bytes]]:
    ingest_micros = event.ingest_time.seconds * 1_000_000 + event.ingest_time.nanos // 1000
    headers = [
        (HEADER_TENANT, event.tenant_id.encode()),
        (HEADER_SCHEMA, f"{SCHEMA_NAME};v={SCHEMA_VERSION}".encode()),
        (HEADER_INGEST_TIME, str(ingest_micros).encode()),
    ]
    if traceparent:
        headers.append((HEADER_TRACEPARENT, traceparent.encode()))
    return headers
