"""Every key, key range and key parser of the storage package."""

from __future__ import annotations

import pytest
from eventpipe.core.storage import keys
from eventpipe.core.storage.granularity import Granularity


def _inside(key: bytes, key_range: keys.KeyRange) -> bool:
    start, end = key_range
    return start <= key and (not end or key < end)


def test_every_event_key_of_a_tenant_lies_in_exactly_one_of_its_salt_ranges() -> None:
    ranges = keys.tenant_event_ranges("acme")
    assert len(ranges) == keys.SALT_BUCKETS
    for index in range(200):
        key = keys.row_key_for_event("acme", f"user-{index}", 1_700_000_000_000_000, "e1")
        assert sum(_inside(key, key_range) for key_range in ranges) == 1


def test_the_salt_ranges_of_a_tenant_hold_no_key_of_a_tenant_with_a_longer_id() -> None:
    ranges = keys.tenant_event_ranges("acme")
    for index in range(200):
        key = keys.row_key_for_event("acme2", f"user-{index}", 1_700_000_000_000_000, "e1")
        assert not any(_inside(key, key_range) for key_range in ranges)


def test_a_dimension_key_parses_back_to_its_record_key_and_valid_from() -> None:
    row_key = keys.row_key_for_dimension("acme", "products", "sku-1", 1_700_000_000_000_000)
    assert _inside(row_key, keys.prefix_range(keys.dimension_records_prefix("acme", "products")))
    assert keys.parse_dimension_key("acme", "products", row_key) == (
        "sku-1",
        1_700_000_000_000_000,
    )
    assert keys.valid_from_of_dimension_key(row_key) == 1_700_000_000_000_000


def test_a_dimension_key_of_another_dimension_is_refused_by_the_parser() -> None:
    row_key = keys.row_key_for_dimension("acme", "stores", "s-1", 5)
    try:
        keys.parse_dimension_key("acme", "products", row_key)
    except ValueError:
        return
    raise AssertionError("a foreign key was parsed")


def test_the_day_bucket_range_holds_the_day_buckets_of_the_entity_and_no_hour_bucket() -> None:
    day_range = keys.metric_buckets_range("acme", "user-1", Granularity.DAY)
    day = keys.row_key_for_metric("acme", "user-1", Granularity.DAY, 86_400_000_000)
    hour = keys.row_key_for_metric("acme", "user-1", Granularity.HOUR, 86_400_000_000)
    other = keys.row_key_for_metric("acme", "user-10", Granularity.DAY, 86_400_000_000)
    assert _inside(day, day_range)
    assert not _inside(hour, day_range)
    assert not _inside(other, day_range)


def test_a_metric_key_gives_back_its_bucket_start_and_its_entitys_profile_key() -> None:
    key = keys.row_key_for_metric("acme", "user-1", "d", 172_800_000_000)
    assert keys.bucket_start_of_metric_key(key) == 172_800_000_000
    assert keys.profile_key_of_metric_key(key) == keys.row_key_for_profile("acme", "user-1")


def test_a_metric_key_takes_the_granularity_letter_or_the_type_alike() -> None:
    assert keys.row_key_for_metric("acme", "u", "h", 0) == keys.row_key_for_metric(
        "acme", "u", Granularity.HOUR, 0
    )


def test_spec_versions_sort_newest_first_within_the_tenant() -> None:
    versions = [1, 10, 2]
    ordered = sorted(versions, key=lambda v: keys.row_key_for_spec("acme", v))
    assert ordered == [10, 2, 1]
    tenant = keys.prefix_range(keys.tenant_prefix("acme"))
    assert _inside(keys.row_key_for_spec("acme", 3), tenant)
    assert not _inside(keys.row_key_for_spec("acme2", 3), tenant)


def test_job_ids_sort_newest_first_and_their_keys_stay_inside_the_tenant() -> None:
    older = keys.job_id_for(1_000, "aaaaaa")
    newer = keys.job_id_for(2_000, "aaaaaa")
    assert newer < older
    tenant = keys.prefix_range(keys.tenant_prefix("acme"))
    assert _inside(keys.row_key_for_job("acme", newer), tenant)
    assert not _inside(keys.row_key_for_job("acme2", newer), tenant)


def test_an_entity_key_suffix_rebuilds_its_key_and_refuses_another_entitys_key() -> None:
    key = keys.row_key_for_event("acme", "user-1", 1_700_000_000_000_000, "e1")
    suffix = keys.entity_key_suffix("acme", "user-1", key)
    assert keys.entity_row_key("acme", "user-1", suffix) == key
    try:
        keys.entity_key_suffix("acme", "user-10", key)
    except ValueError:
        return
    raise AssertionError("another entity's key was cut")


def test_an_entitys_rows_range_holds_its_events_and_buckets_but_no_longer_ids_or_profile() -> None:
    start, end = keys.entity_rows_range("acme", "user-1")
    assert start <= keys.row_key_for_event("acme", "user-1", 5, "e") < end
    assert start <= keys.row_key_for_metric("acme", "user-1", "d", 0) < end
    assert not start <= keys.row_key_for_event("acme", "user-10", 5, "e") < end
    assert not start <= keys.row_key_for_profile("acme", "user-1") < end


def test_erasure_audit_keys_list_a_tenants_erasures_newest_first_and_parse_back() -> None:
    older = keys.row_key_for_erasure_audit("acme", 1_000, "user-1")
    newer = keys.row_key_for_erasure_audit("acme", 2_000, "user-2")
    assert newer < older
    assert keys.parse_erasure_audit_key("acme", older) == (1_000, "user-1")
    with pytest.raises(ValueError):
        keys.parse_erasure_audit_key("acm", older)
