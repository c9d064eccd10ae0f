"""Property: whatever a message holds, it ends as a row or a dead letter, never an escape.

Arbitrary bytes, arbitrary headers and arbitrary ``Event`` messages (extreme numbers and
timestamps, unicode, empty and huge values) go through the consumer's decode -> validate ->
row path (``prepare_batch``); nothing may raise out of it, every message is accounted for,
and every row it makes reads back (the read path decodes what the write path wrote).
"""

from __future__ import annotations

from eventpipe.common.v1 import event_pb2
from eventpipe.core import topic_contract
from eventpipe.core.storage.rows import event_from_cells
from eventpipe.core.validation import EventLimits
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store.consumer.batch import prepare_batch

from tests.unit.store.fakes import FakeMessage
from tests.unit.store.test_batch import NOW

INT64 = st.integers(-(2**63), 2**63 - 1)
# Seconds and nanos as the wire allows them (int64, int32), biased towards the edges.
SECONDS = st.one_of(
    INT64,
    st.sampled_from([10**13, -(10**13), 253_402_300_799, 253_402_300_800, -62_135_596_801]),
    st.integers(NOW // 10**6 - 40 * 86_400, NOW // 10**6 + 600),
)
NANOS = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(0, 999_999_999))
TIMESTAMPS = st.builds(Timestamp, seconds=SECONDS, nanos=NANOS)
TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "acme", "u1", "e1", "click", "a#b", "x" * 129, "é" * 2000]),
)
ATTRIBUTE_VALUES = st.one_of(
    st.builds(event_pb2.AttributeValue, string_value=st.text(max_size=50)),
    st.builds(event_pb2.AttributeValue, string_value=st.just("ü" * 5000)),
    st.builds(event_pb2.AttributeValue, int_value=INT64),
    st.builds(event_pb2.AttributeValue, double_value=st.floats(allow_nan=True)),
    st.builds(event_pb2.AttributeValue, bool_value=st.booleans()),
    st.builds(event_pb2.AttributeValue, timestamp_value=TIMESTAMPS),
    st.just(event_pb2.AttributeValue()),
)


@st.composite
def events(draw: st.DrawFn) -> event_pb2.Event:
    event = event_pb2.Event(
        tenant_id=draw(st.one_of(st.just("acme"), TEXT)),
        event_id=draw(st.one_of(st.just("e1"), TEXT)),
        event_type=draw(st.one_of(st.just("click"), TEXT)),
        entity_id=draw(st.one_of(st.just("u1"), TEXT)),
    )
    if draw(st.booleans()):
        event.event_time.CopyFrom(draw(TIMESTAMPS))
    if draw(st.booleans()):
        event.ingest_time.CopyFrom(draw(TIMESTAMPS))
    for key, value in draw(st.dictionaries(TEXT, ATTRIBUTE_VALUES, max_size=5)).items():
        event.attributes[key].CopyFrom(value)
    return event


@st.composite
def plausible_events(draw: st.DrawFn) -> event_pb2.Event:
    """Valid envelopes with extreme attribute values: these reach ``event_to_row``."""
    event = event_pb2.Event(tenant_id="acme", event_id="e1", event_type="click", entity_id="u1")
    event.event_time.seconds = NOW // 10**6 - draw(st.integers(-300, 30 * 86_400))
    event.ingest_time.seconds = NOW // 10**6
    keys = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,63}", fullmatch=True)
    for key, value in draw(st.dictionaries(keys, ATTRIBUTE_VALUES, max_size=6)).items():
        event.attributes[key].CopyFrom(value)
    return event


HEADERS = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from(
                [
                    topic_contract.HEADER_TENANT,
                    topic_contract.HEADER_SCHEMA,
                    topic_contract.HEADER_INGEST_TIME,
                ]
            ),
            st.text(max_size=10),
        ),
        st.one_of(st.binary(max_size=30), st.none(), st.just(b"acme")),
    ),
    max_size=4,
)


@st.composite
def messages(draw: st.DrawFn) -> FakeMessage:
    if draw(st.booleans()):
        event = draw(st.one_of(events(), plausible_events()))
        value: bytes | None = event.SerializeToString()
        key: bytes | None = draw(
            st.one_of(
                st.just(topic_contract.message_key(event.tenant_id, event.entity_id)),
                st.none(),
                st.binary(max_size=20),
            )
        )
        headers = draw(st.one_of(st.just(topic_contract.message_headers(event)), HEADERS))
    else:
        value = draw(st.one_of(st.binary(max_size=200), st.none()))
        key = draw(st.one_of(st.binary(max_size=20), st.none()))
        headers = draw(HEADERS)
    return FakeMessage(
        "raw",
        0,
        0,
        _key=key,
        _value=value,
        _headers=headers,
        _timestamp_ms=draw(st.one_of(st.just(NOW // 1000), INT64)),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(messages(), min_size=1, max_size=5))
def test_every_message_ends_as_a_row_or_a_dead_letter_and_nothing_escapes(
    batch: list[FakeMessage],
) -> None:
    for offset, message in enumerate(batch):
        message._offset = offset
    prepared = prepare_batch(batch, EventLimits(), NOW)
    assert len(prepared.rows) + len(prepared.dead_letters) == len(batch)
    assert prepared.next_offsets == {("raw", 0): len(batch)}
    for letter in prepared.dead_letters:
        reason = dict(letter.headers)[topic_contract.HEADER_DLQ_ERROR]
        assert reason  # every dead letter says why
    for row in prepared.rows:
        event_from_cells(row.cells)  # what was written reads back


def test_extreme_but_valid_values_become_rows_that_read_back_unchanged() -> None:
    event = event_pb2.Event(tenant_id="acme", event_id="e1", event_type="click", entity_id="u1")
    event.event_time.seconds = NOW // 10**6
    event.ingest_time.seconds = NOW // 10**6
    attributes = event.attributes
    attributes["big"].int_value = 2**63 - 1
    attributes["small"].int_value = -(2**63)
    attributes["huge"].double_value = 1.7976931348623157e308
    attributes["first"].timestamp_value.seconds = -62_135_596_800
    attributes["last"].timestamp_value.CopyFrom(
        Timestamp(seconds=253_402_300_799, nanos=999_999_000)
    )
    attributes["text"].string_value = "ü" * 2048  # 4096 bytes of UTF-8
    attributes["empty"].string_value = ""
    key = topic_contract.message_key("acme", "u1")
    message = FakeMessage("raw", 0, 0, key, event.SerializeToString(), [], NOW // 1000)
    prepared = prepare_batch([message], EventLimits(), NOW)
    assert not prepared.dead_letters
    assert event_from_cells(prepared.rows[0].cells) == event
