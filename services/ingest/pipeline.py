"""The ingest use case: validate a batch, write it to the event log, answer per event.

An event is ACCEPTED only once the log's delivery report confirmed it. A batch of which
nothing could be written is refused as a whole, so the client sees one clear status:
UNAVAILABLE when Kafka did not confirm (HTTP 503), RESOURCE_EXHAUSTED with retry advice when
the in-flight bound or the producer queue is full (HTTP 429). When only part of a batch was
written, the rest carries that code per item.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence

from eventpipe.common.v1 import event_pb2
from eventpipe.core.errors import ResourceExhausted, Unavailable
from eventpipe.core.kafka import MessageLike
from eventpipe.core.results import ItemOutcome, ItemStatus
from eventpipe.core.validation import EventLimits

from ingest import metrics
from ingest.batch import PreparedBatch, check_request, prepare_batch
from ingest.capacity import InFlightLimiter
from ingest.outcome import RESOURCE_EXHAUSTED, UNAVAILABLE, BatchOutcome
from ingest.ports import EventLog


class _Delivery:
    """Counts the delivery reports of one batch; frees its capacity once all arrived.

    One bound method, ``report``, is the callback of every message of the batch: a confirmed
    message costs one call and one tick of an atomic counter (``next`` on ``itertools.count``
    holds the GIL throughout), no lock and no per-message object. Only failures are recorded,
    by the message's value (unique within a batch), so an event is accepted exactly when its
    message was reported and is not among the failures.
    """

    __slots__ = ("_expected", "_on_complete", "_ticks", "done", "failures")

    def __init__(self, expected: int, on_complete: Callable[[], None]) -> None:
        self._expected = expected
        self._ticks = itertools.count(1)
        self._on_complete = on_complete
        self.done = threading.Event()
        self.failures: list[tuple[bytes | None, object]] = []

    def report(self, error: object | None, message: MessageLike) -> None:
        if error is not None:
            # Recorded before the tick, so a batch seen done has all its failures.
            self.failures.append((message.value(), error))
        if next(self._ticks) == self._expected:
            self._finish()

    def expect_fewer(self, missing: int) -> None:
        """Some messages were never queued: they will send no report."""
        for _ in range(missing):
            if next(self._ticks) == self._expected:
                self._finish()

    def _finish(self) -> None:
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
        describe_failure: Callable[[object], str] = str,
    ) -> None:
        self.prepared = prepared
        self._delivery = delivery
        self._queued = queued
        self._wait_seconds = wait_seconds
        self._started = started
        self._retry_after = retry_after
        self._describe_failure = describe_failure

    def result(self) -> BatchOutcome:
        """The per-event outcome; raises Unavailable when nothing of the batch was written."""
        prepared = self.prepared
        refused = prepared.refused
        written = 0
        if self._delivery is not None:
            delivery = self._delivery
            confirmed = delivery.done.wait(self._wait_seconds)
            failures = list(delivery.failures)
            queued = self._queued
            if confirmed and not failures and queued == len(prepared.values):
                written = queued  # the common case: nothing to do per event
            else:
                written = self._refuse_unwritten(confirmed, failures)
            metrics.PRODUCE_LATENCY.observe(time.perf_counter() - self._started)
        outcome = BatchOutcome(prepared.ids, refused)
        if prepared.values and written == 0:
            _count_refused(prepared, UNAVAILABLE)
            first = next(item for item in refused.values() if item.code == UNAVAILABLE)
            raise Unavailable(
                f"Kafka did not confirm the write, nothing was acknowledged: {first.detail}",
                retry_after_seconds=self._retry_after,
            )
        for (status, reason), count in outcome.tally().items():
            metrics.EVENTS.labels(prepared.tenant_id, status, reason).inc(count)
        return outcome

    def _refuse_unwritten(
        self, confirmed: bool, failures: list[tuple[bytes | None, object]]
    ) -> int:
        """Marks every message that is not known written as refused; returns how many were.

        Without every report in time, no message of the batch counts as written: only failures
        are tracked, so a missing report cannot be told from a confirmation.
        """
        prepared = self.prepared
        refused, ids = prepared.refused, prepared.ids
        failed = {value: self._describe_failure(error) for value, error in failures}
        written = 0
        for position, index in enumerate(prepared.indexes):
            if position >= self._queued:
                detail, code = "the producer queue is full", RESOURCE_EXHAUSTED
            elif not confirmed:
                detail, code = (
                    "Kafka did not confirm the write (no delivery report in time)",
                    UNAVAILABLE,
                )
            elif (reason := failed.get(prepared.values[position])) is not None:
                detail, code = f"Kafka did not confirm the write ({reason})", UNAVAILABLE
            else:
                written += 1
                continue
            refused[index] = ItemOutcome(
                index, ids[index], ItemStatus.REJECTED, code, detail=detail
            )
        return written


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
        count = len(prepared.values)
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
        queued = self.event_log.produce(
            prepared.keys, prepared.values, prepared.headers, delivery.report
        )
        delivery.expect_fewer(count - queued)
        if queued == 0:
            _count_refused(prepared, RESOURCE_EXHAUSTED)
            raise ResourceExhausted(
                "the Kafka producer queue is full; retry shortly",
                retry_after_seconds=self.retry_after_seconds,
            )
        return PendingBatch(
            prepared,
            delivery,
            queued,
            self.wait_seconds,
            started,
            self.retry_after_seconds,
            self.event_log.describe_failure,
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
