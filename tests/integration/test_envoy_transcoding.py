"""The real Envoy, with the repo's rendered config (no auth), in front of an in-process gRPC
server that records what reaches it and answers as each test scripts it.

This checks Envoy's side of the contract: how REST is decoded (path variables, repeated and
escaped query parameters, bodies that are not JSON, oversized bodies, large responses), how
gRPC passes through, and how each domain error the services raise (mapped to a gRPC status by
the real ``ErrorMappingInterceptor``) comes back to a REST caller. The services' own answers
through Envoy are covered in tests/e2e/test_edge_auth.py.
"""

from __future__ import annotations

import importlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from eventpipe.common.v1 import results_pb2
from eventpipe.core import errors
from eventpipe.core.interceptors import ErrorMappingInterceptor
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2
from eventpipe.query.v1 import query_pb2, query_pb2_grpc
from eventpipe.stack.components import GRPC_SERVICES, SERVICE_NAMES, Envoy
from eventpipe.stack.edge import EdgeSettings
from eventpipe.stack.probes import free_port
from google.protobuf import message_factory
from google.protobuf.message import Message
from google.rpc import code_pb2

from tests.conftest import start_or_fail
from tests.helpers.http import Reply
from tests.helpers.http import http as send

MAX_REQUEST_BYTES = 64 * 1024
ALLOWED_ORIGIN = "https://app.example.org"
MAX_RESPONSE_BYTES = 1024 * 1024
# The recording server serves every service but enrich, whose port stays closed.
SERVED = ("ingest", "store", "query")


@dataclass
class Call:
    method: str
    request: Message
    metadata: dict[str, str]


Behaviour = Callable[[Message], Message]


@dataclass
class RecordingUpstream(grpc.GenericRpcHandler):
    """Answers every EventPipe method with an empty response, or as ``behaviours`` say."""

    calls: list[Call] = field(default_factory=list)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    unimplemented: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method  # type: ignore[attr-defined]
        service, _, name = method.strip("/").partition("/")
        package = next((p for p, s in GRPC_SERVICES.items() if s == service), None)
        if package is None or method in self.unimplemented:
            return None
        module = importlib.import_module(f"eventpipe.{package}.v1.{package}_pb2")
        descriptor = module.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]]
        rpc = descriptor.methods_by_name[name]
        request_class = message_factory.GetMessageClass(rpc.input_type)
        response_class = message_factory.GetMessageClass(rpc.output_type)

        def handle(request: Message, context: grpc.ServicerContext) -> Message:
            with self.lock:
                self.calls.append(Call(method, request, dict(context.invocation_metadata())))
            behaviour = self.behaviours.get(method)
            return behaviour(request) if behaviour else response_class()

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=request_class.FromString,
            response_serializer=response_class.SerializeToString,
        )

    def calls_to(self, method: str) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if call.method == method]


@dataclass(frozen=True)
class Edge:
    envoy: Envoy
    upstream: RecordingUpstream


@contextmanager
def recording_edge(
    upstream: RecordingUpstream,
    run_dir: Path,
    settings: EdgeSettings,
    *,
    max_message_bytes: int = 8 * 1024 * 1024,
) -> Iterator[Envoy]:
    """The real Envoy, rendered with ``settings``, in front of ``upstream`` served on the ports
    of ingest, store and query (enrich's stays closed)."""
    ports = {name: free_port() for name in SERVICE_NAMES}
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        handlers=[upstream],
        interceptors=[ErrorMappingInterceptor()],
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ],
    )
    for name in SERVED:
        server.add_insecure_port(f"127.0.0.1:{ports[name]}")
    server.start()
    envoy = Envoy(
        run_dir,
        port=free_port(),
        admin_port=free_port(),
        upstream_ports=ports,
        edge_settings=settings,
    )
    try:
        start_or_fail(envoy)
        yield envoy
    finally:
        envoy.stop()
        server.stop(0)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    upstream = RecordingUpstream()
    settings = EdgeSettings(  # type: ignore[call-arg]
        max_request_bytes=MAX_REQUEST_BYTES,
        max_response_bytes=MAX_RESPONSE_BYTES,
        cors_origins=f"{ALLOWED_ORIGIN}, http://localhost:*",
    )
    with recording_edge(upstream, tmp_path_factory.mktemp("edge-run"), settings) as envoy:
        yield Edge(envoy, upstream)


