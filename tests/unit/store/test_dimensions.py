"""Dimension records: validation, duplicates, partial success, as-of reads (fake Bigtable)."""

from __future__ import annotations

import pytest
from eventpipe.common.v1 import event_pb2, results_pb2
from eventpipe.core.errors import InvalidArgument, NotFound, Unavailable
from eventpipe.core.results import ItemStatus
from eventpipe.core.storage.rows import dimension_record_to_row
from eventpipe.store.v1 import store_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2
from store.dimensions import DimensionRecordInput, DimensionStore
from store.servicer import StoreServicer

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


def test_a_record_bigtable_refuses_for_good_is_rejected_with_the_reason_and_no_violation(
    store: DimensionStore, table: FakeTable
) -> None:
    refused = record("v", 0)
    key = dimension_record_to_row("t", "users", "v", 0, refused.attributes).key
    table.fail_keys[key] = "INVALID_ARGUMENT"
    outcomes = store.upsert("t", "users", [record("u", 0), refused])
    assert [(o.status, o.code) for o in outcomes] == [
        (ItemStatus.ACCEPTED, ""),
        (ItemStatus.REJECTED, "INTERNAL"),
    ]
    assert (outcomes[1].violations, outcomes[1].message) == (
        (),
        "not written: INVALID_ARGUMENT: refused",
    )


def test_the_servicer_answers_each_record_with_a_typed_code_and_a_message(
    store: DimensionStore,
) -> None:
    servicer = StoreServicer(store, None, lambda: None)  # type: ignore[arg-type]
    request = store_pb2.UpsertDimensionRecordsRequest(tenant_id="t", dimension="users")
    request.records.add(key="u", valid_from=Timestamp(seconds=0))
    request.records.add(key="", valid_from=Timestamp(seconds=0))
    request.records.add(key="u", valid_from=Timestamp(seconds=0))
    response = servicer.UpsertDimensionRecords(request, None)  # type: ignore[arg-type]
    assert [(r.status, r.code) for r in response.results] == [
        (results_pb2.ITEM_STATUS_ACCEPTED, code_pb2.OK),
        (results_pb2.ITEM_STATUS_REJECTED, code_pb2.INVALID_ARGUMENT),
        (results_pb2.ITEM_STATUS_DUPLICATE, code_pb2.OK),
    ]
    rejected = response.results[1]
    assert [v.field for v in rejected.violations] == ["records[1].key"]
    assert rejected.message == f"records[1].key: {rejected.violations[0].description}"
    assert (response.summary.accepted_count, response.summary.rejected_count) == (1, 1)


def test_a_deleted_record_has_no_version_from_its_tombstone_on_and_the_old_one_before(
    store: DimensionStore,
) -> None:
    store.upsert("t", "users", [record("u", 0, "a"), record("u", 20 * DAY, "c")])
    assert store.delete("t", "users", "u", 10 * DAY) == 10 * DAY
    assert store.get("t", "users", "u", 10 * DAY - 1).attributes["tier"].string_value == "a"
    with pytest.raises(NotFound, match="deleted"):
        store.get("t", "users", "u", 10 * DAY)
    with pytest.raises(NotFound):
        store.get("t", "users", "u", 15 * DAY)
    # A later version brings the record back from its valid_from on.
    assert store.get("t", "users", "u", 20 * DAY).attributes["tier"].string_value == "c"


def test_deleting_without_a_valid_from_deletes_from_now_on(table: FakeTable) -> None:
    store = DimensionStore(table, table, retry_delay=0, clock=lambda: 30 * DAY / 1e6)
    store.upsert("t", "users", [record("u", 0)])
    assert store.delete("t", "users", "u", None) == 30 * DAY
    with pytest.raises(NotFound):
        store.get("t", "users", "u", None)
    assert store.get("t", "users", "u", 30 * DAY - 1).valid_from_micros == 0


def test_a_deletion_with_bad_names_or_time_is_refused_with_each_field(
    store: DimensionStore,
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        store.delete("bad tenant", "Users", "", -1)
    fields = {v.field for v in refused.value.violations}
    assert fields == {"tenant_id", "dimension", "key", "valid_from"}


def test_a_deletion_bigtable_cannot_take_is_unavailable(
    store: DimensionStore, table: FakeTable
) -> None:
    table.fail_next = ["UNAVAILABLE"] * 3
    with pytest.raises(Unavailable):
        store.delete("t", "users", "u", DAY)


def test_the_servicer_answers_a_deletion_with_the_tombstones_valid_from(
    store: DimensionStore,
) -> None:
    servicer = StoreServicer(store, None, lambda: None)  # type: ignore[arg-type]
    request = store_pb2.DeleteDimensionRecordRequest(
        tenant_id="t", dimension="users", key="u", valid_from=Timestamp(seconds=86_400)
    )
    response = servicer.DeleteDimensionRecord(request, None)  # type: ignore[arg-type]
    assert response.valid_from == Timestamp(seconds=86_400)
    with pytest.raises(NotFound):
        store.get("t", "users", "u", DAY)
