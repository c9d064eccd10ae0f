"""The ingest use case: validate a batch, write it to the event log, answer per event.

An event is ACCEPTED only once the log's delivery report confirmed it. A batch of which
nothing could be written is refused as a whole, so the client sees one clear status:
UNAVAILABLE when Kafka did not confirm (HTTP 503), RESOURCE_EXHAUSTED with retry advice when
the in-flight bound or the producer queue is full (HTTP 429). When only part of a batch was
written, the rest carries that code per item.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from eventpipe.common.v1 import event_pb2
from eventpipe.core.errors import ResourceExhausted, Unavailable
from eventpipe.core.results import ItemOutcome, ItemStatus
from eventpipe.core.validation import EventLimits

from ingest import metrics
from ingest.batch import PreparedBatch, check_request, prepare_batch
from ingest.capacity import InFlightLimiter
from ingest.outcome import RESOURCE_EXHAUSTED, UNAVAILABLE, BatchOutcome
from ingest.ports import EventLog

_PENDING = "pending"  # sentinel distinct from None (written) and any error text


class _Delivery:
    """Collects the delivery reports of one batch; frees its capacity once all arrived."""

    __slots__ = ("_lock", "_on_complete", "_remaining", "done", "errors")

    def __init__(self, expected: int, on_complete: Callable[[], None]) -> None:
        self.errors: list[str | None] = [_PENDING] * expected
        self._remaining = expected
        self._lock = threading.Lock()
        self.done = threading.Event()
        self._on_complete = on_complete

    def report(self, index: int, error: str | None) -> None:
        self.errors[index] = error
        with self._lock:
            self._remaining -= 1
            finished = self._remaining == 0
        if finished:
            self._on_complete()
            self.done.set()

    def expect_fewer(self, missing: int) -> None:
        """Some messages were never queued: they will send no report."""
        if missing == 0:
            return
        with self._lock:
            self._remaining -= missing
            finished = self._remaining == 0
        if finished:
            self._on_complete()
            self.done.set()


class PendingBatch:
    """A batch whose messages are queued; ``result`` waits for Kafka's answer."""

    def __init__(
        self,
        prepared: PreparedBatch,
        delivery: _Delivery | None,
        queued: int,
        wait_seconds: float,
        started: float,
        retry_after: float,
    ) -> None:
        self.prepared = prepared
        self._delivery = delivery
        self._queued = queued
        self._wait_seconds = wait_seconds
        self._started = started
        self._retry_after = retry_after

    def result(self) -> BatchOutcome:
        """The per-event outcome; raises Unavailable when nothing of the batch was written."""
        prepared = self.prepared
        outcomes = prepared.outcomes
        written = 0
        if self._delivery is not None:
            self._delivery.done.wait(self._wait_seconds)
            errors = self._delivery.errors
            for position, index in enumerate(prepared.message_indexes):
                event_id = prepared.message_ids[position]
                if position >= self._queued:
                    outcomes[index] = ItemOutcome(
                        index,
                        event_id,
                        ItemStatus.REJECTED,
                        RESOURCE_EXHAUSTED,
                        detail="the producer queue is full",
                    )
                    continue
                error = errors[position]
                if error is None:
                    outcomes[index] = ItemOutcome(index, event_id, ItemStatus.ACCEPTED)
                    written += 1
                else:
                    detail = "no delivery report in time" if error == _PENDING else error
                    outcomes[index] = ItemOutcome(
                        index,
                        event_id,
                        ItemStatus.REJECTED,
                        UNAVAILABLE,
                        detail=f"Kafka did not confirm the write ({detail})",
                    )
            metrics.PRODUCE_LATENCY.observe(time.perf_counter() - self._started)
        outcome = BatchOutcome([item for item in outcomes if item is not None])
        if prepared.messages and written == 0:
            _count_refused(prepared, UNAVAILABLE)
            first = next(i for i in outcome.items if i.code == UNAVAILABLE)
            raise Unavailable(
                f"Kafka did not confirm the write, nothing was acknowledged: {first.detail}",
                retry_after_seconds=self._retry_after,
            )
        for (status, reason), count in outcome.tally().items():
            metrics.EVENTS.labels(prepared.tenant_id, status, reason).inc(count)
        return outcome


