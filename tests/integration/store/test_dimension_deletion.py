"""DeleteDimensionRecord on the real emulator, checked against an independent as-of model:
a plain list of versions and tombstones, searched by hand, sharing no code with the store."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import grpc
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.store.v1 import store_pb2

from tests.conftest import Isolation

DAY = 86_400_000_000
T0 = 1_700_000_000_000_000


@dataclass(frozen=True)
class Version:
    key: str
    valid_from: int
    tier: str | None  # None: a tombstone


def expected_as_of(versions: list[Version], key: str, as_of: int | None) -> str | None:
    """The tier valid at ``as_of`` (the latest version when None); None when there is no
    version then or the one there is a deletion."""
    candidates = [v for v in versions if v.key == key and (as_of is None or v.valid_from <= as_of)]
    if not candidates:
        return None
    return max(candidates, key=lambda v: v.valid_from).tier


def generate(seed: int) -> list[Version]:
    rng = random.Random(seed)
    versions = []
    for n in range(6):
        days = rng.sample(range(0, 60), rng.randint(2, 6))
        for position, day in enumerate(sorted(days)):
            # Roughly one in three versions after the first is a deletion; a record may be
            # deleted and come back, or end deleted.
            deleted = position > 0 and rng.random() < 0.35
            tier = None if deleted else f"tier-{n}-{day}"
            versions.append(Version(f"k{n}", T0 + day * DAY, tier))
    return versions


def answer(stub: Any, tenant: str, key: str, as_of: int | None) -> str | None:
    request = store_pb2.GetDimensionRecordRequest(tenant_id=tenant, dimension="users", key=key)
    if as_of is not None:
        request.as_of_time.CopyFrom(timestamp_from_micros(as_of))
    try:
        record = stub.GetDimensionRecord(request, timeout=10).record
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        return None
    return record.attributes["tier"].string_value


def test_reads_as_of_any_time_match_an_independent_model_of_versions_and_tombstones(
    store_stub: Any, isolation: Isolation
) -> None:
    tenant = isolation.tenant_id
    versions = generate(seed=18)
    assert any(v.tier is None for v in versions) and any(v.tier for v in versions)
    upserts = [v for v in versions if v.tier is not None]
    request = store_pb2.UpsertDimensionRecordsRequest(tenant_id=tenant, dimension="users")
    for version in upserts:
        record = request.records.add(key=version.key)
        record.valid_from.CopyFrom(timestamp_from_micros(version.valid_from))
        record.attributes["tier"].string_value = version.tier or ""
    assert store_stub.UpsertDimensionRecords(request, timeout=10).summary.accepted_count == len(
        upserts
    )
    for version in versions:
        if version.tier is None:
            response = store_stub.DeleteDimensionRecord(
                store_pb2.DeleteDimensionRecordRequest(
                    tenant_id=tenant,
                    dimension="users",
                    key=version.key,
                    valid_from=timestamp_from_micros(version.valid_from),
                ),
                timeout=10,
            )
            assert response.valid_from == timestamp_from_micros(version.valid_from)

    rng = random.Random(7)
    checked = 0
    for key in [*sorted({v.key for v in versions}), "never-stored"]:
        times: list[int | None] = [None, T0 - 1, T0 + 61 * DAY]
        for version in versions:
            if version.key == key:
                times += [version.valid_from - 1, version.valid_from, version.valid_from + 1]
        times += [T0 + rng.randrange(0, 61 * DAY) for _ in range(5)]
        for as_of in times:
            assert answer(store_stub, tenant, key, as_of) == expected_as_of(versions, key, as_of), (
                key,
                as_of,
            )
            checked += 1
    assert checked > 100


def test_a_deletion_without_valid_from_takes_effect_now_and_leaves_the_past_readable(
    store_stub: Any, isolation: Isolation
) -> None:
    tenant = isolation.tenant_id
    request = store_pb2.UpsertDimensionRecordsRequest(tenant_id=tenant, dimension="users")
    record = request.records.add(key="u1")
    record.valid_from.CopyFrom(timestamp_from_micros(T0))
    record.attributes["tier"].string_value = "gold"
    store_stub.UpsertDimensionRecords(request, timeout=10)

    response = store_stub.DeleteDimensionRecord(
        store_pb2.DeleteDimensionRecordRequest(tenant_id=tenant, dimension="users", key="u1"),
        timeout=10,
    )
    deleted_at = response.valid_from.seconds * 1_000_000 + response.valid_from.nanos // 1000
    assert deleted_at > T0
    assert answer(store_stub, tenant, "u1", None) is None
    assert answer(store_stub, tenant, "u1", deleted_at) is None
    assert answer(store_stub, tenant, "u1", deleted_at - 1) == "gold"
