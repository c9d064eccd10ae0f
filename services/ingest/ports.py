"""The port the ingest domain writes through: an append-only log with delivery reports.

The Kafka adapter (``ingest.adapters.kafka_log``) implements it in production; unit tests use
an in-memory fake. Nothing here knows about Kafka or gRPC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

DeliveryReport = Callable[[int, str | None], None]
"""Called once per message with its index in the produced batch and an error (None: written)."""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One record for the raw-events log, already in the topic contract's format."""

    key: bytes
    value: bytes


class EventLog(Protocol):
    """An append-only log whose writes are confirmed asynchronously."""

    def produce(
        self,
        messages: Sequence[OutgoingMessage],
        headers: list[tuple[str, bytes]],
        on_delivery: DeliveryReport,
    ) -> int:
        """Queues ``messages`` in order; returns how many were queued.

        Fewer than ``len(messages)`` means the local queue filled up: the rest was not queued and
        will get no report. Every queued message gets exactly one ``on_delivery`` call, from
        another thread, once the log confirmed or gave up on it.
        """
        ...

    def queue_depth(self) -> int:
        """Messages queued or in flight, not yet reported."""
        ...

    def close(self, timeout: float) -> None:
        """Waits up to ``timeout`` for queued messages to be reported, then releases resources."""
        ...
