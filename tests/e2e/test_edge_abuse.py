"""One tenant against the others at the edge, end to end: the four real services behind the real
Envoy, with auth as ``eventpipe stack up`` runs by default (the ``auth_stack`` fixture).

Idle StreamEvents streams must not take the ingest workers another tenant's unary call needs
(Envoy caps the streams it holds open to ingest, ``EVENTPIPE_EDGE_MAX_OPEN_STREAMS``), and the
edge's own refusals keep the documented JSON shape on the real stack.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from eventpipe.common.v1 import results_pb2
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from eventpipe.stack.stack import Stack, dev_token
from google.protobuf import json_format

from tests.conftest import EDGE_TENANT_BURST
from tests.helpers.events import event_json as event
from tests.helpers.events import new_tenant

pytestmark = [pytest.mark.abuse]

IDLE_STREAMS = 40
# The idle streams come from several tenants, each inside its rate-limit burst, so that only the
# stream cap (not the per-tenant rate limit) stands between them and ingest's workers.
IDLERS = 4


def bearer(stack: Stack, tenant: str) -> list[tuple[str, str]]:
    token = dev_token(stack.config, tenant, ("ingest", "query"))
    assert token is not None
    return [("authorization", f"Bearer {token}")]


def _idle_until(released: threading.Event) -> Iterator[ingest_pb2.StreamEventsRequest]:
    released.wait(timeout=300)
    yield from ()


def _streams_open_at_ingest(stack: Stack) -> int:
    """Envoy's count of StreamEvents streams it holds open to ingest."""
    stat = "cluster.ingest_streams.upstream_rq_active"
    with urllib.request.urlopen(f"{stack.envoy.admin_url}/stats?filter=^{stat}$", timeout=10) as r:
        (line,) = [x for x in r.read().decode().splitlines() if x.startswith(stat + ":")]
    return int(line.split(":")[1])


def test_forty_idle_streams_through_envoy_do_not_stop_another_tenants_unary_call(
    auth_stack: Stack,
) -> None:
    assert IDLE_STREAMS // IDLERS <= EDGE_TENANT_BURST
    idlers = [new_tenant("idler") for _ in range(IDLERS)]
    quiet = new_tenant("quiet")
    request = json_format.ParseDict(
        {"tenant_id": quiet, "event": event(f"quiet-{uuid.uuid4().hex[:8]}")},
        ingest_pb2.IngestEventRequest(),
    )
    released = threading.Event()
    with grpc.insecure_channel(auth_stack.envoy.address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        try:
            streams = [
                stub.StreamEvents(
                    _idle_until(released), metadata=bearer(auth_stack, idlers[n % IDLERS])
                )
                for n in range(IDLE_STREAMS)
            ]
            # Each stream is either open at ingest, idle, or refused (by the edge's stream cap
            # or ingest's own stream limits): none is still on its way.
            wait_until(
                lambda: (
                    _streams_open_at_ingest(auth_stack) + sum(s.done() for s in streams)
                    == IDLE_STREAMS
                ),
                timeout=60,
                what=f"all {IDLE_STREAMS} streams open at ingest or refused",
            )
            held = sum(not stream.done() for stream in streams)

            # A deadline, not a timing: a stalled server would leave it unanswered.
            response = stub.IngestEvent(request, metadata=bearer(auth_stack, quiet), timeout=30)
            refused = {stream.code() for stream in streams if stream.done()}
        finally:
            released.set()

    assert response.result.status != results_pb2.ITEM_STATUS_UNSPECIFIED
    assert held > 0, "idle streams were held open while the unary call ran"
    assert refused <= {grpc.StatusCode.RESOURCE_EXHAUSTED}, refused


def _raw_request(
    stack: Stack, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", stack.envoy.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("content-type", ""), json.loads(response.read())
    finally:
        connection.close()


def test_oversized_headers_are_refused_431_json_before_any_token_is_checked(
    auth_stack: Stack,
) -> None:
    status, content_type, document = _raw_request(
        auth_stack, "GET", "/v1/tenants/t1/entities/e1", {"x-flood": "a" * 70_000}
    )

    assert (status, content_type) == (431, "application/json")
    assert document == {"code": 8, "message": "request headers too large", "details": []}


def test_an_escaped_field_name_is_ingested_and_an_unknown_one_refused_with_a_violation(
    auth_stack: Stack,
) -> None:
    tenant = new_tenant("escaped")
    headers = {
        "authorization": bearer(auth_stack, tenant)[0][1],
        "content-type": "application/json",
    }
    known = json.dumps({"events": [event("e-1")]}).replace('"events"', '"even\\u0074s"', 1)
    unknown = json.dumps({"events": [{**event("e-2"), "colour": "red"}]})

    accepted = _raw_request(
        auth_stack, "POST", f"/v1/tenants/{tenant}/events:batch", headers, known.encode()
    )
    refused = _raw_request(
        auth_stack, "POST", f"/v1/tenants/{tenant}/events:batch", headers, unknown.encode()
    )

    assert accepted[0] == 200, accepted
    assert len(accepted[2]["results"]) == 1
    assert refused[:2] == (400, "application/json"), refused
    assert refused[2]["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    (detail,) = refused[2]["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert [v["field"] for v in detail["field_violations"]] == ["events[0].colour"]