def _count_refused(prepared: PreparedBatch, code: str) -> None:
    metrics.EVENTS.labels(prepared.tenant_id, ItemStatus.REJECTED.value, code).inc(prepared.size)


class IngestPipeline:
    """Validates, writes and answers batches; shared by the three RPCs."""

    def __init__(
        self,
        event_log: EventLog,
        limiter: InFlightLimiter,
        *,
        limits: EventLimits,
        max_batch_bytes: int,
        produce_timeout_seconds: float,
        retry_after_seconds: float,
        clock_micros: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self.event_log = event_log
        self.limiter = limiter
        self.limits = limits
        self.max_batch_bytes = max_batch_bytes
        # librdkafka reports every message within message.timeout.ms; the margin covers polling.
        self.wait_seconds = produce_timeout_seconds + 5.0
        self.retry_after_seconds = retry_after_seconds
        self.clock_micros = clock_micros
        metrics.QUEUE_DEPTH.set_function(event_log.queue_depth)
        metrics.IN_FLIGHT_EVENTS.set_function(lambda: limiter.events)
        metrics.IN_FLIGHT_BYTES.set_function(lambda: limiter.bytes)

    def submit(
        self,
        tenant_id: str,
        events: Sequence[event_pb2.Event],
        *,
        request_bytes: int = 0,
        traceparent: str | None = None,
        capacity_wait_seconds: float = 0.0,
        backfill: bool = False,
    ) -> PendingBatch:
        """Validates the batch and queues its valid events; does not wait for Kafka.

        Raises:
            InvalidArgument: the request as a whole is invalid.
            ResourceExhausted: too large, or no capacity within ``capacity_wait_seconds``.
        """
        check_request(tenant_id, len(events), request_bytes, self.max_batch_bytes)
        prepared = prepare_batch(
            tenant_id,
            events,
            now_micros=self.clock_micros(),
            limits=self.limits,
            traceparent=traceparent,
            backfill=backfill,
        )
        started = time.perf_counter()
        count = len(prepared.messages)
        if count == 0:
            return PendingBatch(prepared, None, 0, 0.0, started, self.retry_after_seconds)
        nbytes = prepared.message_bytes
        if not self.limiter.try_acquire(count, nbytes, capacity_wait_seconds):
            _count_refused(prepared, RESOURCE_EXHAUSTED)
            raise ResourceExhausted(
                f"{self.limiter.events} events are waiting for Kafka; retry shortly",
                retry_after_seconds=self.retry_after_seconds,
            )
        delivery = _Delivery(count, lambda: self.limiter.release(count, nbytes))
        queued = self.event_log.produce(prepared.messages, prepared.headers, delivery.report)
        delivery.expect_fewer(count - queued)
        if queued == 0:
            _count_refused(prepared, RESOURCE_EXHAUSTED)
            raise ResourceExhausted(
                "the Kafka producer queue is full; retry shortly",
                retry_after_seconds=self.retry_after_seconds,
            )
        return PendingBatch(
            prepared, delivery, queued, self.wait_seconds, started, self.retry_after_seconds
        )

    def ingest(
        self,
        tenant_id: str,
        events: Sequence[event_pb2.Event],
        *,
        request_bytes: int = 0,
        traceparent: str | None = None,
        backfill: bool = False,
    ) -> BatchOutcome:
        """Writes a batch and waits for Kafka; see ``submit`` and ``PendingBatch.result``."""
        return self.submit(
            tenant_id,
            events,
            request_bytes=request_bytes,
            traceparent=traceparent,
            backfill=backfill,
        ).result()
