"""Turning a client's batch into raw-topic messages: the ingest rules, without any I/O.

Per event, in order: the event's tenant must be empty or the request's (empty becomes the
request's); the server stamps ``ingest_time``; the rules of ``eventpipe.core.validation`` apply
to the event as it will be written; an event whose ``event_id`` an earlier valid event of the
same batch already used is a duplicate and is not written twice. An invalid event never
affects its neighbours. Request-level problems (bad tenant, empty or too large a batch) refuse
the whole request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from eventpipe.common.v1 import event_pb2
from eventpipe.core.errors import ResourceExhausted, Violation, invalid_fields
from eventpipe.core.results import ItemOutcome, ItemStatus
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.core.topic_contract import message_headers, message_key
from eventpipe.core.validation import MAX_BATCH_EVENTS, EventLimits, check_id, validate_event

from ingest.outcome import INVALID_ARGUMENT
from ingest.ports import OutgoingMessage


@dataclass
class PreparedBatch:
    """A validated batch: outcomes decided so far, and the messages still to be written."""

    tenant_id: str
    size: int
    # One slot per event; None while the event waits for Kafka's confirmation.
    outcomes: list[ItemOutcome | None]
    messages: list[OutgoingMessage] = field(default_factory=list)
    # message_indexes[i] is the request index of messages[i].
    message_indexes: list[int] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    message_bytes: int = 0


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
    prepared = PreparedBatch(tenant_id=tenant_id, size=len(events), outcomes=[None] * len(events))
    prepared.headers = message_headers(
        event_pb2.Event(tenant_id=tenant_id, ingest_time=ingest_time),
        traceparent,
        backfill=backfill,
    )
    seen_ids: set[str] = set()
    for index, event in enumerate(events):
        event_id = event.event_id
        if event.tenant_id and event.tenant_id != tenant_id:
            prepared.outcomes[index] = ItemOutcome(
                index,
                event_id,
                ItemStatus.REJECTED,
                INVALID_ARGUMENT,
                (Violation("tenant_id", "must be empty or equal the tenant_id of the request"),),
            )
            continue
        event.tenant_id = tenant_id
        event.ingest_time.CopyFrom(ingest_time)
        violations = validate_event(event, now_micros, limits, backfill=backfill)
        if violations:
            prepared.outcomes[index] = ItemOutcome(
                index, event_id, ItemStatus.REJECTED, INVALID_ARGUMENT, tuple(violations)
            )
            continue
        if event_id in seen_ids:
            prepared.outcomes[index] = ItemOutcome(index, event_id, ItemStatus.DUPLICATE)
            continue
        seen_ids.add(event_id)
        # Deterministic: map entries in key order, so equal events give equal bytes.
        value = event.SerializeToString(deterministic=True)
        prepared.messages.append(OutgoingMessage(message_key(tenant_id, event.entity_id), value))
        prepared.message_indexes.append(index)
        prepared.message_ids.append(event_id)
        prepared.message_bytes += len(value)
    return prepared