@pytest.fixture
def upstream(edge: Edge) -> Iterator[RecordingUpstream]:
    yield edge.upstream
    edge.upstream.behaviours.clear()
    edge.upstream.unimplemented.clear()


def http(
    edge: Edge,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    return send(edge.envoy.base_url + path, method=method, body=body, headers=headers)


def post_json(edge: Edge, path: str, body: bytes | str) -> Reply:
    data = body.encode() if isinstance(body, str) else body
    return http(edge, path, method="POST", body=data, headers={"content-type": "application/json"})


def assert_json_error(reply: Reply, status: int, code: grpc.StatusCode) -> dict[str, Any]:
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    document: dict[str, Any] = reply.json()
    assert document["code"] == code.value[0], document
    assert isinstance(document["message"], str)
    return document


QUERY = "/eventpipe.query.v1.QueryService"
INGEST = "/eventpipe.ingest.v1.IngestService"


def _raise(error: Exception) -> Behaviour:
    def behaviour(_request: Message) -> Message:
        raise error

    return behaviour


# ------------------------------------------------------------------ error mapping


DOMAIN_ERRORS = [
    (errors.invalid("entity_id", "must not be empty"), 400),
    (errors.NotFound("no such entity"), 404),
    (errors.Unavailable("Bigtable is unreachable", retry_after_seconds=2), 503),
    (errors.ResourceExhausted("too many requests in flight", retry_after_seconds=1), 429),
    (errors.Unauthenticated("missing or invalid token"), 401),
    (errors.PermissionDenied("permission denied"), 403),
    (errors.FailedPrecondition("job already finished"), 400),
    (errors.AlreadyExists("spec version exists"), 409),
]


@pytest.mark.parametrize(
    ("error", "http_status"),
    DOMAIN_ERRORS,
    ids=lambda v: type(v).__name__ if not isinstance(v, int) else str(v),
)
def test_each_domain_error_comes_back_through_rest_as_json_with_its_http_status(
    edge: Edge, upstream: RecordingUpstream, error: errors.EventPipeError, http_status: int
) -> None:
    upstream.behaviours[f"{QUERY}/GetEntity"] = _raise(error)

    reply = http(edge, "/v1/tenants/t1/entities/e1")

    document = assert_json_error(reply, http_status, error.code)
    assert document["message"] == error.message


def test_an_unimplemented_method_comes_back_as_501_json(
    edge: Edge, upstream: RecordingUpstream
) -> None:
    upstream.unimplemented.add(f"{QUERY}/GetEntityMetrics")

    reply = http(edge, "/v1/tenants/t1/entities/e1/metrics")

    assert_json_error(reply, 501, grpc.StatusCode.UNIMPLEMENTED)


def test_invalid_argument_keeps_its_field_violations_in_the_json_details(
    edge: Edge, upstream: RecordingUpstream
) -> None:
    upstream.behaviours[f"{INGEST}/IngestEvent"] = _raise(
        errors.InvalidArgument(
            "2 invalid fields",
            violations=[
                errors.Violation("event.event_id", "must not be empty"),
                errors.Violation("event.event_time", "is in the future"),
            ],
        )
    )

    reply = post_json(edge, "/v1/tenants/t1/events", '{"event_type": "click"}')

    document = assert_json_error(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)
    (detail,) = document["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert [v["field"] for v in detail["field_violations"]] == [
        "event.event_id",
        "event.event_time",
    ]


def test_unavailable_keeps_its_retry_advice_in_the_json_details(
    edge: Edge, upstream: RecordingUpstream
) -> None:
    upstream.behaviours[f"{QUERY}/GetEntity"] = _raise(
        errors.Unavailable("Bigtable is unreachable", retry_after_seconds=2)
    )

    document = assert_json_error(
        http(edge, "/v1/tenants/t1/entities/e1"), 503, grpc.StatusCode.UNAVAILABLE
    )

    (detail,) = document["details"]
    assert detail == {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": "2s"}


def test_item_results_come_back_through_rest_with_their_code_by_name(
    edge: Edge, upstream: RecordingUpstream
) -> None:
    answer = ingest_pb2.IngestEventsResponse()
    answer.results.add(index=0, id="e-1", status=results_pb2.ITEM_STATUS_ACCEPTED)
    invalid = answer.results.add(
        index=1,
        id="e-2",
        status=results_pb2.ITEM_STATUS_REJECTED,
        code=code_pb2.INVALID_ARGUMENT,
        message="event_time: is required",
    )
    invalid.violations.add(field="event_time", description="is required")
    answer.results.add(
        index=2,
        id="e-3",
        status=results_pb2.ITEM_STATUS_REJECTED,
        code=code_pb2.UNAVAILABLE,
        message="Kafka did not confirm the write (timed out)",
    )
    upstream.behaviours[f"{INGEST}/IngestEvents"] = lambda request: answer

    reply = post_json(edge, "/v1/tenants/t1/events:batch", '{"events": []}')

    assert reply.status == 200, reply.body[:200]
    assert reply.json()["results"] == [
        {
            "index": 0,
            "id": "e-1",
            "status": "ITEM_STATUS_ACCEPTED",
            "code": "OK",
            "message": "",
            "violations": [],
        },
        {
            "index": 1,
            "id": "e-2",
            "status": "ITEM_STATUS_REJECTED",
            "code": "INVALID_ARGUMENT",
            "message": "event_time: is required",
            "violations": [{"field": "event_time", "description": "is required"}],
        },
        {
            "index": 2,
            "id": "e-3",
            "status": "ITEM_STATUS_REJECTED",
            "code": "UNAVAILABLE",
            "message": "Kafka did not confirm the write (timed out)",
            "violations": [],
        },
    ]


def test_a_service_that_is_down_answers_503_json_unavailable(edge: Edge) -> None:
    reply = http(edge, "/v1/tenants/t1/enrichmentSpec")  # enrich's port has no server

    assert_json_error(reply, 503, grpc.StatusCode.UNAVAILABLE)


# ------------------------------------------------------------------ request validation


def test_an_unknown_query_parameter_is_refused_with_400_json_before_the_service(
    edge: Edge, upstream: RecordingUpstream
) -> None:
    reply = http(edge, "/v1/tenants/t1/entities/unknown-param?bogus=1")

    document = assert_json_error(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)
    assert "bogus" in document["message"]
    assert not [
        c for c in upstream.calls_to(f"{QUERY}/GetEntity") if c.request.entity_id == "unknown-param"
    ]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/no/such/thing"),
        ("GET", "/nothing-here"),
        ("PATCH", "/v1/tenants/t1/entities/e1"),  # GET and DELETE are RPCs there
        ("PUT", "/v1/tenants/t1/events"),
        ("GET", "/eventpipe.query.v1.QueryService/GetEntity"),
    ],
)
def test_an_unknown_path_or_method_is_404_json_never_503(
    edge: Edge, method: str, path: str
) -> None:
    reply = http(edge, path, method=method)

    assert_json_error(reply, 404, grpc.StatusCode.NOT_FOUND)


