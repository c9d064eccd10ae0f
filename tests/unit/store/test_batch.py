"""Decoding raw-topic messages: rows for valid events, dead letters for everything else."""

from __future__ import annotations

import time

from eventpipe.common.v1 import event_pb2
from eventpipe.core import topic_contract
from eventpipe.core.storage.attributes import decode_int
from eventpipe.core.storage.times import micros, timestamp_from_micros
from eventpipe.core.validation import EventLimits
from store.consumer.batch import prepare_batch

from tests.unit.store.fakes import FakeMessage

NOW = int(time.time() * 1_000_000)
DAY = 86_400_000_000


def event(index: int = 0, event_micros: int = NOW) -> event_pb2.Event:
    e = event_pb2.Event(tenant_id="acme", event_id=f"e{index}", event_type="click", entity_id="u1")
    e.event_time.CopyFrom(timestamp_from_micros(event_micros))
    return e


def message(
    e: event_pb2.Event, offset: int = 0, produced_micros: int = NOW, **overrides: object
) -> FakeMessage:
    if not e.HasField("ingest_time"):  # as ingest stamps it
        e = event_pb2.Event.FromString(e.SerializeToString())
        e.ingest_time.CopyFrom(timestamp_from_micros(produced_micros))
    fields: dict[str, object] = {
        "_key": topic_contract.message_key(e.tenant_id, e.entity_id),
        "_value": e.SerializeToString(),
        "_headers": topic_contract.message_headers(e),
        "_timestamp_ms": produced_micros // 1000,
    }
    fields.update(overrides)
    return FakeMessage("raw", 2, offset, **fields)  # type: ignore[arg-type]


def reasons(messages: list[FakeMessage], now: int = NOW) -> list[str]:
    batch = prepare_batch(messages, EventLimits(), now)
    return [
        dict(letter.headers)[topic_contract.HEADER_DLQ_ERROR].decode()
        for letter in batch.dead_letters
    ]


def test_a_valid_event_becomes_its_row_and_its_offset_is_recorded() -> None:
    batch = prepare_batch([message(event(), offset=41)], EventLimits(), NOW)
    assert len(batch.rows) == 1 and not batch.dead_letters
    assert batch.next_offsets == {("raw", 2): 42}


def test_undecodable_bytes_become_a_dead_letter_with_error_and_source_headers() -> None:
    batch = prepare_batch(
        [message(event(), offset=7, _value=b"\xff\xff garbage")], EventLimits(), NOW
    )
    assert not batch.rows
    headers = dict(batch.dead_letters[0].headers)
    assert b"not a serialized" in headers[topic_contract.HEADER_DLQ_ERROR]
    assert headers[topic_contract.HEADER_DLQ_SOURCE] == b"raw/2/7"
    assert batch.dead_letters[0].value == b"\xff\xff garbage"
    assert batch.next_offsets == {("raw", 2): 8}  # a poison message is committed past


def test_an_empty_value_is_a_dead_letter() -> None:
    assert "empty message value" in reasons([message(event(), _value=None)])[0]


def test_an_invalid_event_from_a_direct_producer_is_a_dead_letter_naming_the_field() -> None:
    bad = event()
    bad.event_type = "Not Valid"
    assert reasons([message(bad)])[0].startswith("invalid event: event_type:")


def test_event_time_is_judged_against_the_produce_time_not_the_replay_time() -> None:
    old_but_valid_then = event(event_micros=NOW - 29 * DAY)
    replayed_later = NOW + 5 * DAY
    assert reasons([message(old_but_valid_then)], now=replayed_later) == []
    too_old_then = event(event_micros=NOW - 31 * DAY)
    assert "event_time" in reasons([message(too_old_then)], now=replayed_later)[0]


def test_a_future_produce_timestamp_cannot_widen_the_future_bound() -> None:
    far_future = event(event_micros=NOW + DAY)
    assert "future" in reasons([message(far_future, produced_micros=NOW + 2 * DAY)])[0]


def test_a_key_or_tenant_header_that_breaks_the_contract_is_a_dead_letter() -> None:
    assert "message key" in reasons([message(event(), _key=b"acme#other")])[0]
    headers = [(topic_contract.HEADER_TENANT, b"someone-else")]
    assert "tenant" in reasons([message(event(), _headers=headers)])[0]
    schema = [(topic_contract.HEADER_SCHEMA, b"eventpipe.common.v1.Event;v=9")]
    assert "unsupported" in reasons([message(event(), _headers=schema)])[0]


def test_a_missing_ingest_time_is_taken_from_the_header() -> None:
    e = event()
    e.ClearField("ingest_time")
    headers = [(topic_contract.HEADER_INGEST_TIME, str(NOW - 5).encode())]
    batch = prepare_batch(
        [message(e, _headers=headers, _value=e.SerializeToString())], EventLimits(), NOW
    )
    assert decode_int(batch.rows[0].cells[("m", b"ingest_time")]) == NOW - 5
    assert micros(e.event_time) == batch.rows[0].timestamp_micros
