"""The port the ingest domain writes through: an append-only log with delivery reports.

The Kafka adapter (``ingest.adapters.kafka_log``) implements it in production; unit tests use
an in-memory fake. Nothing here knows about Kafka or gRPC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from eventpipe.core.kafka import MessageLike

DeliveryReport = Callable[[object | None, MessageLike], None]
"""Called once per message: ``(error, message)``, error None when the log confirmed the write.

One callable serves a whole batch (no per-message closure): on success it only counts, and on
a failure it identifies the message by its ``value()``, which is unique within a batch (every
event of a batch has its own event id)."""


class EventLog(Protocol):
    """An append-only log whose writes are confirmed asynchronously."""

    def produce(
        self,
        keys: Sequence[bytes],
        values: Sequence[bytes],
        headers: list[tuple[str, bytes]],
        on_delivery: DeliveryReport,
    ) -> int:
        """Queues the messages ``(keys[i], values[i])`` in order; returns how many were queued.

        Fewer than ``len(values)`` means the local queue filled up: the rest was not queued and
        will get no report. Every queued message gets exactly one ``on_delivery`` call, from
        another thread, once the log confirmed or gave up on it.
        """
        ...

    def describe_failure(self, error: object) -> str:
        """What a person reads about a failed delivery's ``error``."""
        ...

    def queue_depth(self) -> int:
        """Messages queued or in flight, not yet reported."""
        ...

    def close(self, timeout: float) -> None:
        """Waits up to ``timeout`` for queued messages to be reported, then releases resources."""
        ...
