"""Turning raw-topic messages into rows or dead letters: the consumer's pure logic.

Every message is re-validated because direct Kafka producers bypass ingest, through the one
reading of the topic contract (``eventpipe.core.topic_contract.decode_raw_event``) that
streaming enrichment uses too. A message that cannot be stored is a *dead letter*: it goes to
the dead-letter topic unchanged, with the reason and its source offset in headers, and never
blocks its partition. Whatever exception turning a message into a row raises makes it a dead
letter; only infrastructure failures (Kafka, Bigtable) pause the consumer, in the daemon.

``event_time`` is judged against the event's ``ingest_time``, the instant ingest judged it
against: an acknowledged event is never dead-lettered for a rule ingest already applied, and
a consumer replaying a week-old backlog does not dead-letter events that were valid then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE
from eventpipe.core import topic_contract
from eventpipe.core.kafka import MessageLike, message_headers
from eventpipe.core.storage.rows import EventRow, event_to_row
from eventpipe.core.validation import EventLimits

from store.consumer import metrics

MAX_ERROR_HEADER_CHARS = 1000


@dataclass(frozen=True)
class DeadLetter:
    """What goes to the dead-letter topic: the original bytes plus reason and source."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    reason: str = ""  # also in the headers; kept apart for the metric's reason class


def source_of(message: MessageLike) -> str:
    return f"{message.topic()}/{message.partition()}/{message.offset()}"


def dead_letter_for(message: MessageLike, reason: str) -> DeadLetter:
    headers = message_headers(message)
    headers.append((topic_contract.HEADER_DLQ_ERROR, reason[:MAX_ERROR_HEADER_CHARS].encode()))
    headers.append((topic_contract.HEADER_DLQ_SOURCE, source_of(message).encode()))
    return DeadLetter(message.key(), message.value(), headers, reason)


def message_timestamp_ms(message: MessageLike) -> int | None:
    """The message's Kafka timestamp, None when the broker gave none."""
    timestamp_type, timestamp_ms = message.timestamp()
    if timestamp_type == TIMESTAMP_NOT_AVAILABLE or timestamp_ms <= 0:
        return None
    return timestamp_ms


def row_for_message(message: MessageLike, limits: EventLimits, now_micros: int) -> EventRow:
    """The row of one message; raises (PoisonMessage or anything else) when there is none."""
    event = topic_contract.decode_raw_event(
        message.key(),
        message.value(),
        # librdkafka hands a consumed message's headers over as (str, bytes) pairs; the hot
        # path skips message_headers' copy.
        cast("list[tuple[str, bytes]] | None", message.headers()),
        message_timestamp_ms(message),
        limits,
        now_micros,
    )
    return event_to_row(event)


def reason_for(exc: BaseException) -> str:
    """The dead-letter reason: the contract's own words, or the unexpected error's type."""
    if isinstance(exc, topic_contract.PoisonMessage):
        return str(exc)
    return f"cannot turn the message into a row: {type(exc).__name__}: {exc}"


@dataclass
class PreparedBatch:
    """One consumed batch: rows to write, dead letters to send, offsets to commit after."""

    rows: list[EventRow] = field(default_factory=list)
    row_messages: list[MessageLike] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # (topic, partition) -> the next offset to read: committed once everything is durable.
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    message_count: int = 0
    # Indices into rows dropped as re-sent event ids (store.consumer.idempotency).
    duplicates: set[int] = field(default_factory=set)
    # Indices into rows dropped because their entity was erased (store.consumer.erasures).
    erased: set[int] = field(default_factory=set)


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
            row = row_for_message(message, limits, now_micros)
        except Exception as exc:
            # Whatever the content provokes stays with this message: it is dead-lettered,
            # its offset committed past, and the partition moves on.
            metrics.POISON.labels(type(exc).__name__).inc()
            batch.dead_letters.append(dead_letter_for(message, reason_for(exc)))
            continue
        batch.rows.append(row)
        batch.row_messages.append(message)
    return batch
