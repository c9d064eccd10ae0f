"""The whole pipeline through Envoy's REST front door: dimensions and events in, an enrichment
job run, enriched views out. Every hop is the real thing: Envoy, the four services, Kafka, the
Bigtable emulator and Spark."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eventpipe.core.waiting import wait_until
from eventpipe.stack.stack import Stack

from tests.conftest import Isolation
from tests.helpers.http import http, json_body

NOW = datetime.now(UTC).replace(microsecond=0)


def _at(minutes_ago: int) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")


def _rest(stack: Stack, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data, _ = json_body(body)
    headers = {"content-type": "application/json"}
    reply = http(stack.envoy.base_url + path, method=method, body=data, headers=headers, timeout=60)
    return reply.status, json.loads(reply.body or b"{}")


def _purchase(event_id: str, minutes_ago: int, sku: str, quantity: int) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": "purchase",
        "entity_id": "user-1",
        "event_time": _at(minutes_ago),
        "attributes": {"sku": {"string_value": sku}, "quantity": {"int_value": str(quantity)}},
    }


@pytest.fixture(scope="module")
def enriched_tenant(e2e_stack: Stack) -> str:
    """A tenant whose data went through ingest, store and one batch enrichment job."""
    tenant = Isolation.new().tenant_id
    base = f"/v1/tenants/{tenant}"
    status, body = _rest(
        e2e_stack,
        "POST",
        f"{base}/dimensions/products:batchUpsert",
        {
            "records": [
                {
                    "key": "p1",
                    "valid_from": _at(180),
                    "attributes": {"price": {"double_value": 10}},
                },
                {"key": "p1", "valid_from": _at(30), "attributes": {"price": {"double_value": 12}}},
            ]
        },
    )
    assert status == 200 and body["summary"]["accepted_count"] == 2, body

    status, body = _rest(
        e2e_stack,
        "PUT",
        f"{base}/enrichmentSpec",
        {
            "joins": [
                {"dimension": "products", "key_field": "attributes.sku", "fields": ["price"]}
            ],
            "derived_fields": [{"name": "revenue", "expression": "quantity * products.price"}],
            "metric_fields": ["revenue"],
        },
    )
    assert status == 200, body

    status, body = _rest(
        e2e_stack,
        "POST",
        f"{base}/events:batch",
        {
            "events": [
                _purchase("e-old", 60, "p1", 2),  # price 10 at that time -> revenue 20
                _purchase("e-unknown", 50, "p9", 5),  # no such product -> kept, unmatched
                _purchase("e-new", 10, "p1", 1),  # price 12 since 30 minutes ago -> 12
            ]
        },
    )
    assert status == 200 and body["summary"]["accepted_count"] == 3, body

    def stored() -> bool:
        _, page = _rest(e2e_stack, "GET", f"{base}/entities/user-1/events?view=EVENT_VIEW_RAW")
        return len(page.get("events", [])) == 3

    wait_until(stored, timeout=60, what="the store to persist the three events")

    status, body = _rest(
        e2e_stack,
        "POST",
        f"{base}/enrichmentJobs",
        {"mode": "JOB_MODE_BATCH", "time_range": {"start_time": _at(240)}},
    )
    assert status == 200, body
    job_id = body["job"]["job_id"]
    final: dict[str, Any] = {}

    def finished() -> bool:
        _, got = _rest(e2e_stack, "GET", f"{base}/enrichmentJobs/{job_id}")
        final.update(got["job"])
        return got["job"]["state"] in {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"}

    wait_until(finished, timeout=300, interval=1.0, what="the enrichment job to finish")
    assert final["state"] == "JOB_STATE_SUCCEEDED", final
    return tenant


def test_the_entity_profile_sums_derived_revenue_and_keeps_the_latest_dimension_value(
    e2e_stack: Stack, enriched_tenant: str
) -> None:
    status, body = _rest(e2e_stack, "GET", f"/v1/tenants/{enriched_tenant}/entities/user-1")
    assert status == 200, body
    profile = body["profile"]
    assert int(profile["event_count"]) == 3
    assert profile["totals"]["revenue"] == pytest.approx(32.0)
    assert profile["dimension_fields"]["products.price"] == {"double_value": 12.0}


def test_enriched_events_join_the_dimension_version_valid_at_event_time(
    e2e_stack: Stack, enriched_tenant: str
) -> None:
    status, body = _rest(e2e_stack, "GET", f"/v1/tenants/{enriched_tenant}/entities/user-1/events")
    assert status == 200, body
    events = {e["event"]["event_id"]: e for e in body["events"]}
    assert [e["event"]["event_id"] for e in body["events"]] == ["e-new", "e-unknown", "e-old"]
    assert events["e-old"]["enriched_fields"]["revenue"] == {"double_value": 20.0}
    assert events["e-new"]["enriched_fields"]["revenue"] == {"double_value": 12.0}
    assert events["e-unknown"]["unmatched_joins"] == ["products"]
    assert all(e["enriched"] for e in body["events"])


def test_another_tenant_sees_nothing_of_this_tenants_entity(
    e2e_stack: Stack, enriched_tenant: str
) -> None:
    status, _ = _rest(e2e_stack, "GET", "/v1/tenants/someone-else/entities/user-1")
    assert status == 404


def test_hourly_metrics_add_up_to_the_profile(e2e_stack: Stack, enriched_tenant: str) -> None:
    start, end = _at(300), (NOW + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    status, body = _rest(
        e2e_stack,
        "GET",
        f"/v1/tenants/{enriched_tenant}/entities/user-1/metrics"
        f"?time_range.start_time={start}&time_range.end_time={end}&granularity=GRANULARITY_HOUR",
    )
    assert status == 200, body
    purchases = sum(int(b["event_type_counts"].get("purchase", 0)) for b in body["buckets"])
    revenue = sum(
        m["sum"] for b in body["buckets"] for m in b.get("metrics", []) if m["field"] == "revenue"
    )
    assert purchases == 3
    assert revenue == pytest.approx(32.0)


def test_metrics_without_a_time_range_cover_the_last_24_hours(
    e2e_stack: Stack, enriched_tenant: str
) -> None:
    status, body = _rest(e2e_stack, "GET", f"/v1/tenants/{enriched_tenant}/entities/user-1/metrics")
    assert status == 200, body
    purchases = sum(int(b["event_type_counts"].get("purchase", 0)) for b in body["buckets"])
    assert purchases == 3  # all three happened within the last hour or so