def test_a_grpc_call_to_an_unknown_service_is_unimplemented_not_unavailable(edge: Edge) -> None:
    with grpc.insecure_channel(edge.envoy.address) as channel:
        call = channel.unary_unary("/no.such.v1.Service/DoThing")
        with pytest.raises(grpc.RpcError) as raised:
            call(b"", timeout=10)

    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


BAD_BODIES = {
    "not json": "this is not json",
    "wrong types": '{"event_id": 5, "entity_id": {"nested": true}}',
    "trailing garbage": '{"event_id": "e-1"} and more',
    "two documents": '{"event_id": "e-1"}{"event_id": "e-2"}',
    "truncated": '{"event_id": "e-1"',
    "array instead of object": '[{"event_id": "e-1"}]',
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_a_body_that_is_not_the_json_message_is_400_json_and_never_reaches_the_service(
    edge: Edge, upstream: RecordingUpstream, body: str
) -> None:
    tenant = f"bad-{uuid.uuid4().hex[:8]}"

    reply = post_json(edge, f"/v1/tenants/{tenant}/events", body)

    assert_json_error(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)
    assert not [
        c for c in upstream.calls_to(f"{INGEST}/IngestEvent") if c.request.tenant_id == tenant
    ]  # type: ignore[attr-defined]


def test_an_unknown_field_in_a_json_body_is_refused_before_the_service_is_called(
    edge: Edge, upstream: RecordingUpstream
) -> None:
    # A transcoder pitfall: it drops unknown body fields silently, so a misspelt field would
    # arrive as an unset one. The Lua filter in front of it refuses them instead.
    tenant = f"unknown-field-{uuid.uuid4().hex[:8]}"

    reply = post_json(edge, f"/v1/tenants/{tenant}/events", '{"event_idd": "e-1"}')

    assert reply.status == 400, reply.body
    assert "event_idd" in json.loads(reply.body)["message"]
    assert not [
        c for c in upstream.calls_to(f"{INGEST}/IngestEvent") if c.request.tenant_id == tenant
    ]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "events:batch",
            '{"events": [{"event_id": "e"}, {"event_id": "f", "x": 1}]}',
            "events[1].x",
        ),
        ("events", '{"attributes": {"any_key": {"string_value": "v", "oops": 1}}}', "oops"),
        ("enrichmentJobs", '{"mode": "JOB_MODE_BATCH", "time_range": {"start": "x"}}', "start"),
    ],
)
def test_unknown_fields_are_refused_at_any_depth_while_map_keys_stay_free(
    edge: Edge, path: str, body: str, field: str
) -> None:
    reply = post_json(edge, f"/v1/tenants/t-{uuid.uuid4().hex[:8]}/{path}", body)
    assert reply.status == 400, reply.body
    assert field in json.loads(reply.body)["message"]


