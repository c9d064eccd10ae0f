"""Turning raw-topic messages into rows or dead letters: the consumer's pure logic.

Every message is re-validated because direct Kafka producers bypass ingest. A message that
cannot be stored is a *dead letter*: it goes to the dead-letter topic unchanged, with the
reason and its source offset in headers, and never blocks its partition.

``event_time`` is checked against the message's produce time (its Kafka timestamp, capped at
now), with the same bounds ingest uses: a consumer replaying a week-old backlog must not
dead-letter events that were valid when they were acknowledged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE
from eventpipe.common.v1 import event_pb2
from eventpipe.core import topic_contract
from eventpipe.core.schema import EventRow, event_to_row, timestamp_from_micros
from eventpipe.core.validation import EventLimits, validate_event
from google.protobuf.message import DecodeError

EXPECTED_SCHEMA = f"{topic_contract.SCHEMA_NAME};v={topic_contract.SCHEMA_VERSION}".encode()
MAX_ERROR_HEADER_CHARS = 1000


class MessageLike(Protocol):
    """The part of ``confluent_kafka.Message`` the consumer reads (fakes implement it too)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def error(self) -> object | None: ...


class PoisonMessage(Exception):
    """The message can never be stored; ``str(exc)`` is the reason."""


@dataclass(frozen=True)
class DeadLetter:
    """What goes to the dead-letter topic: the original bytes plus reason and source."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def source_of(message: MessageLike) -> str:
    return f"{message.topic()}/{message.partition()}/{message.offset()}"


def dead_letter_for(message: MessageLike, reason: str) -> DeadLetter:
    headers = list(message.headers() or [])
    headers.append((topic_contract.HEADER_DLQ_ERROR, reason[:MAX_ERROR_HEADER_CHARS].encode()))
    headers.append((topic_contract.HEADER_DLQ_SOURCE, source_of(message).encode()))
    return DeadLetter(message.key(), message.value(), headers)


def _header(headers: Sequence[tuple[str, bytes]], name: str) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def decode_event(message: MessageLike, limits: EventLimits, now_micros: int) -> event_pb2.Event:
    """The event in ``message``, checked against the topic contract; raises PoisonMessage."""
    value = message.value()
    if not value:
        raise PoisonMessage("empty message value: expected a serialized eventpipe.common.v1.Event")
    try:
        event = event_pb2.Event.FromString(value)
    except DecodeError as exc:
        raise PoisonMessage(f"value is not a serialized eventpipe.common.v1.Event: {exc}") from None
    headers = message.headers() or []
    schema = _header(headers, topic_contract.HEADER_SCHEMA)
    if schema is not None and schema != EXPECTED_SCHEMA:
        raise PoisonMessage(
            f"unsupported {topic_contract.HEADER_SCHEMA} {schema!r}; expected {EXPECTED_SCHEMA!r}"
        )
    tenant = _header(headers, topic_contract.HEADER_TENANT)
    if tenant is not None and tenant != event.tenant_id.encode():
        raise PoisonMessage(f"{topic_contract.HEADER_TENANT} header does not match tenant_id")

    timestamp_type, timestamp_ms = message.timestamp()
    produced_micros = now_micros
    if timestamp_type != TIMESTAMP_NOT_AVAILABLE and timestamp_ms > 0:
        produced_micros = min(now_micros, timestamp_ms * 1000)
    violations = validate_event(event, produced_micros, limits)
    if violations:
        raise PoisonMessage(
            "invalid event: " + "; ".join(f"{v.field}: {v.description}" for v in violations)
        )
    if message.key() != topic_contract.message_key(event.tenant_id, event.entity_id):
        raise PoisonMessage("message key must be '<tenant_id>#<entity_id>' of the event")
    if not event.HasField("ingest_time"):
        # Direct producers may leave it to the header (or to the broker's timestamp).
        raw = _header(headers, topic_contract.HEADER_INGEST_TIME)
        ingest_micros = produced_micros
        if raw is not None:
            try:
                ingest_micros = int(raw)
            except ValueError:
                raise PoisonMessage(
                    f"{topic_contract.HEADER_INGEST_TIME} header is not an integer"
                ) from None
        event.ingest_time.CopyFrom(timestamp_from_micros(ingest_micros))
    return event


@dataclass
class PreparedBatch:
    """One consumed batch: rows to write, dead letters to send, offsets to commit after."""

    rows: list[EventRow] = field(default_factory=list)
    row_messages: list[MessageLike] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # (topic, partition) -> the next offset to read: committed once everything is durable.
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    message_count: int = 0


def prepare_batch(
    messages: Sequence[MessageLike], limits: EventLimits, now_micros: int
) -> PreparedBatch:
    """Decodes every message into a row or a dead letter; records the offsets to commit."""
    batch = PreparedBatch()
    for message in messages:
        if message.error() is not None:
            continue  # partition EOF and similar events carry no offset to commit
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        batch.message_count += 1
        batch.next_offsets[(topic, partition)] = offset + 1
        try:
            event = decode_event(message, limits, now_micros)
        except PoisonMessage as exc:
            batch.dead_letters.append(dead_letter_for(message, str(exc)))
            continue
        batch.rows.append(event_to_row(event))
        batch.row_messages.append(message)
    return batch
