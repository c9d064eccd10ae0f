"""StreamEvents without gRPC: batches in, per-batch outcomes out, in order, with flow control.

A reader thread takes batches off the stream and queues their events on Kafka; the caller's
thread waits for each batch's delivery reports and yields its outcome. At most ``window``
batches are between the two: when the window is full the reader stops reading, so the
transport's own flow control (HTTP/2 windows) slows the client down instead of ingest buffering
without bound. A batch that is invalid as a whole is answered with every event rejected, and the
stream goes on; UNAVAILABLE or RESOURCE_EXHAUSTED end the stream, and every batch answered
before that stands.

A stream that sent no batch for ``idle_timeout_seconds`` while every batch it sent was
answered is idle: it ends with UNAVAILABLE, so an idle client cannot hold threads forever.
Once ``draining`` is set (SIGTERM), a stream ends as soon as it is idle at all, so shutdown does
not wait for idle clients.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

from eventpipe.common.v1 import event_pb2
from eventpipe.core.errors import EventPipeError, InvalidArgument, Unavailable
from eventpipe.core.results import ItemOutcome, ItemStatus

from ingest import metrics
from ingest.outcome import INVALID_ARGUMENT, BatchOutcome
from ingest.pipeline import IngestPipeline, PendingBatch


@dataclass
class StreamBatch:
    """One batch read off the stream."""

    batch_id: str
    tenant_id: str
    events: Sequence[event_pb2.Event]
    request_bytes: int


_END = object()


def _rejected_batch(batch: StreamBatch, error: InvalidArgument) -> BatchOutcome:
    violations = tuple(error.violations)
    return BatchOutcome.of_items(
        [
            ItemOutcome(index, event.event_id, ItemStatus.REJECTED, INVALID_ARGUMENT, violations)
            for index, event in enumerate(batch.events)
        ]
    )


class _Activity:
    """When the stream last did something, and whether the reader holds a batch right now."""

    __slots__ = ("busy", "last")

    def __init__(self) -> None:
        self.busy = False
        self.last = time.monotonic()

    def touch(self, busy: bool) -> None:
        self.busy = busy
        self.last = time.monotonic()

    def answered(self) -> None:
        self.last = time.monotonic()

    def idle_for(self) -> float:
        return 0.0 if self.busy else time.monotonic() - self.last


def _idle_error(idle_timeout_seconds: float) -> Unavailable:
    metrics.STREAMS_IDLE_CLOSED.inc()
    return Unavailable(
        f"stream closed after {idle_timeout_seconds:g} s without a batch; every batch sent was "
        "answered; open a new stream to send more"
    )


class StreamDrain:
    """Set on shutdown (a ``BackgroundWorker`` of the bootstrap, stopped before the gRPC
    server drains): idle streams end at once instead of holding the shutdown grace."""

    def __init__(self) -> None:
        self.draining = threading.Event()

    def start(self) -> None:
        pass

    def stop(self, timeout: float) -> None:
        self.draining.set()


def _draining_error() -> Unavailable:
    return Unavailable(
        "the server is shutting down; every batch sent was answered; open a new stream to send more"
    )


def ingest_stream(
    pipeline: IngestPipeline,
    batches: Iterator[StreamBatch],
    *,
    window: int,
    capacity_wait_seconds: float,
    idle_timeout_seconds: float | None = None,
    draining: threading.Event | None = None,
    traceparent: str | None = None,
) -> Iterator[tuple[str, BatchOutcome]]:
    """Yields ``(batch_id, outcome)`` per batch, in the order the batches came in.

    Raises:
        Unavailable: the stream stayed idle for ``idle_timeout_seconds`` (None: never), or was
            idle while ``draining``.
    """
    in_flight: queue.Queue[object] = queue.Queue(maxsize=window)
    stopped = threading.Event()
    activity = _Activity()

    def put(item: object) -> bool:
        while not stopped.is_set():
            try:
                in_flight.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for batch in batches:
                if stopped.is_set():
                    return
                activity.touch(busy=True)
                try:
                    item: object = (
                        batch.batch_id,
                        pipeline.submit(
                            batch.tenant_id,
                            batch.events,
                            request_bytes=batch.request_bytes,
                            traceparent=traceparent,
                            capacity_wait_seconds=capacity_wait_seconds,
                        ),
                    )
                except InvalidArgument as error:
                    item = (batch.batch_id, _rejected_batch(batch, error))
                if not put(item):
                    return
                activity.touch(busy=False)
        except EventPipeError as error:
            put(error)
            return
        except Exception as error:  # the client went away, or the transport broke
            put(error)
            return
        put(_END)

    def next_item() -> object:
        if idle_timeout_seconds is None and draining is None:
            return in_flight.get()
        while True:
            wait = 0.25 if draining is not None else 3600.0
            if idle_timeout_seconds is not None:
                wait = min(wait, max(0.05, idle_timeout_seconds - activity.idle_for()))
            try:
                return in_flight.get(timeout=wait)
            except queue.Empty:
                # Nothing queued: idle unless the reader is busy with a batch right now.
                if activity.busy:
                    continue
                if draining is not None and draining.is_set():
                    raise _draining_error() from None
                if idle_timeout_seconds is not None and activity.idle_for() >= idle_timeout_seconds:
                    raise _idle_error(idle_timeout_seconds) from None

    reader = threading.Thread(target=read, name="ingest-stream-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = next_item()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            batch_id, pending = cast(tuple[str, PendingBatch | BatchOutcome], item)
            outcome = pending.result() if isinstance(pending, PendingBatch) else pending
            yield batch_id, outcome
            activity.answered()
    finally:
        stopped.set()