def test_known_fields_in_either_json_spelling_pass_the_body_check(
    edge: Edge, upstream: RecordingUpstream
) -> None:
    tenant = f"spelling-{uuid.uuid4().hex[:8]}"
    body = '{"eventId": "e-1", "event_type": "x", "attributes": {"k": {"intValue": "3"}}}'
    reply = post_json(edge, f"/v1/tenants/{tenant}/events", body)
    assert b"unknown field" not in reply.body, reply.body
    assert [c for c in upstream.calls_to(f"{INGEST}/IngestEvent") if c.request.tenant_id == tenant]


# ------------------------------------------------------------------ decoding


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("a%2Fb", "a/b"),
        ("user%20one", "user one"),
        ("caf%C3%A9", "café"),
        ("a%3Ab%40c", "a:b@c"),
        ("100%25", "100%"),
        ("a+b", "a+b"),
    ],
)
def test_a_path_variable_reaches_the_service_fully_decoded(
    edge: Edge, upstream: RecordingUpstream, encoded: str, decoded: str
) -> None:
    tenant = f"path-{uuid.uuid4().hex[:8]}"

    reply = http(edge, f"/v1/tenants/{tenant}/entities/{encoded}")

    assert reply.status == 200, reply.body
    (call,) = [c for c in upstream.calls_to(f"{QUERY}/GetEntity") if c.request.tenant_id == tenant]  # type: ignore[attr-defined]
    assert call.request.entity_id == decoded  # type: ignore[attr-defined]


