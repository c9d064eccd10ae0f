"""Open streams are bounded: per server, per tenant and per connection (the shared
``StreamLimits``), and an idle StreamEvents call ends after the idle timeout."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import pytest
from eventpipe.core.errors import ResourceExhausted, Unavailable
from eventpipe.core.interceptors import StreamLimits
from eventpipe.core.results import ItemStatus
from eventpipe.core.waiting import wait_until
from ingest.streaming import StreamBatch, StreamDrain, ingest_stream

from tests.unit.ingest.test_pipeline import FakeLog, event, pipeline


def test_streams_beyond_the_tenant_limit_are_refused_and_a_closed_one_frees_its_slot() -> None:
    limits = StreamLimits(max_streams=10, per_tenant=2, per_connection=10)
    first = limits.open("conn-1", "acme")
    limits.open("conn-2", "acme")

    with pytest.raises(ResourceExhausted, match="tenant"):
        limits.open("conn-3", "acme")
    limits.open("conn-3", "globex")  # another tenant is not affected

    first.close()
    first.close()  # closing twice gives back one slot only
    limits.open("conn-3", "acme")
    with pytest.raises(ResourceExhausted, match="tenant"):
        limits.open("conn-4", "acme")


def test_streams_beyond_the_connection_and_server_limits_are_refused() -> None:
    limits = StreamLimits(max_streams=3, per_tenant=10, per_connection=2)
    limits.open("conn-1", "a")
    limits.open("conn-1", "b")
    with pytest.raises(ResourceExhausted, match="connection"):
        limits.open("conn-1", "c")
    limits.open("conn-2", None)
    with pytest.raises(ResourceExhausted, match="server"):
        limits.open("conn-3", "d")
    assert limits.open_streams == 3


def test_a_stream_of_no_known_tenant_counts_against_the_tenant_its_first_message_names() -> None:
    limits = StreamLimits(max_streams=10, per_tenant=1, per_connection=10)
    limits.open("conn-1", "acme")
    anonymous = limits.open("conn-2", None)

    with pytest.raises(ResourceExhausted, match="tenant"):
        anonymous.claim_tenant("acme")
    anonymous.claim_tenant("globex")
    with pytest.raises(ResourceExhausted, match="tenant"):
        limits.open("conn-3", "globex")
    anonymous.close()
    limits.open("conn-3", "globex")


def _batches(source: queue.Queue[StreamBatch | None]) -> Iterator[StreamBatch]:
    return iter(source.get, None)


def test_an_idle_stream_ends_unavailable_after_answering_every_batch() -> None:
    source: queue.Queue[StreamBatch | None] = queue.Queue()
    source.put(StreamBatch("b0", "acme", [event("a")], 0))
    answers = ingest_stream(
        pipeline(FakeLog()),
        _batches(source),
        window=2,
        capacity_wait_seconds=0,
        idle_timeout_seconds=0.2,
    )
    try:
        batch_id, outcome = next(answers)
        assert batch_id == "b0" and [i.status for i in outcome.items] == [ItemStatus.ACCEPTED]
        with pytest.raises(Unavailable, match="without a batch"):
            next(answers)
    finally:
        source.put(None)


def test_a_stream_waiting_for_kafka_is_not_idle() -> None:
    log = FakeLog()
    log.hold = True
    source: queue.Queue[StreamBatch | None] = queue.Queue()
    source.put(StreamBatch("b0", "acme", [event("a")], 0))
    source.put(None)
    answers = ingest_stream(
        pipeline(log), _batches(source), window=2, capacity_wait_seconds=0, idle_timeout_seconds=0.1
    )
    received: list[str] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            received.extend(batch_id for batch_id, _ in answers)
        except BaseException as error:
            errors.append(error)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    wait_until(lambda: log.queue_depth() == 1, timeout=5, what="the batch to be produced")
    consumer.join(0.5)  # five idle timeouts pass while Kafka holds the batch
    log.release()
    consumer.join(5)
    assert not consumer.is_alive()
    assert received == ["b0"] and errors == []


def test_a_draining_server_ends_an_idle_stream_at_once() -> None:
    source: queue.Queue[StreamBatch | None] = queue.Queue()
    drain = StreamDrain()
    answers = ingest_stream(
        pipeline(FakeLog()),
        _batches(source),
        window=2,
        capacity_wait_seconds=0,
        idle_timeout_seconds=3600,
        draining=drain.draining,
    )
    drain.stop(timeout=0)
    try:
        with pytest.raises(Unavailable, match="shutting down"):
            next(answers)
    finally:
        source.put(None)
