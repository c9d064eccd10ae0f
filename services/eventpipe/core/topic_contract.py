"""The raw-events topic contract, shared by ingest, direct producers and every consumer.

- key: ``<tenant_id>#<entity_id>`` (UTF-8), so one entity's events share a partition, in order;
- value: the serialized ``eventpipe.common.v1.Event`` (protobuf binary);
- headers: ``eventpipe-tenant``, ``eventpipe-schema`` (the message's full name and version),
  ``eventpipe-ingest-time`` (microseconds since the epoch, decimal), ``traceparent``
  (W3C trace context) when the producer has one, and ``eventpipe-backfill: 1`` on a history
  load, whose event times may reach back to the backfill horizon instead of the live window.

``decode_raw_event`` is THE reading of a raw-topic message: the store consumer and streaming
enrichment both call it, so a message one of them refuses the other refuses too.

docs/kafka-topic-contract.md describes it for producers in other languages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

from eventpipe.common.v1 import event_pb2
from eventpipe.core.errors import describe
from eventpipe.core.validation import (
    EventLimits,
    check_timestamp,
    timestamp_micros,
    validate_event,
)

P = ParamSpec("P")
R = TypeVar("R")

SCHEMA_NAME = "eventpipe.common.v1.Event"
SCHEMA_VERSION = "1"
SCHEMA_HEADER_VALUE = f"{SCHEMA_NAME};v={SCHEMA_VERSION}".encode()
HEADER_TENANT = "eventpipe-tenant"
HEADER_SCHEMA = "eventpipe-schema"
HEADER_INGEST_TIME = "eventpipe-ingest-time"
HEADER_TRACEPARENT = "traceparent"
# "1": a history load (admin-only through ingest); event_time is judged against the backfill
# horizon instead of the live window. Absent or "0": a live event.
HEADER_BACKFILL = "eventpipe-backfill"
BACKFILL_ON = b"1"
BACKFILL_OFF = b"0"
# Dead-letter headers, added by the store consumer.
HEADER_DLQ_ERROR = "eventpipe-dlq-error"
HEADER_DLQ_SOURCE = "eventpipe-dlq-source"  # "<topic>/<partition>/<offset>"


class PoisonMessage(Exception):
    """The message breaks the topic contract and can never be stored; ``str(exc)`` is why."""


def tenant_key_prefix(tenant_id: str) -> bytes:
    """The start every message key of ``tenant_id`` shares: ``<tenant_id>#``."""
    return f"{tenant_id}#".encode()


def message_key(tenant_id: str, entity_id: str) -> bytes:
    return tenant_key_prefix(tenant_id) + entity_id.encode()


def message_headers(
    event: event_pb2.Event, traceparent: str | None = None, *, backfill: bool = False
) -> list[tuple[str, bytes]]:
    """The headers of ``event``'s message. An ``ingest_time`` that is no valid Timestamp gets no
    ingest-time header: the consumer refuses the event for that ``ingest_time`` alone."""
    headers = [(HEADER_TENANT, event.tenant_id.encode()), (HEADER_SCHEMA, SCHEMA_HEADER_VALUE)]
    if not check_timestamp("ingest_time", event.ingest_time):
        ingest_micros = event.ingest_time.ToMicroseconds()
        headers.append((HEADER_INGEST_TIME, str(ingest_micros).encode()))
    if traceparent:
        headers.append((HEADER_TRACEPARENT, traceparent.encode()))
    if backfill:
        headers.append((HEADER_BACKFILL, BACKFILL_ON))
    return headers


def _header(headers: Sequence[tuple[str, bytes]], name: str) -> bytes | None:
    """The first value of header ``name``; a header present without a value reads as b""."""
    for key, value in headers:
        if key == name:
            return value if value is not None else b""
    return None


def is_backfill(headers: Sequence[tuple[str, bytes]]) -> bool:
    """Whether the message is a history load (``eventpipe-backfill: 1``); any value other than
    ``1`` or ``0`` breaks the contract."""
    value = _header(headers, HEADER_BACKFILL)
    if value is None or value == BACKFILL_OFF:
        return False
    if value == BACKFILL_ON:
        return True
    raise PoisonMessage(f"{HEADER_BACKFILL} header must be 1 or 0, got {value[:16]!r}")