def test_a_repeated_field_takes_every_repetition_of_its_query_parameter(
    edge: Edge, upstream: RecordingUpstream
) -> None:
    tenant = f"repeat-{uuid.uuid4().hex[:8]}"

    reply = http(
        edge,
        f"/v1/tenants/{tenant}/entities/e1/events"
        "?event_types=click&event_types=page_view&event_types=add+to%20cart&page_size=7",
    )

    assert reply.status == 200, reply.body
    (call,) = [
        c for c in upstream.calls_to(f"{QUERY}/ListEntityEvents") if c.request.tenant_id == tenant
    ]  # type: ignore[attr-defined]
    assert list(call.request.event_types) == ["click", "page_view", "add to cart"]  # type: ignore[attr-defined]
    assert call.request.page_size == 7  # type: ignore[attr-defined]


def test_a_query_parameter_of_the_wrong_type_is_400(edge: Edge) -> None:
    reply = http(edge, "/v1/tenants/t1/entities/e1/events?page_size=many")

    assert_json_error(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)


def _profile_of_size(size: int) -> Behaviour:
    def large(_request: Message) -> Message:
        response = query_pb2.GetEntityResponse()
        response.profile.entity_id = "x" * size
        return response

    return large


def test_a_large_response_within_the_limit_comes_back_whole(
    edge: Edge, upstream: RecordingUpstream
) -> None:
    size = MAX_RESPONSE_BYTES - 64 * 1024
    upstream.behaviours[f"{QUERY}/GetEntity"] = _profile_of_size(size)

    reply = http(edge, "/v1/tenants/t1/entities/large")

    assert reply.status == 200, reply.body[:200]
    assert len(reply.json()["profile"]["entity_id"]) == size


def test_a_response_over_the_limit_is_a_500_json_error_not_a_cut_body(
    edge: Edge, upstream: RecordingUpstream
) -> None:
    upstream.behaviours[f"{QUERY}/GetEntity"] = _profile_of_size(3 * MAX_RESPONSE_BYTES)

    reply = http(edge, "/v1/tenants/t1/entities/too-large")

    assert_json_error(reply, 500, grpc.StatusCode.INTERNAL)


# ------------------------------------------------------------------ body size limit


