"""Dimension records: validation, duplicates, partial success, as-of reads (fake Bigtable)."""

from __future__ import annotations

import pytest
from eventpipe.common.v1 import event_pb2
from eventpipe.core.errors import InvalidArgument, NotFound, Unavailable
from store.dimensions import DimensionRecordInput, DimensionStore, ItemStatus

from tests.unit.store.fakes import FakeTable

DAY = 86_400_000_000


def record(key: str, valid_from: int | None, tier: str = "a") -> DimensionRecordInput:
    return DimensionRecordInput(
        key, valid_from, {"tier": event_pb2.AttributeValue(string_value=tier)}
    )


@pytest.fixture
def table() -> FakeTable:
    return FakeTable()


@pytest.fixture
def store(table: FakeTable) -> DimensionStore:
    return DimensionStore(table, table, retry_delay=0)


def test_the_version_valid_at_a_time_is_returned(store: DimensionStore) -> None:
    store.upsert("t", "users", [record("u", 0, "a"), record("u", 10 * DAY, "b")])
    assert store.get("t", "users", "u", 5 * DAY).attributes["tier"].string_value == "a"
    assert store.get("t", "users", "u", 10 * DAY).attributes["tier"].string_value == "b"
    assert store.get("t", "users", "u", None).valid_from_micros == 10 * DAY


def test_no_version_before_the_first_valid_from_is_not_found(store: DimensionStore) -> None:
    store.upsert("t", "users", [record("u", DAY)])
    with pytest.raises(NotFound):
        store.get("t", "users", "u", DAY - 1)
    with pytest.raises(NotFound):
        store.get("t", "users", "u-other", None)


def test_each_bad_record_is_rejected_with_its_fields_and_a_repeat_is_a_duplicate(
    store: DimensionStore,
) -> None:
    outcomes = store.upsert(
        "t", "users", [record("u", 0), record("", 0), record("v", None), record("u", 0)]
    )
    assert [o.status for o in outcomes] == [
        ItemStatus.ACCEPTED,
        ItemStatus.REJECTED,
        ItemStatus.REJECTED,
        ItemStatus.DUPLICATE,
    ]
    assert [v.field for v in outcomes[1].violations] == ["records[1].key"]
    assert [v.field for v in outcomes[2].violations] == ["records[2].valid_from"]


def test_a_bad_tenant_dimension_or_batch_size_refuses_the_request(store: DimensionStore) -> None:
    with pytest.raises(InvalidArgument) as refused:
        store.upsert("bad tenant", "Users", [])
    fields = {v.field for v in refused.value.violations}
    assert fields == {"tenant_id", "dimension", "records"}


def test_bigtable_down_for_every_record_is_unavailable_not_a_false_ack(
    store: DimensionStore, table: FakeTable
) -> None:
    table.fail_next = ["UNAVAILABLE"] * 3
    with pytest.raises(Unavailable):
        store.upsert("t", "users", [record("u", 0)])


def test_a_transient_failure_is_retried_and_then_accepted(
    store: DimensionStore, table: FakeTable
) -> None:
    table.fail_next = ["UNAVAILABLE"]
    outcomes = store.upsert("t", "users", [record("u", 0)])
    assert outcomes[0].status is ItemStatus.ACCEPTED
