"""The ingest rules and acknowledgement logic, with an in-memory event log."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import pytest
from eventpipe.common.v1 import event_pb2
from eventpipe.common.v1.results_pb2 import ITEM_STATUS_ACCEPTED
from eventpipe.core.errors import InvalidArgument, ResourceExhausted, Unavailable
from eventpipe.core.results import ItemStatus
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.core.validation import EventLimits
from eventpipe.core.waiting import wait_until
from google.protobuf import json_format
from google.rpc import code_pb2
from ingest.capacity import InFlightLimiter
from ingest.pipeline import IngestPipeline
from ingest.ports import DeliveryReport
from ingest.servicer import item_result
from ingest.streaming import StreamBatch, ingest_stream

NOW = 1_700_000_000_000_000


@dataclass(frozen=True)
class Written:
    """A message the fake log took: its key and value."""

    key: bytes
    value: bytes


class Reported:
    """What a delivery report names: the message, as far as ingest reads it (its value)."""

    def __init__(self, message: Written) -> None:
        self._value = message.value

    def value(self) -> bytes:
        return self._value


class FakeLog:
    """Confirms, fails, or holds messages; can refuse to queue beyond ``capacity``."""

    def __init__(self, fail: set[int] | None = None, capacity: int | None = None) -> None:
        self.written: list[Written] = []
        self.fail = fail or set()
        self.capacity = capacity
        self.hold = False
        self.held: list[tuple[DeliveryReport, int, Written]] = []
        self.headers: list[list[tuple[str, bytes]]] = []

    def produce(
        self,
        keys: Sequence[bytes],
        values: Sequence[bytes],
        headers: list[tuple[str, bytes]],
        on_delivery: DeliveryReport,
    ) -> int:
        self.headers.append(headers)
        queued = len(values) if self.capacity is None else min(len(values), self.capacity)
        for index in range(queued):
            message = Written(keys[index], values[index])
            if self.hold:
                self.held.append((on_delivery, index, message))
            else:
                self._report(on_delivery, index, message)
        return queued

    def _report(self, on_delivery: DeliveryReport, index: int, message: Written) -> None:
        if index in self.fail:
            on_delivery("_MSG_TIMED_OUT: Local: Message timed out", Reported(message))  # type: ignore[arg-type]
        else:
            self.written.append(message)
            on_delivery(None, Reported(message))  # type: ignore[arg-type]

    def describe_failure(self, error: object) -> str:
        return str(error)

    def release(self) -> None:
        held, self.held = self.held, []
        for on_delivery, index, message in held:
            self._report(on_delivery, index, message)

    def queue_depth(self) -> int:
        return len(self.held)

    def close(self, timeout: float) -> None:
        pass


def event(event_id: str, **changes: object) -> event_pb2.Event:
    e = event_pb2.Event(event_id=event_id, event_type="page_view", entity_id="user-1")
    e.event_time.CopyFrom(timestamp_from_micros(NOW - 1_000_000))
    for field, value in changes.items():
        setattr(e, field, value)
    return e


def pipeline(
    log: FakeLog, *, max_events: int = 1000, produce_timeout: float = 0.5
) -> IngestPipeline:
    return IngestPipeline(
        log,
        InFlightLimiter(max_events, 10 * 1024 * 1024),
        limits=EventLimits(max_future=timedelta(minutes=5), max_age=timedelta(days=30)),
        max_batch_bytes=4 * 1024 * 1024,
        produce_timeout_seconds=produce_timeout,
        retry_after_seconds=2.0,
        clock_micros=lambda: NOW,
    )


def test_a_confirmed_event_is_accepted_with_tenant_and_ingest_time_stamped() -> None:
    log = FakeLog()
    outcome = pipeline(log).ingest("acme", [event("e-1")])
    assert [(i.id, i.status) for i in outcome.items] == [("e-1", ItemStatus.ACCEPTED)]
    written = event_pb2.Event.FromString(log.written[0].value)
    assert written.tenant_id == "acme"
    assert written.ingest_time.ToMicroseconds() == NOW
    assert log.written[0].key == b"acme#user-1"


def test_a_mixed_batch_gets_one_result_per_event_in_order() -> None:
    log = FakeLog()
    outcome = pipeline(log).ingest(
        "acme",
        [
            event("a"),
            event("b", event_type="Bad"),
            event("a"),
            event("c", tenant_id="other"),
            event("d", tenant_id="acme"),
        ],
    )
    assert [(i.index, i.id, i.status, i.code) for i in outcome.items] == [
        (0, "a", ItemStatus.ACCEPTED, ""),
        (1, "b", ItemStatus.REJECTED, "INVALID_ARGUMENT"),
        (2, "a", ItemStatus.DUPLICATE, ""),
        (3, "c", ItemStatus.REJECTED, "INVALID_ARGUMENT"),
        (4, "d", ItemStatus.ACCEPTED, ""),
    ]
    assert [v.field for v in outcome.items[1].violations] == ["event_type"]
    assert [v.field for v in outcome.items[3].violations] == ["tenant_id"]
    assert len(log.written) == 2


def test_an_invalid_event_does_not_make_a_later_valid_one_with_its_id_a_duplicate() -> None:
    outcome = pipeline(FakeLog()).ingest("acme", [event("x", event_type=""), event("x")])
    assert [i.status for i in outcome.items] == [ItemStatus.REJECTED, ItemStatus.ACCEPTED]


def test_an_event_kafka_did_not_confirm_is_never_accepted() -> None:
    log = FakeLog(fail={1})
    outcome = pipeline(log).ingest("acme", [event("a"), event("b"), event("c")])
    assert [(i.status, i.code) for i in outcome.items] == [
        (ItemStatus.ACCEPTED, ""),
        (ItemStatus.REJECTED, "UNAVAILABLE"),
        (ItemStatus.ACCEPTED, ""),
    ]


def test_item_results_carry_the_typed_code_a_message_and_the_violations() -> None:
    outcome = pipeline(FakeLog(fail={1})).ingest(
        "acme", [event("a"), event("b"), event("c", event_type="Bad")]
    )
    accepted, unconfirmed, invalid = (item_result(item) for item in outcome.items)
    assert (accepted.status, accepted.code, accepted.message) == (
        ITEM_STATUS_ACCEPTED,
        code_pb2.OK,
        "",
    )
    assert (unconfirmed.code, list(unconfirmed.violations)) == (code_pb2.UNAVAILABLE, [])
    assert unconfirmed.message.startswith("Kafka did not confirm the write")
    assert invalid.code == code_pb2.INVALID_ARGUMENT
    assert [v.field for v in invalid.violations] == ["event_type"]
    assert invalid.message == f"event_type: {invalid.violations[0].description}"


def test_an_item_result_in_json_names_its_code() -> None:
    outcome = pipeline(FakeLog()).ingest("acme", [event("a"), event("b", event_type="Bad")])
    accepted, invalid = (
        json_format.MessageToDict(
            item_result(item),
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        for item in outcome.items
    )
    assert (accepted["code"], accepted["message"], accepted["violations"]) == ("OK", "", [])
    assert (invalid["status"], invalid["code"]) == ("ITEM_STATUS_REJECTED", "INVALID_ARGUMENT")
    assert [v["field"] for v in invalid["violations"]] == ["event_type"]


def test_a_batch_of_which_nothing_was_confirmed_is_unavailable() -> None:
    log = FakeLog(fail={0, 1})
    with pytest.raises(Unavailable):
        pipeline(log).ingest("acme", [event("a"), event("b")])


def test_a_batch_without_any_report_in_time_is_unavailable_not_acknowledged() -> None:
    log = FakeLog()
    log.hold = True
    with pytest.raises(Unavailable, match="no delivery report"):
        pipeline(log, produce_timeout=-4.9).ingest("acme", [event("a")])


def test_a_full_in_flight_bound_refuses_with_retry_advice_and_frees_on_delivery() -> None:
    log = FakeLog()
    log.hold = True
    p = pipeline(log, max_events=2)
    first = p.submit("acme", [event("a"), event("b")])
    with pytest.raises(ResourceExhausted) as refused:
        p.submit("acme", [event("c")])
    assert refused.value.retry_after_seconds == 2.0
    log.release()
    assert first.result().accepted == 2
    assert p.limiter.events == 0
    log.hold = False
    assert p.ingest("acme", [event("c")]).accepted == 1


def test_a_full_producer_queue_refuses_the_rest_of_the_batch_only() -> None:
    log = FakeLog(capacity=1)
    outcome = pipeline(log).ingest("acme", [event("a"), event("b")])
    assert [(i.status, i.code) for i in outcome.items] == [
        (ItemStatus.ACCEPTED, ""),
        (ItemStatus.REJECTED, "RESOURCE_EXHAUSTED"),
    ]
    with pytest.raises(ResourceExhausted):
        pipeline(FakeLog(capacity=0)).ingest("acme", [event("a")])


@pytest.mark.parametrize(
    ("tenant", "count", "field"),
    [("bad tenant", 1, "tenant_id"), ("acme", 0, "events"), ("acme", 1001, "events")],
)
def test_a_bad_tenant_or_batch_size_refuses_the_whole_request(
    tenant: str, count: int, field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        pipeline(FakeLog()).ingest(tenant, [event(f"e{i}") for i in range(count)])
    assert [v.field for v in refused.value.violations] == [field]


def test_an_oversized_request_is_resource_exhausted_without_retry_advice() -> None:
    with pytest.raises(ResourceExhausted) as refused:
        pipeline(FakeLog()).ingest("acme", [event("a")], request_bytes=5 * 1024 * 1024)
    assert refused.value.retry_after_seconds is None


def test_headers_carry_tenant_schema_ingest_time_and_trace() -> None:
    log = FakeLog()
    pipeline(log).ingest("acme", [event("a")], traceparent="00-abc-def-01")
    assert dict(log.headers[0]) == {
        "eventpipe-tenant": b"acme",
        "eventpipe-schema": b"eventpipe.common.v1.Event;v=1",
        "eventpipe-ingest-time": str(NOW).encode(),
        "traceparent": b"00-abc-def-01",
    }


def test_a_stream_answers_each_batch_in_order_and_rejects_a_bad_batch_without_ending() -> None:
    log = FakeLog()
    batches = [
        StreamBatch("b0", "acme", [event("a")], 0),
        StreamBatch("b1", "acme", [], 0),
        StreamBatch("b2", "acme", [event("b"), event("c", event_type="")], 0),
    ]
    answers = list(ingest_stream(pipeline(log), iter(batches), window=2, capacity_wait_seconds=0))
    assert [(batch_id, [i.status for i in o.items]) for batch_id, o in answers] == [
        ("b0", [ItemStatus.ACCEPTED]),
        ("b1", []),
        ("b2", [ItemStatus.ACCEPTED, ItemStatus.REJECTED]),
    ]


def test_a_stream_stops_reading_when_its_window_is_full() -> None:
    log = FakeLog()
    log.hold = True
    read: list[str] = []

    def batches() -> object:
        for n in range(10):
            read.append(f"b{n}")
            yield StreamBatch(f"b{n}", "acme", [event(f"e{n}")], 0)

    answers = ingest_stream(
        pipeline(log),
        batches(),
        window=2,
        capacity_wait_seconds=0,  # type: ignore[arg-type]
    )
    consumer = threading.Thread(target=lambda: list(answers), daemon=True)
    consumer.start()
    # One batch awaited by the answering side, `window` queued, one in the reader's hand.
    wait_until(lambda: log.queue_depth() == 4, timeout=5, what="the window to fill")
    consumer.join(0.2)  # give a runaway reader a chance to show itself
    assert read == ["b0", "b1", "b2", "b3"]
    while consumer.is_alive():
        log.release()
        consumer.join(0.05)
    assert len(read) == 10
