"""Pipeline data for the cluster tier: one small commerce dataset loaded the same way for any
tenant through Envoy (dimensions, spec, events), batch and scheduled jobs run over gRPC, and
every view a job wrote read back with the tenant's name taken out, so that two tenants' results
compare."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from eventpipe.core.waiting import wait_until
from eventpipe.enrich.v1 import enrich_pb2, enrich_pb2_grpc
from eventpipe.stack.stack import Stack
from google.protobuf import json_format

from tests.helpers.http import http, json_body

NOW = datetime.now(UTC).replace(microsecond=0)
USERS = [f"user-{k}" for k in range(6)]
SKUS = ["p1", "p2", "p3"]


def at(minutes_ago: int) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")


def rest(stack: Stack, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data, _ = json_body(body)
    headers = {"content-type": "application/json"}
    reply = http(stack.envoy.base_url + path, method=method, body=data, headers=headers, timeout=60)
    return reply.status, json.loads(reply.body or b"{}")


def load_dataset(stack: Stack, tenant: str) -> None:
    base = f"/v1/tenants/{tenant}"
    records = [
        {"key": sku, "valid_from": at(600), "attributes": {"price": {"double_value": 10 + k}}}
        for k, sku in enumerate(SKUS)
    ] + [{"key": "p1", "valid_from": at(120), "attributes": {"price": {"double_value": 15}}}]
    status, body = rest(
        stack, "POST", f"{base}/dimensions/products:batchUpsert", {"records": records}
    )
    assert status == 200, body
    spec = {
        "joins": [{"dimension": "products", "key_field": "attributes.sku", "fields": ["price"]}],
        "derived_fields": [{"name": "revenue", "expression": "quantity * products.price"}],
        "metric_fields": ["revenue"],
    }
    status, body = rest(stack, "PUT", f"{base}/enrichmentSpec", spec)
    assert status == 200, body
    events = [
        {
            "event_id": f"e-{i:03d}",
            "event_type": "purchase",
            "entity_id": USERS[i % len(USERS)],
            "event_time": at(300 - i * 2),
            "attributes": {
                "sku": {"string_value": [*SKUS, "p9"][i % 4]},
                "quantity": {"int_value": str(1 + i % 3)},
            },
        }
        for i in range(120)
    ]
    status, body = rest(stack, "POST", f"{base}/events:batch", {"events": events})
    assert status == 200 and body["summary"]["accepted_count"] == len(events), body

    def stored() -> bool:
        total = 0
        for user in USERS:
            _, page = rest(
                stack, "GET", f"{base}/entities/{user}/events?view=EVENT_VIEW_RAW&page_size=100"
            )
            total += len(page.get("events", []))
        return total == len(events)

    wait_until(stored, timeout=180, what="the store to persist the events", interval=1)


def run_batch_job(address: str, tenant: str) -> dict[str, Any]:
    with grpc.insecure_channel(address) as channel:
        stub = enrich_pb2_grpc.EnrichServiceStub(channel)
        job = json_format.ParseDict(
            {"mode": "JOB_MODE_BATCH", "time_range": {"start_time": at(720)}},
            enrich_pb2.EnrichmentJob(),
        )
        created = stub.CreateEnrichmentJob(
            enrich_pb2.CreateEnrichmentJobRequest(tenant_id=tenant, job=job), timeout=60
        )
        final: dict[str, Any] = {}

        def finished() -> bool:
            got = stub.GetEnrichmentJob(
                enrich_pb2.GetEnrichmentJobRequest(tenant_id=tenant, job_id=created.job.job_id),
                timeout=30,
            )
            final.clear()
            final.update(json_format.MessageToDict(got.job))
            return final["state"] in {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"}

        wait_until(finished, timeout=600, interval=1.0, what=f"{tenant}'s batch job to finish")
    return final


# When a thing was done, not what was computed: ingest stamps ingest_time as each tenant's
# events arrive, enrichment stamps a profile's update_time as it writes it.
PROCESSING_TIMES = {"ingest_time", "update_time"}


def _without_processing_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _without_processing_times(item)
            for key, item in value.items()
            if key not in PROCESSING_TIMES
        }
    if isinstance(value, list):
        return [_without_processing_times(item) for item in value]
    return value


def job_output(stack: Stack, tenant: str) -> dict[str, Any]:
    """Every view the job wrote, with the tenant's name and the processing times taken out, so
    two tenants' results compare."""
    views: dict[str, Any] = {}
    for user in USERS:
        base = f"/v1/tenants/{tenant}/entities/{user}"
        end = (NOW + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        for name, path in (
            ("profile", base),
            ("events", f"{base}/events?page_size=100"),
            (
                "metrics",
                f"{base}/metrics?time_range.start_time={at(720)}"
                f"&time_range.end_time={end}&granularity=GRANULARITY_HOUR",
            ),
        ):
            status, body = rest(stack, "GET", path)
            assert status == 200, (path, body)
            body.pop("next_page_token", None)
            named = json.loads(json.dumps(body).replace(tenant, "<tenant>"))
            views[f"{user}/{name}"] = _without_processing_times(named)
    return views
