"""Every validation rule of event.proto and ingest.proto, through gRPC and through REST (Envoy).

gRPC answers INVALID_ARGUMENT with google.rpc.BadRequest naming the field; REST answers HTTP 400
with the same violations as JSON. The event_time bounds are configured narrower than the
defaults here, to show they are configurable.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from eventpipe.common.v1 import event_pb2, results_pb2
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.ingest.v1 import ingest_pb2
from google.protobuf import json_format
from google.rpc import code_pb2

from tests.helpers.rpc import field_violations
from tests.integration.ingest.conftest import IngestUnderTest
from tests.integration.ingest.events import now_micros, valid_event

MAX_FUTURE_SECONDS = 60
MAX_AGE_DAYS = 2
DAY_MICROS = 86_400 * 1_000_000


@pytest.fixture(scope="module")
def ingest_env() -> dict[str, str]:
    return {
        "EVENTPIPE_INGEST_EVENT_MAX_FUTURE_SECONDS": str(MAX_FUTURE_SECONDS),
        "EVENTPIPE_INGEST_EVENT_MAX_AGE_DAYS": str(MAX_AGE_DAYS),
    }


@dataclass(frozen=True)
class Rule:
    name: str
    breaks: Callable[[event_pb2.Event], None]
    field: str


def _set(field: str, value: object) -> Callable[[event_pb2.Event], None]:
    return lambda event: setattr(event, field, value)


def _time(offset_micros: int) -> Callable[[event_pb2.Event], None]:
    return lambda event: event.event_time.CopyFrom(
        timestamp_from_micros(now_micros() + offset_micros)
    )


def _attributes(count: int) -> Callable[[event_pb2.Event], None]:
    def breaks(event: event_pb2.Event) -> None:
        for i in range(count):
            event.attributes[f"a{i}"].int_value = i

    return breaks


def _attribute(
    key: str, kind: str | None, value: object = None
) -> Callable[[event_pb2.Event], None]:
    def breaks(event: event_pb2.Event) -> None:
        attribute = event.attributes[key]
        if kind is None:
            attribute.SetInParent()
        else:
            setattr(attribute, kind, value)

    return breaks


def _huge(event: event_pb2.Event) -> None:
    for i in range(10):  # each value within 4 KiB, the event beyond 32 KiB
        event.attributes[f"text{i}"].string_value = "x" * 4000


RULES = [
    Rule("event_id is required", _set("event_id", ""), "event_id"),
    Rule("event_id is at most 128 characters", _set("event_id", "e" * 129), "event_id"),
    Rule("event_id has allowed characters only", _set("event_id", "e 1/2"), "event_id"),
    Rule("entity_id is required", _set("entity_id", ""), "entity_id"),
    Rule("entity_id has allowed characters only", _set("entity_id", "user#1"), "entity_id"),
    Rule("entity_id is at most 128 characters", _set("entity_id", "u" * 129), "entity_id"),
    Rule("event_type is required", _set("event_type", ""), "event_type"),
    Rule("event_type starts with a letter", _set("event_type", "1view"), "event_type"),
    Rule("event_type is lower case", _set("event_type", "PageView"), "event_type"),
    Rule("event_type is at most 64 characters", _set("event_type", "v" * 65), "event_type"),
    Rule("event_time is required", lambda e: e.ClearField("event_time"), "event_time"),
    Rule(
        "event_time is not too far ahead",
        _time((MAX_FUTURE_SECONDS + 120) * 1_000_000),
        "event_time",
    ),
    Rule("event_time is within retention", _time(-(MAX_AGE_DAYS + 1) * DAY_MICROS), "event_time"),
    Rule("the event's tenant is the request's", _set("tenant_id", "another-tenant"), "tenant_id"),
    Rule("at most 64 attributes", _attributes(65), "attributes"),
    Rule(
        "attribute keys start with a letter", _attribute("1st", "int_value", 1), "attributes[1st]"
    ),
    Rule(
        "attribute keys have allowed characters",
        _attribute("a-b", "int_value", 1),
        "attributes[a-b]",
    ),
    Rule(
        "attribute keys are at most 64 characters",
        _attribute("k" * 65, "int_value", 1),
        f"attributes[{'k' * 65}]",
    ),
    Rule(
        "string values are at most 4 KiB",
        _attribute("s", "string_value", "x" * 4097),
        "attributes[s]",
    ),
    Rule(
        "double values are finite", _attribute("d", "double_value", float("nan")), "attributes[d]"
    ),
    Rule("an attribute holds a value", _attribute("empty", None), "attributes[empty]"),
    Rule("the serialized event is at most 32 KiB", _huge, "event"),
]


def _broken(rule: Rule, event_id: str) -> event_pb2.Event:
    event = valid_event(event_id)
    rule.breaks(event)
    return event


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str, Any]:
    """POSTs ``body`` and reads the reply while still sending, as curl does: Envoy answers an
    oversized body (413) before it has all of it, then closes the connection."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.putrequest("POST", parts.path)
        connection.putheader("content-type", content_type)
        connection.putheader("content-length", str(len(body)))
        connection.endheaders()
        sender = threading.Thread(target=_send_until_closed, args=(connection.sock, body))
        sender.start()
        reply = connection.getresponse()
        status, headers, raw = reply.status, reply.headers, reply.read()
        sender.join(30)
    finally:
        connection.close()
    content_type = headers.get("content-type", "")
    parsed = json.loads(raw) if content_type.startswith("application/json") else raw
    return status, content_type, parsed


