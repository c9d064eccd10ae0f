"""The idempotency key (tenant_id, event_id): one stored row per event id, crash-safe."""

from __future__ import annotations

from eventpipe.core.storage.rows import EventRow, event_id_claim_row, event_to_row
from eventpipe.core.storage.tables import EVENT_IDS_TABLE, RAW_EVENTS_TABLE
from store.consumer.idempotency import store_once
from store.ports import StoredRow

from tests.unit.store.fakes import FakeTable
from tests.unit.store.test_batch import DAY, NOW, event


class FailingReads(FakeTable):
    def read_keys(self, table: str, keys: object) -> list[StoredRow]:  # type: ignore[override]
        raise ConnectionError("bigtable down")


def row(index: int = 0, event_micros: int = NOW, entity: str = "u1") -> EventRow:
    e = event(index, event_micros)
    e.entity_id = entity
    return event_to_row(e)


def test_a_re_sent_event_id_with_another_event_time_is_dropped_as_a_duplicate() -> None:
    table = FakeTable()
    first = store_once(table, table, [row()], ["raw/0/1"])
    again = store_once(table, table, [row(event_micros=NOW - DAY)], ["raw/0/9"])
    assert not first.failures and not first.duplicates
    assert again.duplicates == [0] and not again.failures
    assert list(table.tables[RAW_EVENTS_TABLE]) == [row().key]


def test_the_same_event_id_for_another_entity_is_a_duplicate_too() -> None:
    table = FakeTable()
    store_once(table, table, [row(entity="u1")], ["raw/0/1"])
    assert store_once(table, table, [row(entity="u2")], ["raw/3/1"]).duplicates == [0]
    assert list(table.tables[RAW_EVENTS_TABLE]) == [row(entity="u1").key]


def test_within_one_batch_the_first_copy_wins() -> None:
    table = FakeTable()
    outcome = store_once(
        table, table, [row(event_micros=NOW - 5), row(), row(1)], ["raw/0/1", "raw/0/2", "raw/0/3"]
    )
    assert outcome.duplicates == [1]
    assert set(table.tables[RAW_EVENTS_TABLE]) == {row(event_micros=NOW - 5).key, row(1).key}


def test_a_replay_of_the_claiming_message_writes_its_row_again() -> None:
    table = FakeTable()
    # A crash after the claim and before the row: only the claim is stored.
    table.write_rows(EVENT_IDS_TABLE, [event_id_claim_row(row(), "raw/0/1")])
    replay = store_once(table, table, [row()], ["raw/0/1"])
    assert not replay.duplicates and not replay.failures
    assert list(table.tables[RAW_EVENTS_TABLE]) == [row().key]


def test_a_row_whose_claim_failed_is_not_written_and_is_reported_failed() -> None:
    table = FakeTable()
    table.fail_next = ["UNAVAILABLE"]  # the claim write
    outcome = store_once(table, table, [row()], ["raw/0/1"])
    assert [(f.index, f.code) for f in outcome.failures] == [(0, "UNAVAILABLE")]
    assert not table.tables.get(RAW_EVENTS_TABLE)
    retried = store_once(table, table, [row()], ["raw/0/1"])
    assert not retried.failures and list(table.tables[RAW_EVENTS_TABLE]) == [row().key]


def test_an_unreadable_index_fails_every_row_retryably_and_writes_nothing() -> None:
    table = FailingReads()
    outcome = store_once(table, table, [row(), row(1)], ["raw/0/1", "raw/0/2"])
    assert [f.index for f in outcome.failures] == [0, 1]
    assert all(f.retryable for f in outcome.failures)
    assert not table.tables
