"""Erasing an entity (store.erasure) and the consumer honouring its tombstone
(store.consumer.erasures), on fake Bigtable and Kafka."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from eventpipe.core.entity_changes import EntityChange
from eventpipe.core.errors import InvalidArgument, Unavailable
from eventpipe.core.page_tokens import PageTokenCodec
from eventpipe.core.storage import keys
from eventpipe.core.storage.erasures import (
    ERASED_AT_QUALIFIER,
    erasure_keys,
    erasure_row,
    erasures_from_rows,
)
from eventpipe.core.storage.rows import EventRow, event_id_claim_row, event_to_row
from eventpipe.core.storage.tables import (
    ENRICHED_EVENTS_TABLE,
    ENTITY_METRICS_TABLE,
    ENTITY_PROFILES_TABLE,
    ERASURE_AUDIT_TABLE,
    ERASURES_TABLE,
    EVENT_IDS_TABLE,
    META_FAMILY,
    RAW_EVENTS_TABLE,
)
from eventpipe.core.waiting import wait_until
from store.consumer import metrics
from store.erasure import EntityEraser
from store.ports import RowFailure

from tests.unit.store.fakes import FakeMessage, FakeTable
from tests.unit.store.test_batch import DAY, NOW, event, message
from tests.unit.store.test_daemon import Harness


class Changes:
    def __init__(self, unconfirmed: int = 0) -> None:
        self.published: list[EntityChange] = []
        self.unconfirmed = unconfirmed

    def publish(self, changes: Sequence[EntityChange], timeout: float = 10.0) -> int:
        self.published += changes
        return self.unconfirmed


def eraser(table: FakeTable, changes: Changes | None = None, now: int = NOW) -> EntityEraser:
    return EntityEraser(
        table,
        table,
        table,
        changes or Changes(),
        PageTokenCodec(b"k" * 32, "test/ListEntityErasures"),
        retry_delay=0,
        clock=lambda: now / 1e6,
    )


def stored_event(table: FakeTable, index: int, entity: str, event_micros: int = NOW) -> bytes:
    """Writes a raw event, its claim, its enriched twin and a metric bucket; returns its key."""
    e = event(index, event_micros)
    e.entity_id = entity
    row = event_to_row(e)
    table.write_rows(RAW_EVENTS_TABLE, [row])
    table.write_rows(EVENT_IDS_TABLE, [event_id_claim_row(row, f"raw/0/{index}")])
    table.write_rows(ENRICHED_EVENTS_TABLE, [row])
    metric = keys.row_key_for_metric("acme", entity, "h", index * 3_600_000_000)
    table.write_rows(ENTITY_METRICS_TABLE, [EventRow(metric, dict(row.cells), event_micros)])
    profile = keys.row_key_for_profile("acme", entity)
    table.write_rows(ENTITY_PROFILES_TABLE, [EventRow(profile, dict(row.cells), event_micros)])
    return row.key


def test_erasing_deletes_the_entitys_rows_in_every_table_and_nothing_of_a_longer_id() -> None:
    table = FakeTable()
    for i in range(3):
        stored_event(table, i, "u1", NOW - i * 1000)
    kept = stored_event(table, 9, "u10")
    changes = Changes()

    record = eraser(table, changes).erase("acme", "u1", "alice")

    assert record.deleted_rows == {
        RAW_EVENTS_TABLE: 3,
        EVENT_IDS_TABLE: 3,
        ENRICHED_EVENTS_TABLE: 3,
        ENTITY_METRICS_TABLE: 3,
        ENTITY_PROFILES_TABLE: 1,
    }
    assert list(table.tables[RAW_EVENTS_TABLE]) == [kept]
    assert list(table.tables[ENRICHED_EVENTS_TABLE]) == [kept]
    assert len(table.tables[EVENT_IDS_TABLE]) == 1
    assert len(table.tables[ENTITY_METRICS_TABLE]) == 1
    assert list(table.tables[ENTITY_PROFILES_TABLE]) == [keys.row_key_for_profile("acme", "u10")]
    assert list(table.tables[ERASURES_TABLE]) == [keys.row_key_for_erasure("acme", "u1")]
    assert [(c.tenant_id, c.entity_id) for c in changes.published] == [("acme", "u1")]
    assert (record.subject, record.erased_micros) == ("alice", NOW)


def test_a_claim_that_names_another_entitys_row_is_kept() -> None:
    table = FakeTable()
    stored_event(table, 1, "u1")
    other = event(1)
    other.entity_id = "u2"
    claim = event_id_claim_row(event_to_row(other), "raw/3/7")  # u2's copy claimed e1 first
    table.write_rows(EVENT_IDS_TABLE, [claim])

    record = eraser(table).erase("acme", "u1", None)

    assert record.deleted_rows[EVENT_IDS_TABLE] == 0
    assert list(table.tables[EVENT_IDS_TABLE]) == [claim.key]
    assert record.subject == "anonymous"


def test_an_unconfirmed_entity_change_is_unavailable_and_erasing_again_completes() -> None:
    table = FakeTable()
    stored_event(table, 1, "u1")
    with pytest.raises(Unavailable, match="idempotent"):
        eraser(table, Changes(unconfirmed=1)).erase("acme", "u1", "alice")
    assert not table.tables[RAW_EVENTS_TABLE]
    again = eraser(table, now=NOW + 5).erase("acme", "u1", "alice")
    assert again.deleted_rows[RAW_EVENTS_TABLE] == 0
    records, _ = eraser(table).records("acme", 0, "")
    assert [r.erased_micros for r in records] == [NOW + 5, NOW]


def test_erasure_records_page_newest_first_and_stay_in_their_tenant() -> None:
    table = FakeTable()
    for n in range(5):
        eraser(table, now=NOW + n).erase("acme", f"u{n}", "alice")
    eraser(table).erase("other", "u9", "bob")
    first, token = eraser(table).records("acme", 2, "")
    second, token2 = eraser(table).records("acme", 2, token)
    third, token3 = eraser(table).records("acme", 2, token2)
    assert [r.entity_id for r in first + second + third] == ["u4", "u3", "u2", "u1", "u0"]
    assert token3 == ""
    with pytest.raises(InvalidArgument):
        eraser(table).records("other", 2, token)
    assert len(table.tables[ERASURE_AUDIT_TABLE]) == 6


def test_bad_ids_are_refused_with_each_field_named() -> None:
    with pytest.raises(InvalidArgument) as refused:
        eraser(FakeTable()).erase("bad tenant", "", "alice")
    assert {v.field for v in refused.value.violations} == {"tenant_id", "entity_id"}


def test_an_unreadable_tombstone_counts_as_erased_forever() -> None:
    wanted = erasure_keys([("acme", "u1")])
    key = next(iter(wanted))
    erased = erasures_from_rows([(key, {(META_FAMILY, ERASED_AT_QUALIFIER): b"\x01"})], wanted)
    assert erased[("acme", "u1")] == keys.REVERSED_TIME_MAX


# ---------------------------------------------------------------- the consumer


def erased_harness(messages: list[FakeMessage], erased_micros: int) -> Harness:
    harness = Harness(0)
    harness.consumer.queue = messages
    harness.table.write_rows(ERASURES_TABLE, [erasure_row("acme", "u1", erased_micros)])
    return harness


def test_the_consumer_drops_events_at_or_before_the_erasure_and_keeps_later_ones() -> None:
    before, at, after = event(1, NOW - DAY), event(2, NOW - 1000), event(3, NOW)
    other = event(4, NOW - DAY)
    other.entity_id = "u2"
    harness = erased_harness(
        [message(e, offset=i) for i, e in enumerate([before, at, after, other])], NOW - 1000
    )
    dropped = metrics.ERASED._value.get()
    harness.start()
    try:
        wait_until(lambda: harness.committed() == 4, timeout=5, what="commits")
    finally:
        harness.stop()
    assert harness.stored() == {event_to_row(e).key for e in (after, other)}
    assert metrics.ERASED._value.get() - dropped == 2
    assert harness.daemon.status().rows_written == 2
    assert len(harness.table.tables[EVENT_IDS_TABLE]) == 2  # no claim for dropped events


def test_a_tombstone_written_while_a_batch_is_written_makes_the_consumer_delete_its_rows() -> None:
    """DeleteEntity between the consumer's check and its write: the check after the write
    sees the tombstone (written before DeleteEntity's own deletion pass) and deletes."""
    events = [event(i, NOW - i * 1000) for i in range(3)]
    harness = Harness(0)
    harness.consumer.queue = [message(e, offset=i) for i, e in enumerate(events)]
    table = harness.table
    original = table.write_rows

    def write_then_erase(
        name: str, rows: Sequence[EventRow], *, replace: bool = False
    ) -> list[RowFailure]:
        failures = original(name, rows, replace=replace)
        writes_events = name == RAW_EVENTS_TABLE and rows and rows[0].cells
        if writes_events and ERASURES_TABLE not in table.tables:
            original(ERASURES_TABLE, [erasure_row("acme", "u1", NOW)])
        return failures

    table.write_rows = write_then_erase  # type: ignore[method-assign]
    harness.start()
    try:
        wait_until(lambda: harness.committed() == 3, timeout=5, what="commits")
    finally:
        harness.stop()
    assert harness.stored() == set()
    assert not table.tables[EVENT_IDS_TABLE]
    assert harness.daemon.status().rows_written == 0
