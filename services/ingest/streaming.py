"""StreamEvents without gRPC: batches in, per-batch outcomes out, in order, with flow control.

A reader thread takes batches off the stream and queues their events on Kafka; the caller's
thread waits for each batch's delivery reports and yields its outcome. At most ``window``
batches are between the two: when the window is full the reader stops reading, so the
transport's own flow control (HTTP/2 windows) slows the client down instead of ingest buffering
without bound. A batch that is invalid as a whole is answered with every event rejected, and the
stream goes on; UNAVAILABLE or RESOURCE_EXHAUSTED end the stream, and every batch answered
before that stands.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

from eventpipe.common.v1 import event_pb2
from eventpipe.core.errors import EventPipeError, InvalidArgument

from ingest.outcome import INVALID_ARGUMENT, BatchOutcome, ItemOutcome, ItemStatus
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
    return BatchOutcome(
        [
            ItemOutcome(
                index,
                event.event_id,
                ItemStatus.REJECTED,
                INVALID_ARGUMENT,
                tuple(error.violations),
            )
            for index, event in enumerate(batch.events)
        ]
    )


def ingest_stream(
    pipeline: IngestPipeline,
    batches: Iterator[StreamBatch],
    *,
    window: int,
    capacity_wait_seconds: float,
    traceparent: str | None = None,
) -> Iterator[tuple[str, BatchOutcome]]:
    """Yields ``(batch_id, outcome)`` per batch, in the order the batches came in."""
    in_flight: queue.Queue[object] = queue.Queue(maxsize=window)
    stopped = threading.Event()

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
        except EventPipeError as error:
            put(error)
            return
        except Exception as error:  # the client went away, or the transport broke
            put(error)
            return
        put(_END)

    reader = threading.Thread(target=read, name="ingest-stream-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = in_flight.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            batch_id, pending = cast(tuple[str, PendingBatch | BatchOutcome], item)
            outcome = pending.result() if isinstance(pending, PendingBatch) else pending
            yield batch_id, outcome
    finally:
        stopped.set()