def _send_until_closed(sock: socket.socket, body: bytes) -> None:
    # The server may answer and close before the whole body is sent.
    with contextlib.suppress(OSError):
        sock.sendall(body)


def _rest_fields(body: dict[str, Any]) -> list[str]:
    return [
        violation["field"]
        for detail in body.get("details", [])
        if detail.get("@type", "").endswith("google.rpc.BadRequest")
        for violation in detail["field_violations"]
    ]


def _json(event: event_pb2.Event) -> dict[str, Any]:
    return json_format.MessageToDict(event, preserving_proto_field_name=True)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_each_rule_is_enforced_over_grpc_naming_the_field(
    rule: Rule, ingest_service: IngestUnderTest, ingest_channel: grpc.Channel
) -> None:
    stub = ingest_service.stub(ingest_channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.IngestEvent(
            ingest_pb2.IngestEventRequest(
                tenant_id=ingest_service.tenant_id, event=_broken(rule, "grpc-1")
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    expected = "event" if rule.field == "event" else f"event.{rule.field}"
    assert field_violations(caught.value) == [expected]

    # In a batch the same rule refuses only that event, naming the field relative to it.
    response = stub.IngestEvents(
        ingest_pb2.IngestEventsRequest(
            tenant_id=ingest_service.tenant_id,
            events=[valid_event("ok-1"), _broken(rule, "grpc-2")],
        )
    )
    assert response.results[0].status == results_pb2.ITEM_STATUS_ACCEPTED
    assert response.results[1].code == code_pb2.INVALID_ARGUMENT
    assert [v.field for v in response.results[1].violations] == [rule.field]
    assert response.results[1].message.startswith(f"{rule.field}: ")


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_each_rule_is_enforced_over_rest_as_http_400_json_naming_the_field(
    rule: Rule, envoy_url: str, ingest_service: IngestUnderTest
) -> None:
    tenant = ingest_service.tenant_id
    status, content_type, body = post(
        f"{envoy_url}/v1/tenants/{tenant}/events",
        json.dumps(_json(_broken(rule, "rest-1"))).encode(),
    )
    assert (status, content_type) == (400, "application/json")
    expected = "event" if rule.field == "event" else f"event.{rule.field}"
    assert _rest_fields(body) == [expected]

    status, _, body = post(
        f"{envoy_url}/v1/tenants/{tenant}/events:batch",
        json.dumps(
            {"events": [_json(valid_event("ok-2")), _json(_broken(rule, "rest-2"))]}
        ).encode(),
    )
    assert status == 200
    assert [r["status"] for r in body["results"]] == [
        "ITEM_STATUS_ACCEPTED",
        "ITEM_STATUS_REJECTED",
    ]
    assert body["results"][1]["code"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in body["results"][1]["violations"]] == [rule.field]


def test_a_bad_tenant_refuses_the_request_over_grpc_and_rest(
    envoy_url: str, ingest_service: IngestUnderTest, ingest_channel: grpc.Channel
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        ingest_service.stub(ingest_channel).IngestEvents(
            ingest_pb2.IngestEventsRequest(tenant_id="bad tenant!", events=[valid_event("t-1")])
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["tenant_id"]

    status, _, body = post(
        f"{envoy_url}/v1/tenants/bad%21tenant/events:batch",
        json.dumps({"events": [_json(valid_event("t-2"))]}).encode(),
    )
    assert status == 400
    assert _rest_fields(body) == ["tenant_id"]


@pytest.mark.parametrize(("count", "reason"), [(0, "at least 1"), (1001, "at most 1000")])
def test_batch_size_is_1_to_1000_over_grpc_and_rest(
    count: int,
    reason: str,
    envoy_url: str,
    ingest_service: IngestUnderTest,
    ingest_channel: grpc.Channel,
) -> None:
    events = [valid_event(f"n-{i}") for i in range(count)]
    with pytest.raises(grpc.RpcError) as caught:
        ingest_service.stub(ingest_channel).IngestEvents(
            ingest_pb2.IngestEventsRequest(tenant_id=ingest_service.tenant_id, events=events)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["events"]
    assert reason in (caught.value.details() or "")

    status, _, body = post(
        f"{envoy_url}/v1/tenants/{ingest_service.tenant_id}/events:batch",
        json.dumps({"events": [_json(e) for e in events]}).encode(),
    )
    assert status == 400
    assert _rest_fields(body) == ["events"]


def _oversized_batch(megabytes: int) -> list[event_pb2.Event]:
    """1000 events of about ``megabytes`` KiB each: about ``megabytes`` MiB in all."""
    events = []
    for i in range(1000):
        event = valid_event(f"big-{i}")
        for k in range(megabytes):
            event.attributes[f"text{k}"].string_value = "x" * 1024
        events.append(event)
    return events


@pytest.mark.parametrize(
    "megabytes", [5, 12], ids=["over the batch limit", "over the message limit"]
)
def test_an_oversized_batch_is_resource_exhausted_over_grpc_and_429_over_rest(
    megabytes: int, envoy_url: str, ingest_service: IngestUnderTest, ingest_channel: grpc.Channel
) -> None:
    events = _oversized_batch(megabytes)
    with pytest.raises(grpc.RpcError) as caught:
        ingest_service.stub(ingest_channel).IngestEvents(
            ingest_pb2.IngestEventsRequest(tenant_id=ingest_service.tenant_id, events=events)
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    status, content_type, body = post(
        f"{envoy_url}/v1/tenants/{ingest_service.tenant_id}/events:batch",
        json.dumps({"events": [_json(e) for e in events]}).encode(),
    )
    assert status in (413, 429)
    assert content_type == "application/json"
    assert body["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    # The service is still fine afterwards.
    ok = ingest_service.stub(ingest_channel).IngestEvent(
        ingest_pb2.IngestEventRequest(
            tenant_id=ingest_service.tenant_id, event=valid_event("after")
        )
    )
    assert ok.result.id == "after"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        pytest.param(b"", "events", id="an empty body"),
        pytest.param(b"", "events:batch", id="an empty batch body"),
        pytest.param(
            b'{"event_id": ',
            "events",
            id="broken JSON",
        ),
        pytest.param(
            b'{"event_id": 12, "event_type": ["a"]}',
            "events",
            id="wrong types",
        ),
        pytest.param(
            b'{"events": [{"attributes": {"n": {"int_value": "abc"}}}]}',
            "events:batch",
            id="a wrongly typed attribute value",
        ),
        pytest.param(
            b'{"event_id": "\xff\xfe"}',
            "events",
            id="non-UTF-8 bytes",
        ),
    ],
)
def test_a_malformed_rest_body_gets_a_4xx_json_answer(
    body: bytes, path: str, envoy_url: str, ingest_service: IngestUnderTest
) -> None:
    status, content_type, answer = post(
        f"{envoy_url}/v1/tenants/{ingest_service.tenant_id}/{path}", body
    )
    assert 400 <= status < 500
    assert content_type == "application/json"
    assert answer["message"]


def test_an_unknown_json_field_is_refused_over_rest(
    envoy_url: str, ingest_service: IngestUnderTest
) -> None:
    event = _json(valid_event("unknown-1"))
    event["colour"] = "blue"
    status, content_type, answer = post(
        f"{envoy_url}/v1/tenants/{ingest_service.tenant_id}/events", json.dumps(event).encode()
    )
    assert (status, content_type) == (400, "application/json")
    assert "colour" in answer["message"]


def test_rest_accepts_a_valid_event_and_batch_with_exact_results(
    envoy_url: str, ingest_service: IngestUnderTest
) -> None:
    tenant = ingest_service.tenant_id
    status, _, answer = post(
        f"{envoy_url}/v1/tenants/{tenant}/events",
        json.dumps(_json(valid_event("rest-ok"))).encode(),
    )
    assert status == 200
    assert answer["result"] == {
        "index": 0,
        "id": "rest-ok",
        "status": "ITEM_STATUS_ACCEPTED",
        "code": "OK",
        "message": "",
        "violations": [],
    }
    status, _, answer = post(
        f"{envoy_url}/v1/tenants/{tenant}/events:batch",
        json.dumps({"events": [_json(valid_event("rb-1")), _json(valid_event("rb-1"))]}).encode(),
    )
    assert status == 200
    assert [r["status"] for r in answer["results"]] == [
        "ITEM_STATUS_ACCEPTED",
        "ITEM_STATUS_DUPLICATE",
    ]
    assert answer["summary"] == {"accepted_count": 1, "duplicate_count": 1, "rejected_count": 0}
