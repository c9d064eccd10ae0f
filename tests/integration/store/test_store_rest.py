"""The store's deletions over REST through the session's real Envoy (transcoded to gRPC)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
from eventpipe.core.config import CommonSettings
from eventpipe.core.waiting import wait_until
from eventpipe.stack.components import Envoy, GrpcService
from eventpipe.store.v1 import store_pb2_grpc

from tests.conftest import Isolation
from tests.helpers.http import Reply, http, json_body
from tests.integration.store.conftest import (
    FAST_STORE_ENV,
    consumer_status,
    make_event,
    produce_events,
)


def call(envoy: Envoy, method: str, path: str, body: Any = None) -> Reply:
    data, headers = json_body(body)
    return http(f"{envoy.base_url}{path}", method=method, body=data, headers=headers, timeout=30)


def test_deleting_a_record_and_an_entity_over_rest_answers_json_and_takes_effect(
    start_service: Callable[..., GrpcService],
    upstream_ports: dict[str, int],
    envoy_proxy: Envoy,
    common_settings: CommonSettings,
    isolation: Isolation,
) -> None:
    store = start_service("store", port=upstream_ports["store"], env=FAST_STORE_ENV, timeout=90)
    tenant = isolation.tenant_id
    base = f"/v1/tenants/{tenant}"

    upsert = call(
        envoy_proxy,
        "POST",
        f"{base}/dimensions/users:batchUpsert",
        {"records": [{"key": "u1", "valid_from": "2024-01-01T00:00:00Z", "attributes": {}}]},
    )
    assert upsert.status == 200, upsert.text
    deleted = call(
        envoy_proxy, "DELETE", f"{base}/dimensions/users/records/u1?valid_from=2024-06-01T00:00:00Z"
    )
    assert deleted.status == 200, deleted.text
    assert deleted.json() == {"valid_from": "2024-06-01T00:00:00Z"}
    before = call(
        envoy_proxy, "GET", f"{base}/dimensions/users/records/u1?as_of_time=2024-05-31T00:00:00Z"
    )
    assert before.status == 200 and before.json()["record"]["key"] == "u1"
    after = call(
        envoy_proxy, "GET", f"{base}/dimensions/users/records/u1?as_of_time=2024-06-01T00:00:00Z"
    )
    assert after.status == 404, after.text
    assert "deleted" in json.dumps(after.json())

    events = [make_event(tenant, i, entity_count=1) for i in range(3)]
    produced = produce_events(common_settings, events)
    with grpc.insecure_channel(store.address) as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        wait_until(
            lambda: consumer_status(stub).rows_written == produced, timeout=60, what="stored"
        )
    erased = call(envoy_proxy, "DELETE", f"{base}/entities/user-0")
    assert erased.status == 200, erased.text
    erasure = erased.json()["erasure"]
    assert erasure["entity_id"] == "user-0"
    assert erasure["deleted_rows"]["events"] == "3"  # int64 is a JSON string
    listed = call(envoy_proxy, "GET", f"{base}/erasures")
    assert listed.status == 200, listed.text
    assert [r["entity_id"] for r in listed.json()["erasures"]] == ["user-0"]
    raw = call(envoy_proxy, "GET", f"{base}/entities/user-0/rawEvents")
    assert raw.status == 200 and raw.json().get("events", []) == []

    refused = call(envoy_proxy, "DELETE", f"{base}/entities/bad%20id")
    assert refused.status == 400, refused.text
    assert "entity_id" in refused.text
