"""Turning a client's batch into raw-topic messages: the ingest rules, without any I/O.

Per event, in order: the event's tenant must be empty or the request's (empty becomes the
request's); the server stamps ``ingest_time``; the rules of ``eventpipe.core.validation`` apply
to the event as it will be written; an event whose ``event_id`` an earlier valid event of the
same batch already used is a duplicate and is not written twice. An invalid event never
affects its neighbours. Request-level problems (bad tenant, empty or too large a batch) refuse
the whole request.

This runs once per event on the hot path, so a valid event costs one serialization (whose
length is the size rule's input) and no object beyond its key and value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from eventpipe.common.v1 import event_pb2
from eventpipe.core.errors import ResourceExhausted, Violation, invalid_fields
from eventpipe.core.results import ItemOutcome, ItemStatus
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.core.topic_contract import message_headers, tenant_key_prefix
from eventpipe.core.validation import MAX_BATCH_EVENTS, EventLimits, check_id, validate_event

from ingest.outcome import INVALID_ARGUMENT

_FOREIGN_TENANT = (Violation("tenant_id", "must be empty or equal the tenant_id of the request"),)


@dataclass
class PreparedBatch:
    """A validated batch: outcomes decided so far, and the messages still to be written."""

    tenant_id: str
    # The event id of each request index.
    ids: list[str] = field(default_factory=list)
    # Outcomes decided without Kafka (invalid, duplicate), by request index; an index that is
    # neither here nor among the messages does not exist.
    refused: dict[int, ItemOutcome] = field(default_factory=dict)
    # The messages to write: keys[i], values[i] is the event at request index indexes[i].
    keys: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    message_bytes: int = 0

    @property
    def size(self) -> int:
        return len(self.ids)


def check_request(tenant_id: str, event_count: int, request_bytes: int, max_bytes: int) -> None:
    """Refuses a whole request: bad tenant, batch size out of 1..1000, too many bytes."""
    violations = check_id("tenant_id", tenant_id)
    if event_count == 0:
        violations.append(Violation("events", "a batch needs at least 1 event"))
    elif event_count > MAX_BATCH_EVENTS:
        violations.append(
            Violation(
                "events", f"a batch holds at most {MAX_BATCH_EVENTS} events, got {event_count}"
            )
        )
    if violations:
        raise invalid_fields(violations)
    if request_bytes > max_bytes:
        raise ResourceExhausted(
            f"request of {request_bytes} bytes exceeds the limit of {max_bytes} bytes; "
            "send smaller batches"
        )


def prepare_batch(
    tenant_id: str,
    events: Sequence[event_pb2.Event],
    *,
    now_micros: int,
    limits: EventLimits,
    traceparent: str | None = None,
    backfill: bool = False,
) -> PreparedBatch:
    """Validates and stamps ``events`` (mutating them) and encodes the valid ones.

    The request must already have passed ``check_request``. ``backfill`` (the caller checked
    the admin scope) judges event times against the backfill horizon and marks the messages.
    """
    ingest_time = timestamp_from_micros(now_micros)
    prepared = PreparedBatch(tenant_id=tenant_id)
    prepared.headers = message_headers(
        event_pb2.Event(tenant_id=tenant_id, ingest_time=ingest_time),
        traceparent,
        backfill=backfill,
    )
    key_prefix = tenant_key_prefix(tenant_id)
    ids, refused = prepared.ids, prepared.refused
    keys, values, indexes = prepared.keys, prepared.values, prepared.indexes
    seen_ids: set[str] = set()
    message_bytes = 0
    for index, event in enumerate(events):
        event_id = event.event_id
        ids.append(event_id)
        own_tenant = event.tenant_id
        if own_tenant != tenant_id:
            if own_tenant:
                refused[index] = ItemOutcome(
                    index, event_id, ItemStatus.REJECTED, INVALID_ARGUMENT, _FOREIGN_TENANT
                )
                continue
            event.tenant_id = tenant_id
        event.ingest_time.CopyFrom(ingest_time)
        # Deterministic: map entries in key order, so equal events give equal bytes.
        value = event.SerializeToString(deterministic=True)
        violations = validate_event(
            event, now_micros, limits, backfill=backfill, serialized_size=len(value)
        )
        if violations:
            refused[index] = ItemOutcome(
                index, event_id, ItemStatus.REJECTED, INVALID_ARGUMENT, tuple(violations)
            )
            continue
        if event_id in seen_ids:
            refused[index] = ItemOutcome(index, event_id, ItemStatus.DUPLICATE)
            continue
        seen_ids.add(event_id)
        keys.append(key_prefix + event.entity_id.encode())
        values.append(value)
        indexes.append(index)
        message_bytes += len(value)
    prepared.message_bytes = message_bytes
    return prepared
