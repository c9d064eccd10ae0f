"""Reads of stored rows never fail a whole answer over one unreadable cell."""

from __future__ import annotations

from eventpipe.common.v1 import event_pb2
from eventpipe.core.page_tokens import PageTokenCodec
from eventpipe.core.storage.attributes import ATTRIBUTE_FAMILIES, encode_int
from eventpipe.core.storage.rows import UNREADABLE_CELLS, event_to_row
from eventpipe.core.storage.tables import DIMENSIONS_TABLE, RAW_EVENTS_TABLE
from eventpipe.core.validation import TimeBounds
from store.dimensions import DimensionRecordInput, DimensionStore
from store.raw_events import RawEventBrowser

from tests.unit.store.fakes import FakeTable
from tests.unit.store.test_batch import NOW, event

BAD_TIMESTAMP = encode_int(10**12 * 1_000_000)  # year ~31,700: not a Timestamp


def unreadable(table: str, skipped: str) -> float:
    return float(UNREADABLE_CELLS.labels(table, skipped)._value.get())


def corrupt(table: FakeTable, name: str, key: bytes, column: tuple[str, bytes], raw: bytes) -> None:
    table.tables[name][key][column] = [(0, raw)]


def test_raw_events_skip_a_bad_attribute_cell_and_a_row_without_a_readable_envelope() -> None:
    table = FakeTable()
    rows = []
    for index in range(3):
        e = event(index, NOW - index)
        e.attributes["url"].string_value = "/"
        e.attributes["when"].timestamp_value.seconds = 1
        rows.append(event_to_row(e))
    table.write_rows(RAW_EVENTS_TABLE, rows)
    when = (ATTRIBUTE_FAMILIES["timestamp_value"], b"when")
    corrupt(table, RAW_EVENTS_TABLE, rows[0].key, when, BAD_TIMESTAMP)
    corrupt(table, RAW_EVENTS_TABLE, rows[1].key, ("m", b"event_time"), b"\x00")
    cells_before, rows_before = unreadable("events", "cell"), unreadable("events", "row")

    browser = RawEventBrowser(table, PageTokenCodec(b"k" * 32, "test"))
    events, _ = browser.list("acme", "u1", TimeBounds(), 10, "")

    assert [e.event_id for e in events] == ["e0", "e2"]
    assert set(events[0].attributes) == {"url"}
    assert set(events[1].attributes) == {"url", "when"}
    assert unreadable("events", "cell") - cells_before == 1
    assert unreadable("events", "row") - rows_before == 1


def test_a_dimension_record_with_a_bad_envelope_cell_is_answered_from_its_row_key() -> None:
    table = FakeTable()
    store = DimensionStore(table, table, retry_delay=0)
    attributes = {
        "tier": event_pb2.AttributeValue(string_value="gold"),
        "since": event_pb2.AttributeValue(int_value=3),
    }
    store.upsert("t", "users", [DimensionRecordInput("u1", 86_400_000_000, attributes)])
    (key,) = table.tables[DIMENSIONS_TABLE]
    corrupt(table, DIMENSIONS_TABLE, key, ("m", b"valid_from"), b"?")
    corrupt(table, DIMENSIONS_TABLE, key, ("i", b"since"), b"?")

    version = store.get("t", "users", "u1", None)

    assert (version.key, version.valid_from_micros) == ("u1", 86_400_000_000)
    assert dict(version.attributes) == {"tier": attributes["tier"]}