def _batch_body(tenant: str, size: int) -> bytes:
    padding = "p" * 1000
    events = [
        {"event_id": f"e-{n}", "attributes": {"pad": {"string_value": padding}}}
        for n in range(size // 1040)
    ]
    body = json.dumps({"tenant_id": tenant, "events": events}).encode()
    return body


def test_a_rest_body_over_the_limit_is_413_json_and_never_reaches_the_service(
    edge: Edge, upstream: RecordingUpstream
) -> None:
    tenant = f"big-{uuid.uuid4().hex[:8]}"
    body = _batch_body(tenant, 2 * MAX_REQUEST_BYTES)
    assert len(body) > MAX_REQUEST_BYTES

    reply = post_json(edge, f"/v1/tenants/{tenant}/events:batch", body)

    document = assert_json_error(reply, 413, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert document["message"] == "request body too large"
    assert not [
        c for c in upstream.calls_to(f"{INGEST}/IngestEvents") if c.request.tenant_id == tenant
    ]  # type: ignore[attr-defined]


def test_a_rest_body_within_the_limit_reaches_the_service_whole(
    edge: Edge, upstream: RecordingUpstream
) -> None:
    tenant = f"fits-{uuid.uuid4().hex[:8]}"
    body = _batch_body(tenant, MAX_REQUEST_BYTES - 4096)
    assert MAX_REQUEST_BYTES // 2 < len(body) < MAX_REQUEST_BYTES

    reply = post_json(edge, f"/v1/tenants/{tenant}/events:batch", body)

    assert reply.status == 200, reply.body
    (call,) = [
        c for c in upstream.calls_to(f"{INGEST}/IngestEvents") if c.request.tenant_id == tenant
    ]  # type: ignore[attr-defined]
    assert len(call.request.events) == len(json.loads(body)["events"])  # type: ignore[attr-defined]


# ------------------------------------------------------------------ gRPC, CORS, health, logs


def test_a_grpc_call_passes_through_with_its_request_and_metadata(
    edge: Edge, upstream: RecordingUpstream
) -> None:
    tenant = f"grpc-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(edge.envoy.address) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        stub.GetEntity(
            query_pb2.GetEntityRequest(tenant_id=tenant, entity_id="a/b c"),
            metadata=[("x-client-note", "grpc-through-envoy")],
            timeout=10,
        )

    (call,) = [c for c in upstream.calls_to(f"{QUERY}/GetEntity") if c.request.tenant_id == tenant]  # type: ignore[attr-defined]
    assert call.request.entity_id == "a/b c"  # type: ignore[attr-defined]
    assert call.metadata["x-client-note"] == "grpc-through-envoy"


def test_a_client_cannot_set_the_tenant_header_that_keys_rate_limits(
    edge: Edge, upstream: RecordingUpstream
) -> None:
    tenant = f"spoof-{uuid.uuid4().hex[:8]}"

    reply = http(
        edge, f"/v1/tenants/{tenant}/entities/e1", headers={"x-eventpipe-tenant": "someone-else"}
    )

    assert reply.status == 200
    (call,) = [c for c in upstream.calls_to(f"{QUERY}/GetEntity") if c.request.tenant_id == tenant]  # type: ignore[attr-defined]
    assert "x-eventpipe-tenant" not in call.metadata


def test_a_cors_preflight_on_a_rest_path_is_answered_by_envoy(edge: Edge) -> None:
    reply = http(
        edge,
        "/v1/tenants/t1/events",
        method="OPTIONS",
        headers={
            "origin": ALLOWED_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )

    assert reply.status == 200
    assert reply.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in reply.headers["access-control-allow-methods"]
    assert "authorization" in reply.headers["access-control-allow-headers"]


def test_a_cross_origin_rest_response_carries_the_allow_origin_header(edge: Edge) -> None:
    reply = http(edge, "/v1/tenants/t1/entities/e1", headers={"origin": ALLOWED_ORIGIN})

    assert reply.status == 200
    assert reply.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "https://app.example.org.evil.example", "http://localhost.evil"],
)
def test_an_origin_not_configured_gets_no_cors_permission(edge: Edge, origin: str) -> None:
    preflight = http(
        edge,
        "/v1/tenants/t1/events",
        method="OPTIONS",
        headers={"origin": origin, "access-control-request-method": "POST"},
    )
    reply = http(edge, "/v1/tenants/t1/entities/e1", headers={"origin": origin})

    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in reply.headers


@pytest.mark.parametrize("origin", ["http://localhost:5173", "http://localhost"])
def test_an_origin_with_any_port_allowed_matches_every_port_of_its_host(
    edge: Edge, origin: str
) -> None:
    reply = http(edge, "/v1/tenants/t1/entities/e1", headers={"origin": origin})

    assert reply.headers["access-control-allow-origin"] == origin


def test_healthz_is_answered_by_envoy_without_calling_a_service(
    edge: Edge, upstream: RecordingUpstream
) -> None:
    calls_before = len(upstream.calls)

    reply = http(edge, "/healthz")

    assert reply.status == 200
    assert len(upstream.calls) == calls_before


def _access_log_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_each_request_is_logged_as_one_json_line(edge: Edge) -> None:
    entity = f"logged-{uuid.uuid4().hex}"
    path = f"/v1/tenants/t1/entities/{entity}?bogus=1"
    http(edge, path, headers={"authorization": "Bearer not-to-be-logged"})

    def lines_for_path() -> list[dict[str, Any]]:
        return [
            line for line in _access_log_lines(edge.envoy.access_log_path) if line["path"] == path
        ]

    # Envoy flushes its access log file about once a second.
    wait_until(lambda: bool(lines_for_path()), timeout=15, what="the access log line")
    (line,) = lines_for_path()
    assert line["status"] == 400
    assert line["method"] == "GET"
    assert line["request_id"]
    assert "not-to-be-logged" not in edge.envoy.access_log_path.read_text()
