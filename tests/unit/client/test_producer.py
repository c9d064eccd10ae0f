"""The batching producer: bounded memory, one future per event, retries that follow RetryInfo
and resend the same event ids; and the stream with a bounded number of batches in flight."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from eventpipe.client import (
    BufferFull,
    EventPipeClient,
    InvalidArgument,
    ItemStatus,
    ProducerSettings,
    RetryPolicy,
    Unavailable,
)
from eventpipe.common.v1 import event_pb2, results_pb2
from eventpipe.core import errors as core_errors
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from google.rpc import code_pb2

from tests.unit.client.fakes import serving

FAST_RETRY = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, deadline=10)


def event(n: int | str) -> event_pb2.Event:
    return event_pb2.Event(event_id=f"e-{n}", event_type="click", entity_id="user-1")


def accepted(index: int, event_id: str) -> results_pb2.ItemResult:
    return results_pb2.ItemResult(
        index=index, id=event_id, status=results_pb2.ITEM_STATUS_ACCEPTED, code=code_pb2.OK
    )


class FakeIngest(ingest_pb2_grpc.IngestServiceServicer):
    """Accepts every event except: ``e-bad`` (INVALID_ARGUMENT), ``e-flaky`` (UNAVAILABLE on
    its first try); the first ``refusals`` calls are refused whole with RetryInfo."""

    def __init__(self, refusals: int = 0, gate: threading.Event | None = None) -> None:
        self.refusals = refusals
        self.gate = gate
        self.calls: list[list[str]] = []
        self.tenants: set[str] = set()
        self.lock = threading.Lock()

    def IngestEvents(self, request: Any, context: Any) -> Any:
        if self.gate is not None:
            self.gate.wait(10)
        with self.lock:
            ids = [e.event_id for e in request.events]
            self.calls.append(ids)
            self.tenants.add(request.tenant_id)
            if self.refusals:
                self.refusals -= 1
                raise core_errors.ResourceExhausted("queue full", retry_after_seconds=0.02)
            tried_flaky_before = sum(call.count("e-flaky") for call in self.calls) > 1
        results = []
        for index, event_id in enumerate(ids):
            if event_id == "e-bad":
                results.append(
                    results_pb2.ItemResult(
                        index=index,
                        id=event_id,
                        status=results_pb2.ITEM_STATUS_REJECTED,
                        code=code_pb2.INVALID_ARGUMENT,
                        message="event_time: is required",
                        violations=[
                            results_pb2.FieldViolation(
                                field="event_time", description="is required"
                            )
                        ],
                    )
                )
            elif event_id == "e-flaky" and not tried_flaky_before:
                results.append(
                    results_pb2.ItemResult(
                        index=index,
                        id=event_id,
                        status=results_pb2.ITEM_STATUS_REJECTED,
                        code=code_pb2.UNAVAILABLE,
                        message="kafka did not confirm",
                    )
                )
            else:
                results.append(accepted(index, event_id))
        return ingest_pb2.IngestEventsResponse(results=results)


def _client(address: str, **settings: Any) -> EventPipeClient:
    return EventPipeClient(
        address,
        tenant_id="acme",
        producer=ProducerSettings(**{"retry": FAST_RETRY, **settings}),
    )


def test_events_go_in_batches_no_larger_than_the_limit_and_each_gets_its_outcome() -> None:
    fake = FakeIngest()
    with serving(ingest=fake) as address, _client(address, max_batch_events=3) as client:
        futures = [client.events.send(event(n)) for n in range(7)]
        assert client.events.flush(timeout=10)
        outcomes = [f.result(0) for f in futures]
    assert [o.id for o in outcomes] == [f"e-{n}" for n in range(7)]
    assert {o.status for o in outcomes} == {ItemStatus.ACCEPTED}
    assert sorted(id for call in fake.calls for id in call) == sorted(f"e-{n}" for n in range(7))
    assert max(len(call) for call in fake.calls) <= 3
    assert fake.tenants == {"acme"}


def test_batches_also_stop_at_the_byte_limit() -> None:
    fake = FakeIngest()
    size = event(0).ByteSize()
    with serving(ingest=fake) as address, _client(address, max_batch_bytes=2 * size + 1) as client:
        futures = [client.events.send(event(n)) for n in range(6)]
        client.events.flush(timeout=10)
        assert all(f.result(0).status is ItemStatus.ACCEPTED for f in futures)
    assert max(len(call) for call in fake.calls) == 2


def test_a_rejected_event_raises_invalid_argument_with_its_violations() -> None:
    with serving(ingest=FakeIngest()) as address, _client(address) as client:
        good, bad = client.events.send(event(1)), client.events.send(event("bad"))
        client.events.flush(timeout=10)
        assert good.result(0).status is ItemStatus.ACCEPTED
        with pytest.raises(InvalidArgument) as raised:
            bad.result(0)
    assert [v.field for v in raised.value.violations] == ["event_time"]


def test_a_refused_batch_is_sent_again_after_retry_info_with_the_same_event_ids() -> None:
    fake = FakeIngest(refusals=2)
    with serving(ingest=fake) as address, _client(address, max_in_flight_batches=1) as client:
        futures = [client.events.send(event(n)) for n in range(3)]
        client.events.flush(timeout=10)
        assert all(f.result(0).status is ItemStatus.ACCEPTED for f in futures)
    assert len(fake.calls) == 3
    assert fake.calls[0] == fake.calls[1] == fake.calls[2] == ["e-0", "e-1", "e-2"]


def test_only_the_items_rejected_as_unavailable_are_sent_again() -> None:
    fake = FakeIngest()
    with serving(ingest=fake) as address, _client(address, max_in_flight_batches=1) as client:
        futures = [client.events.send(event(n)) for n in (1, "flaky", 2)]
        client.events.flush(timeout=10)
        assert [f.result(0).status for f in futures] == [ItemStatus.ACCEPTED] * 3
    assert fake.calls == [["e-1", "e-flaky", "e-2"], ["e-flaky"]]


def test_an_event_fails_with_the_last_error_once_its_deadline_passes() -> None:
    fake = FakeIngest(refusals=10_000)
    retry = RetryPolicy(initial_backoff=0.01, max_backoff=0.02, deadline=0.3)
    with serving(ingest=fake) as address, _client(address, retry=retry) as client:
        future = client.events.send(event(1))
        client.events.flush(timeout=10)
        with pytest.raises(core_errors.ResourceExhausted):
            future.result(0)
    assert len(fake.calls) > 1


def test_send_raises_buffer_full_when_the_buffer_stays_full() -> None:
    gate = threading.Event()
    fake = FakeIngest(gate=gate)
    with (
        serving(ingest=fake) as address,
        _client(address, max_buffered_events=2, max_block_seconds=0, linger_seconds=0) as client,
    ):
        first = [client.events.send(event(n)) for n in range(2)]
        with pytest.raises(BufferFull):
            client.events.send(event(3))
        assert client.events.buffered[0] == 2
        gate.set()
        client.events.flush(timeout=10)
        assert client.events.buffered == (0, 0)
        assert all(f.result(0).status is ItemStatus.ACCEPTED for f in first)
        # Room again: the same call now succeeds.
        later = client.events.send(event(3))
        client.events.flush(timeout=10)
        assert later.result(0).status is ItemStatus.ACCEPTED


def test_send_blocks_until_an_answer_frees_room() -> None:
    gate = threading.Event()
    fake = FakeIngest(gate=gate)
    with (
        serving(ingest=fake) as address,
        _client(address, max_buffered_events=1, max_block_seconds=10, linger_seconds=0) as client,
    ):
        client.events.send(event(1))
        sent: list[Any] = []
        sender = threading.Thread(target=lambda: sent.append(client.events.send(event(2))))
        sender.start()
        wait_until(lambda: len(fake.calls) == 0 and sender.is_alive(), timeout=5, what="blocked")
        assert not sent
        gate.set()
        sender.join(10)
        client.events.flush(timeout=10)
        assert sent[0].result(0).status is ItemStatus.ACCEPTED


def test_an_event_of_another_tenant_fails_without_being_sent() -> None:
    fake = FakeIngest()
    with serving(ingest=fake) as address, _client(address) as client:
        other = event(1)
        other.tenant_id = "someone-else"
        with pytest.raises(InvalidArgument):
            client.events.send(other).result(0)
    assert fake.calls == []


def test_unavailable_service_fails_each_future_with_unavailable() -> None:
    retry = RetryPolicy(initial_backoff=0.01, max_backoff=0.02, deadline=0.2)
    client = EventPipeClient(
        "127.0.0.1:1", tenant_id="acme", producer=ProducerSettings(retry=retry), timeout=1
    )
    with client:
        future = client.events.send(event(1))
        client.events.flush(timeout=10)
        with pytest.raises(Unavailable):
            future.result(0)


class WindowedIngest(ingest_pb2_grpc.IngestServiceServicer):
    """Reads requests as fast as the client sends them and answers each one only once the
    client had every chance to send more: records the most batches ever unanswered."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.most_unanswered = 0

    def StreamEvents(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        received: list[Any] = []
        ended = threading.Event()

        def read() -> None:
            for request in requests:
                received.append(request)
            ended.set()

        threading.Thread(target=read, daemon=True).start()
        answered = 0
        while not (ended.is_set() and answered == len(received)):

            def beyond_window(done: int = answered) -> bool:
                return len(received) - done > self.window or ended.is_set()

            with contextlib.suppress(TimeoutError):
                wait_until(
                    beyond_window,
                    timeout=0.3,
                    what="more requests than the window",
                    interval=0.01,
                )
            self.most_unanswered = max(self.most_unanswered, len(received) - answered)
            if answered < len(received):
                request = received[answered]
                answered += 1
                yield ingest_pb2.StreamEventsResponse(
                    batch_id=request.batch_id,
                    results=[accepted(i, e.event_id) for i, e in enumerate(request.events)],
                )


def test_stream_keeps_at_most_the_window_of_batches_unanswered() -> None:
    fake = WindowedIngest(window=2)
    with serving(ingest=fake) as address, _client(address) as client:
        responses = list(
            client.events.stream(
                (event(n) for n in range(12)), batch_size=2, max_in_flight_batches=2
            )
        )
    assert [r.batch_id for r in responses] == [str(n) for n in range(1, 7)]
    assert sum(len(r.results) for r in responses) == 12
    assert fake.most_unanswered == 2