def _ingest_micros(
    event: event_pb2.Event,
    headers: Sequence[tuple[str, bytes]],
    timestamp_ms: int | None,
    limits: EventLimits,
    now_micros: int,
) -> int:
    """The instant the event was accepted: the reference of every time-relative rule.

    Ingest stamps ``ingest_time`` (and the header, equal to it) and judged the event against
    that same instant, so the store judges it against it again and reaches the same verdict.
    A direct producer could write any ``ingest_time``, so it is trusted only within bounds of
    the Kafka timestamp: not more than ``ingest_time_max_lead`` after it (or after this
    consumer's clock), not more than ``ingest_time_max_lag`` before it. Without an
    ``ingest_time`` the Kafka timestamp (capped at now) is the reference, and without that,
    now.
    """
    header = _header(headers, HEADER_INGEST_TIME)
    header_micros: int | None = None
    if header is not None:
        try:
            header_micros = int(header.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise PoisonMessage(f"{HEADER_INGEST_TIME} header is not an integer") from None
    kafka_micros = timestamp_ms * 1000 if timestamp_ms is not None and timestamp_ms > 0 else None
    if event.HasField("ingest_time"):
        problems = check_timestamp("ingest_time", event.ingest_time)
        if problems:
            raise PoisonMessage(f"invalid event: ingest_time: {problems[0].description}")
        ingest = timestamp_micros(event.ingest_time)
        if header_micros is not None and header_micros != ingest:
            raise PoisonMessage(f"{HEADER_INGEST_TIME} header does not match ingest_time")
    elif header_micros is not None:
        ingest = header_micros
    else:
        return now_micros if kafka_micros is None else min(now_micros, kafka_micros)
    lead = int(limits.ingest_time_max_lead.total_seconds() * 1_000_000)
    lag = int(limits.ingest_time_max_lag.total_seconds() * 1_000_000)
    if ingest > now_micros + lead:
        raise PoisonMessage(
            f"untrusted ingest_time: more than {lead // 1_000_000} s in the future "
            "of the consumer's clock"
        )
    if kafka_micros is not None:
        if ingest >= kafka_micros + 1000 + lead:
            raise PoisonMessage(
                f"untrusted ingest_time: more than {lead // 1_000_000} s after "
                "the message's Kafka timestamp"
            )
        if ingest < kafka_micros - lag:
            raise PoisonMessage(
                f"untrusted ingest_time: more than {lag // 1_000_000} s before "
                "the message's Kafka timestamp"
            )
    return ingest


def _poison_only(decode: Callable[P, R]) -> Callable[P, R]:
    """Whatever ``decode`` raises becomes PoisonMessage: a hostile message may provoke errors
    no check foresaw, and every caller's per-message boundary relies on this one type."""

    @functools.wraps(decode)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return decode(*args, **kwargs)
        except PoisonMessage:
            raise
        except Exception as exc:
            raise PoisonMessage(f"cannot decode the message: {type(exc).__name__}: {exc}") from None

    return wrapper


@_poison_only
def decode_raw_event(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | None,
    timestamp_ms: int | None,
    limits: EventLimits,
    now_micros: int,
) -> event_pb2.Event:
    """The event in a raw-topic message, checked against the whole topic contract.

    Args:
        key, value, headers: the Kafka message's.
        timestamp_ms: its Kafka timestamp, None when unavailable.
        limits: the event_time bounds (and the ingest_time trust window).
        now_micros: the caller's clock.

    Returns the event with ``ingest_time`` filled in; every event it returns converts with
    ``storage.rows.event_to_row`` (tests/unit/store/test_poison_property.py checks it). Raises
    ``PoisonMessage`` (the reason in ``str``), and nothing else, for anything that breaks the
    contract: an empty or undecodable value, a schema or tenant header that disagrees, a key
    that is not ``<tenant_id>#<entity_id>``, an untrusted ``ingest_time``, or a rule of
    ``validate_event`` (with the backfill horizon when ``eventpipe-backfill`` is ``1``).
    """
    if not value:
        raise PoisonMessage("empty message value: expected a serialized eventpipe.common.v1.Event")
    try:
        event = event_pb2.Event.FromString(value)
    except Exception as exc:  # DecodeError, and whatever else a hostile payload provokes
        raise PoisonMessage(f"value is not a serialized eventpipe.common.v1.Event: {exc}") from None
    headers = headers or []
    schema = _header(headers, HEADER_SCHEMA)
    if schema is not None and schema != SCHEMA_HEADER_VALUE:
        raise PoisonMessage(
            f"unsupported {HEADER_SCHEMA} {schema!r}; expected {SCHEMA_HEADER_VALUE!r}"
        )
    tenant = _header(headers, HEADER_TENANT)
    if tenant is not None and tenant != event.tenant_id.encode():
        raise PoisonMessage(f"{HEADER_TENANT} header does not match tenant_id")
    ingest_micros = _ingest_micros(event, headers, timestamp_ms, limits, now_micros)
    violations = validate_event(event, ingest_micros, limits, backfill=is_backfill(headers))
    if violations:
        raise PoisonMessage("invalid event: " + describe(violations))
    if key != message_key(event.tenant_id, event.entity_id):
        raise PoisonMessage("message key must be '<tenant_id>#<entity_id>' of the event")
    if not event.HasField("ingest_time"):
        event.ingest_time.FromMicroseconds(ingest_micros)
    return event
