"""decode_raw_event: the one reading of a raw-topic message (store consumer, streaming enrich)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from eventpipe.common.v1 import event_pb2
from eventpipe.core import topic_contract
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.core.topic_contract import PoisonMessage, decode_raw_event
from eventpipe.core.validation import EventLimits
from hypothesis import given, settings
from hypothesis import strategies as st
from ingest.batch import prepare_batch

NOW = 1_700_000_000_123_456
LIMITS = EventLimits()
FIVE_MINUTES = 300_000_000


def ingested(event_micros: int, ingest_micros: int = NOW) -> event_pb2.Event:
    event = event_pb2.Event(tenant_id="acme", event_id="e1", event_type="click", entity_id="u1")
    event.event_time.CopyFrom(timestamp_from_micros(event_micros))
    event.ingest_time.CopyFrom(timestamp_from_micros(ingest_micros))
    return event


def decode(
    event: event_pb2.Event,
    timestamp_ms: int | None = NOW // 1000,
    now: int = NOW,
    headers: list[tuple[str, bytes]] | None = None,
    key: bytes | None = None,
) -> event_pb2.Event:
    return decode_raw_event(
        key if key is not None else topic_contract.message_key(event.tenant_id, event.entity_id),
        event.SerializeToString(),
        headers if headers is not None else topic_contract.message_headers(event),
        timestamp_ms,
        LIMITS,
        now,
    )


def reason(**kwargs: object) -> str:
    with pytest.raises(PoisonMessage) as error:
        decode(**kwargs)  # type: ignore[arg-type]
    return str(error.value)


def test_a_message_as_ingest_writes_it_decodes_to_the_same_event() -> None:
    event = ingested(NOW - 1000)
    assert decode(event) == event


def test_the_five_minute_bound_is_judged_against_ingest_time_not_the_kafka_timestamp() -> None:
    # Exactly 5 minutes after ingest_time: ingest accepted it. The Kafka timestamp is in
    # milliseconds, up to 1 ms before ingest_time's microsecond: the store must accept it too.
    at_bound = ingested(NOW + FIVE_MINUTES)
    assert decode(at_bound, timestamp_ms=NOW // 1000) == at_bound
    # ... and a week later, replaying a backlog, it still does.
    assert decode(at_bound, now=NOW + 7 * 86_400_000_000) == at_bound
    # One microsecond more: ingest refused it, and so does the store.
    assert "future" in reason(event=ingested(NOW + FIVE_MINUTES + 1))


@settings(max_examples=200, deadline=None)
@given(
    ingest_micros=st.integers(NOW - 10**9, NOW + 10**9),
    offset=st.integers(FIVE_MINUTES - 2000, FIVE_MINUTES + 2000),
    produce_delay=st.integers(0, 5000),
    consumer_delay=st.integers(0, 40 * 86_400_000_000),
)
def test_an_event_ingest_acknowledged_is_never_refused_for_a_rule_ingest_applied(
    ingest_micros: int, offset: int, produce_delay: int, consumer_delay: int
) -> None:
    event = event_pb2.Event(event_id="e1", event_type="click", entity_id="u1")
    event.event_time.CopyFrom(timestamp_from_micros(ingest_micros + offset))
    prepared = prepare_batch("acme", [event], now_micros=ingest_micros, limits=LIMITS)
    if not prepared.values:
        return  # ingest refused it: nothing was acknowledged
    produced_micros = ingest_micros + produce_delay  # librdkafka stamps at produce()
    decoded = decode_raw_event(
        prepared.keys[0],
        prepared.values[0],
        prepared.headers,
        produced_micros // 1000,
        LIMITS,
        produced_micros + consumer_delay,
    )
    assert decoded.event_id == "e1"


def test_without_ingest_time_the_kafka_timestamp_capped_at_now_is_the_reference() -> None:
    event = ingested(NOW)
    event.ClearField("ingest_time")
    decoded = decode(event, timestamp_ms=NOW // 1000 - 5, headers=[])
    assert decoded.ingest_time == timestamp_from_micros((NOW // 1000 - 5) * 1000)
    assert decode(event, timestamp_ms=None, headers=[]).ingest_time == timestamp_from_micros(NOW)
    future_stamp = (NOW + 86_400_000_000) // 1000
    assert decode(event, timestamp_ms=future_stamp, headers=[]).ingest_time == (
        timestamp_from_micros(NOW)
    )


@pytest.mark.parametrize(
    ("ingest_micros", "timestamp_ms", "words"),
    [
        (NOW + 3_600_000_000, (NOW + 3_600_000_000) // 1000, "in the future"),
        (NOW, (NOW - 120_000_000) // 1000, "after the message's Kafka timestamp"),
        (NOW - 3_600_000_000, NOW // 1000, "before the message's Kafka timestamp"),
    ],
)
def test_a_direct_producers_ingest_time_is_trusted_only_near_the_kafka_timestamp(
    ingest_micros: int, timestamp_ms: int, words: str
) -> None:
    event = ingested(ingest_micros, ingest_micros)
    assert words in reason(event=event, timestamp_ms=timestamp_ms)


def test_the_trust_window_is_configurable() -> None:
    limits = EventLimits(ingest_time_max_lag=timedelta(hours=2))
    event = ingested(NOW - 3_600_000_000, NOW - 3_600_000_000)
    key = topic_contract.message_key("acme", "u1")
    value, headers = event.SerializeToString(), topic_contract.message_headers(event)
    assert decode_raw_event(key, value, headers, NOW // 1000, limits, NOW) == event


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ([(topic_contract.HEADER_TENANT, b"other")], "tenant"),
        ([(topic_contract.HEADER_TENANT, None)], "tenant"),
        ([(topic_contract.HEADER_SCHEMA, b"eventpipe.common.v1.Event;v=2")], "unsupported"),
        ([(topic_contract.HEADER_INGEST_TIME, b"12x")], "not an integer"),
        ([(topic_contract.HEADER_INGEST_TIME, b"\xff")], "not an integer"),
        ([(topic_contract.HEADER_INGEST_TIME, str(NOW - 1).encode())], "does not match"),
    ],
)
def test_headers_that_disagree_with_the_value_are_poison(
    headers: list[tuple[str, bytes]], words: str
) -> None:
    assert words in reason(event=ingested(NOW), headers=headers)


def test_a_key_that_is_not_tenant_and_entity_is_poison() -> None:
    assert "message key" in reason(event=ingested(NOW), key=b"acme#someone-else")


@pytest.mark.parametrize(("seconds", "nanos"), [(10**13, 0), (-(10**13), 0), (0, -5)])
def test_an_out_of_range_ingest_time_or_attribute_timestamp_is_poison(
    seconds: int, nanos: int
) -> None:
    event = ingested(NOW)
    event.attributes["when"].timestamp_value.seconds = seconds
    event.attributes["when"].timestamp_value.nanos = nanos
    assert "attributes[when]" in reason(event=event)
    event = ingested(NOW)
    event.ingest_time.seconds, event.ingest_time.nanos = seconds, nanos
    assert "ingest_time" in reason(event=event, headers=[])


def test_every_message_key_of_a_tenant_starts_with_its_key_prefix() -> None:
    assert topic_contract.tenant_key_prefix("acme") == b"acme#"
    for entity in ("u1", "u#2", ""):
        assert topic_contract.message_key("acme", entity).startswith(b"acme#")
    assert not topic_contract.message_key("acme2", "u1").startswith(b"acme#")


def test_an_out_of_range_ingest_time_gets_no_header_and_is_still_refused_for_itself() -> None:
    event = ingested(NOW)
    event.ingest_time.seconds = 10**13

    headers = topic_contract.message_headers(event)

    assert topic_contract.HEADER_INGEST_TIME not in [name for name, _ in headers]
    assert "ingest_time" in reason(event=event, headers=headers)


@pytest.mark.parametrize("value", [None, b"", b"\xff\xfe garbage", b"\x0a\xff\xff\xff\xff\x0f"])
def test_bytes_that_are_not_an_event_are_poison(value: bytes | None) -> None:
    with pytest.raises(PoisonMessage):
        decode_raw_event(b"acme#u1", value, [], NOW // 1000, LIMITS, NOW)


@settings(max_examples=200, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=40)),
    value=st.one_of(st.none(), st.binary(max_size=300)),
    headers=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    topic_contract.HEADER_TENANT,
                    topic_contract.HEADER_SCHEMA,
                    topic_contract.HEADER_INGEST_TIME,
                    "other",
                ]
            ),
            st.one_of(st.none(), st.binary(max_size=30)),
        ),
        max_size=4,
    ),
    timestamp_ms=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
)
def test_whatever_the_message_the_reading_returns_an_event_or_raises_poison_only(
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]],
    timestamp_ms: int | None,
) -> None:
    try:
        event = decode_raw_event(key, value, headers, timestamp_ms, LIMITS, NOW)
    except PoisonMessage as exc:
        assert str(exc)
    else:
        assert event.HasField("ingest_time")


DAY = 86_400_000_000
BACKFILL_LIMITS = EventLimits(backfill_horizon=timedelta(days=365))


def decode_with(event: event_pb2.Event, headers: list[tuple[str, bytes]]) -> event_pb2.Event:
    return decode_raw_event(
        topic_contract.message_key(event.tenant_id, event.entity_id),
        event.SerializeToString(),
        headers,
        NOW // 1000,
        BACKFILL_LIMITS,
        NOW,
    )


def test_a_backfill_message_is_judged_against_the_backfill_horizon() -> None:
    old = ingested(NOW - 200 * DAY)
    headers = topic_contract.message_headers(old, backfill=True)
    assert (topic_contract.HEADER_BACKFILL, b"1") in headers
    assert decode_with(old, headers).event_id == "e1"
    with pytest.raises(PoisonMessage, match="event_time: is older than the retention"):
        decode_with(old, topic_contract.message_headers(old))
    too_old = ingested(NOW - 400 * DAY)
    with pytest.raises(PoisonMessage, match="event_time: is older than the backfill horizon"):
        decode_with(too_old, topic_contract.message_headers(too_old, backfill=True))


def test_a_backfill_header_of_zero_is_a_live_event_and_any_other_value_is_poison() -> None:
    event = ingested(NOW - DAY)
    headers = topic_contract.message_headers(event)
    assert decode_with(event, [*headers, (topic_contract.HEADER_BACKFILL, b"0")])
    with pytest.raises(PoisonMessage, match="eventpipe-backfill header must be 1 or 0"):
        decode_with(event, [*headers, (topic_contract.HEADER_BACKFILL, b"yes")])


def test_what_ingest_accepted_as_backfill_the_store_accepts() -> None:
    old = event_pb2.Event(event_id="e1", event_type="click", entity_id="u1")
    old.event_time.CopyFrom(timestamp_from_micros(NOW - 300 * DAY))
    prepared = prepare_batch("acme", [old], now_micros=NOW, limits=BACKFILL_LIMITS, backfill=True)
    ((key, value),) = zip(prepared.keys, prepared.values, strict=True)
    decoded = decode_raw_event(key, value, prepared.headers, NOW // 1000, BACKFILL_LIMITS, NOW)
    assert decoded.event_time == old.event_time
