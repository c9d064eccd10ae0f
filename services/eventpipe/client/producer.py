"""The batching event producer: ``send(event)`` returns a future, ``flush()`` waits for them.

Events are gathered into ``IngestEvents`` batches (by count, by bytes, or after a short
linger) and sent by ``max_in_flight_batches`` sender threads. Memory is bounded: at most
``max_buffered_events`` events and ``max_buffered_bytes`` serialized bytes wait or travel at
once; ``send`` blocks while the buffer is full, up to ``max_block_seconds``, then raises
``BufferFull``. A whole batch refused with UNAVAILABLE or RESOURCE_EXHAUSTED, and each item
of a batch rejected with one of those codes, is sent again after the server's ``RetryInfo``
delay (else jittered exponential backoff), until the event's delivery deadline. Retries are
safe: the store keeps one event per (tenant_id, event_id), so an event that did reach Kafka
before a lost answer is stored once.

``stream(events)`` sends over ``StreamEvents`` instead, at most ``max_in_flight_batches``
batches unanswered at a time. docs/client.md describes both.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

from google.rpc import code_pb2

from eventpipe.client.errors import (
    RETRYABLE,
    BufferFull,
    EventPipeError,
    Internal,
    InvalidArgument,
    item_error,
)
from eventpipe.client.retry import RetryPolicy, retry_after_of
from eventpipe.client.services import IngestApi
from eventpipe.common.v1 import event_pb2, results_pb2
from eventpipe.core.errors import Violation
from eventpipe.core.results import ItemOutcome, ItemStatus
from eventpipe.ingest.v1 import ingest_pb2

# The service's own limits on a batch (ingest.proto): 1..1000 events, at most 4 MiB.
MAX_BATCH_EVENTS = 1000
MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Room for the request's own framing next to the events.
_REQUEST_OVERHEAD = 64 * 1024
_RETRYABLE_ITEM_CODES = frozenset({code_pb2.UNAVAILABLE, code_pb2.RESOURCE_EXHAUSTED})
_STATUS = {
    results_pb2.ITEM_STATUS_ACCEPTED: ItemStatus.ACCEPTED,
    results_pb2.ITEM_STATUS_DUPLICATE: ItemStatus.DUPLICATE,
    results_pb2.ITEM_STATUS_REJECTED: ItemStatus.REJECTED,
}


@dataclass(frozen=True)
class ProducerSettings:
    """Limits of one producer; docs/client.md lists them with their defaults."""

    max_batch_events: int = 500
    max_batch_bytes: int = 3 * 1024 * 1024
    linger_seconds: float = 0.05
    max_buffered_events: int = 10_000
    max_buffered_bytes: int = 32 * 1024 * 1024
    max_block_seconds: float = 60.0
    max_in_flight_batches: int = 2
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch_events <= MAX_BATCH_EVENTS:
            raise ValueError(f"max_batch_events must be 1..{MAX_BATCH_EVENTS}")
        if not 1 <= self.max_batch_bytes <= MAX_REQUEST_BYTES - _REQUEST_OVERHEAD:
            raise ValueError(f"max_batch_bytes must be 1..{MAX_REQUEST_BYTES - _REQUEST_OVERHEAD}")
        if self.max_buffered_events < 1 or self.max_buffered_bytes < 1:
            raise ValueError("max_buffered_events and max_buffered_bytes must be at least 1")
        if self.max_in_flight_batches < 1:
            raise ValueError("max_in_flight_batches must be at least 1")
        if self.linger_seconds < 0 or self.max_block_seconds < 0:
            raise ValueError("linger_seconds and max_block_seconds must not be negative")


def outcome_of(result: results_pb2.ItemResult) -> ItemOutcome:
    """The domain side of one ItemResult."""
    return ItemOutcome(
        index=result.index,
        id=result.id,
        status=_STATUS.get(result.status, ItemStatus.REJECTED),
        code="" if result.code == code_pb2.OK else code_pb2.Code.Name(result.code),
        violations=tuple(Violation(v.field, v.description) for v in result.violations),
        detail=result.message,
    )


def error_of(outcome: ItemOutcome) -> EventPipeError:
    """The exception of a rejected item: InvalidArgument with its violations, or the class of
    its code."""
    return item_error(outcome.code, outcome.message, list(outcome.violations))


@dataclass
class _Pending:
    event: event_pb2.Event
    size: int
    future: Future[ItemOutcome]
    queued_at: float
    deadline: float


class EventProducer:
    """A batching, retrying producer for one tenant. Thread-safe; use it as a context manager
    or call ``close()``, which flushes.

    ``send`` returns a ``concurrent.futures.Future``: its result is the ``ItemOutcome``
    (ACCEPTED, or DUPLICATE when the same event_id was in the same batch); a rejected event
    raises ``InvalidArgument`` (with the violations) from ``result()``, and an event whose
    retries ran out raises the last ``Unavailable`` or ``ResourceExhausted``. Callbacks
    (``future.add_done_callback``) run on a sender thread: keep them short, and do not call
    ``send`` or ``flush`` from them.
    """

    def __init__(
        self,
        ingest: IngestApi,
        tenant_id: str,
        settings: ProducerSettings | None = None,
        *,
        backfill: bool = False,
    ) -> None:
        if backfill and "backfill" not in ingest_pb2.IngestEventsRequest.DESCRIPTOR.fields_by_name:
            raise ValueError("IngestEventsRequest has no backfill field: regenerate the stubs")
        self._ingest = ingest
        self.tenant_id = tenant_id
        self.settings = settings or ProducerSettings()
        self.backfill = backfill
        self._lock = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._queued_bytes = 0
        self._buffered_events = 0
        self._buffered_bytes = 0
        self._flushing = 0
        self._closed = False
        self._senders: list[threading.Thread] = []

    # -- sending ---------------------------------------------------------------------------

    def send(self, event: event_pb2.Event) -> Future[ItemOutcome]:
        """Queues ``event`` for the next batch; blocks while the buffer is full.

        Raises:
            BufferFull: the buffer stayed full for ``max_block_seconds``.
            RuntimeError: the producer is closed.
        """
        future: Future[ItemOutcome] = Future()
        if event.tenant_id and event.tenant_id != self.tenant_id:
            future.set_exception(
                InvalidArgument(
                    f"tenant_id: {event.tenant_id!r} is not this producer's tenant "
                    f"{self.tenant_id!r}",
                    violations=[Violation("tenant_id", "differs from the request's tenant")],
                )
            )
            return future
        size = event.ByteSize()
        now = time.monotonic()
        pending = _Pending(event, size, future, now, now + self.settings.retry.deadline)
        with self._lock:
            if not self._lock.wait_for(
                lambda: self._closed or self._has_room(size), self.settings.max_block_seconds
            ):
                raise BufferFull(
                    f"the producer buffer is full ({self._buffered_events} events, "
                    f"{self._buffered_bytes} bytes) after {self.settings.max_block_seconds} s"
                )
            if self._closed:
                raise RuntimeError("the producer is closed")
            self._queue.append(pending)
            self._queued_bytes += size
            self._buffered_events += 1
            self._buffered_bytes += size
            self._start_senders()
            self._lock.notify_all()
        return future

    def _has_room(self, size: int) -> bool:
        if self._buffered_events == 0:
            return True  # one event larger than the byte bound still goes, alone
        return (
            self._buffered_events < self.settings.max_buffered_events
            and self._buffered_bytes + size <= self.settings.max_buffered_bytes
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Sends what is queued without waiting for the linger, and waits until every event
        sent so far has its outcome. False if ``timeout`` seconds passed first."""
        with self._lock:
            self._flushing += 1
            self._lock.notify_all()
            try:
                return self._lock.wait_for(lambda: self._buffered_events == 0, timeout)
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = None) -> None:
        """Flushes, then stops the sender threads. ``send`` raises afterwards."""
        self.flush(timeout)
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        for sender in self._senders:
            sender.join(timeout)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def buffered(self) -> tuple[int, int]:
        """Events and bytes waiting or in flight now."""
        with self._lock:
            return self._buffered_events, self._buffered_bytes

    # -- the sender threads ----------------------------------------------------------------

    def _start_senders(self) -> None:
        while len(self._senders) < self.settings.max_in_flight_batches:
            sender = threading.Thread(
                target=self._run_sender, name=f"eventpipe-producer-{len(self._senders)}"
            )
            sender.daemon = True
            self._senders.append(sender)
            sender.start()

    def _next_batch(self) -> list[_Pending] | None:
        settings = self.settings
        with self._lock:
            while True:
                self._lock.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return None  # closed and drained
                first = self._queue[0]
                ready = (
                    self._flushing
                    or self._closed
                    or len(self._queue) >= settings.max_batch_events
                    or self._queued_bytes >= settings.max_batch_bytes
                )
                wait = first.queued_at + settings.linger_seconds - time.monotonic()
                if ready or wait <= 0:
                    break
                self._lock.wait(wait)
            batch: list[_Pending] = []
            size = 0
            while (
                self._queue
                and len(batch) < settings.max_batch_events
                and (not batch or size + self._queue[0].size <= settings.max_batch_bytes)
            ):
                item = self._queue.popleft()
                self._queued_bytes -= item.size
                batch.append(item)
                size += item.size
            return batch

    def _run_sender(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._deliver(batch)
            except Exception as error:  # never lose a future to a bug or a broken channel
                for item in batch:
                    if not item.future.done():
                        self._resolve(item, error=Internal(f"the producer failed: {error!r}"))

    def _request(self, events: list[event_pb2.Event]) -> ingest_pb2.IngestEventsRequest:
        request = ingest_pb2.IngestEventsRequest(tenant_id=self.tenant_id, events=events)
        if self.backfill:
            # Set by name: the field is new in ingest.proto (IngestEventsRequest.backfill).
            setattr(request, "backfill", True)  # noqa: B010
        return request

    def _deliver(self, batch: list[_Pending]) -> None:
        pending = batch
        attempt = 0
        while pending:
            retry: list[_Pending] = []
            last_error: EventPipeError
            retry_after: float | None = None
            try:
                response = self._ingest.ingest_events.once(
                    self._request([item.event for item in pending])
                )
            except EventPipeError as error:
                if not isinstance(error, RETRYABLE):
                    for item in pending:
                        self._resolve(item, error=error)
                    return
                retry, last_error, retry_after = pending, error, retry_after_of(error)
            else:
                answered: set[int] = set()
                for result in response.results:
                    if not 0 <= result.index < len(pending) or result.index in answered:
                        continue
                    answered.add(result.index)
                    item, outcome = pending[result.index], outcome_of(result)
                    if outcome.status is not ItemStatus.REJECTED:
                        self._resolve(item, outcome=outcome)
                    elif result.code in _RETRYABLE_ITEM_CODES:
                        retry.append(item)
                        last_error = error_of(outcome)
                    else:
                        self._resolve(item, error=error_of(outcome))
                for index, item in enumerate(pending):
                    if index not in answered:
                        self._resolve(item, error=Internal("ingest gave no result for the event"))
            if not retry:
                return
            delay = self.settings.retry.delay(attempt, retry_after)
            wake = time.monotonic() + delay
            pending = []
            for item in retry:
                if wake > item.deadline:
                    self._resolve(item, error=last_error)
                else:
                    pending.append(item)
            if pending:
                time.sleep(delay)
                attempt += 1

    def _resolve(
        self,
        item: _Pending,
        *,
        outcome: ItemOutcome | None = None,
        error: BaseException | None = None,
    ) -> None:
        # The future first, outside the lock (its callbacks run here); then the room it held.
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(outcome)  # type: ignore[arg-type]
        with self._lock:
            self._buffered_events -= 1
            self._buffered_bytes -= item.size
            self._lock.notify_all()

    # -- streaming -------------------------------------------------------------------------

    def stream(
        self,
        events: Iterable[event_pb2.Event],
        *,
        batch_size: int | None = None,
        max_in_flight_batches: int = 4,
        timeout: float | None = None,
    ) -> Iterator[ingest_pb2.StreamEventsResponse]:
        """Sends ``events`` over one ``StreamEvents`` call and yields one response per batch,
        in order. At most ``max_in_flight_batches`` batches are unanswered at a time: reading
        ``events`` pauses until a response frees a slot, so a slow service slows the reader
        instead of filling memory. Items rejected with UNAVAILABLE or RESOURCE_EXHAUSTED are
        reported, not resent (``send`` retries; this does not). A failed call raises its
        ``EventPipeError``; stopping the iteration cancels the call."""
        size = batch_size or self.settings.max_batch_events
        if not 1 <= size <= MAX_BATCH_EVENTS:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH_EVENTS}")
        slots = threading.Semaphore(max_in_flight_batches)
        stopped = threading.Event()

        def requests() -> Iterator[ingest_pb2.StreamEventsRequest]:
            number = 0
            batch: list[event_pb2.Event] = []
            for event in events:
                batch.append(event)
                if len(batch) == size:
                    number += 1
                    if not _claim(slots, stopped):
                        return
                    yield self._stream_request(str(number), batch)
                    batch = []
            if batch and _claim(slots, stopped):
                yield self._stream_request(str(number + 1), batch)

        try:
            for response in self._ingest.stream_events(requests(), timeout=timeout):
                slots.release()
                yield response
        finally:
            stopped.set()

    def _stream_request(
        self, batch_id: str, events: list[event_pb2.Event]
    ) -> ingest_pb2.StreamEventsRequest:
        request = ingest_pb2.StreamEventsRequest(
            batch_id=batch_id, tenant_id=self.tenant_id, events=events
        )
        if self.backfill:
            if "backfill" not in request.DESCRIPTOR.fields_by_name:
                raise ValueError("StreamEvents has no backfill option: use send()")
            setattr(request, "backfill", True)  # noqa: B010
        return request


def _claim(slots: threading.Semaphore, stopped: threading.Event) -> bool:
    """Waits for a free in-flight slot; False once the stream was stopped."""
    while not stopped.is_set():
        if slots.acquire(timeout=0.2):
            return True
    return False
