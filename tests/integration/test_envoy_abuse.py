"""The edge's limits and error shapes under abuse: the real Envoy, rendered with the documented
defaults for bodies and headers and short stream limits, in front of an in-process gRPC server
that records what reaches it (the one of test_envoy_transcoding.py, plus a StreamEvents that
holds its stream open and never answers, as an idle client's stream does on ingest).

What is checked: REST bodies up to exactly the documented limit pass the body check whole and
reach the service, one byte more never does; the body check's 400 has the shape of a service's
INVALID_ARGUMENT and compares unescaped keys; every reply Envoy makes itself is JSON; idle,
endless and surplus streams are closed or refused with a clear gRPC status.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from eventpipe.core import errors
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from eventpipe.stack.components import Envoy
from eventpipe.stack.edge import EdgeSettings, MiB
from google.protobuf import json_format
from google.protobuf.message import Message

from tests.helpers.events import new_tenant
from tests.integration.test_envoy_transcoding import RecordingUpstream, Reply, recording_edge

pytestmark = [pytest.mark.abuse]

# docs/edge.md: "REST request body | 4 MiB".
DOCUMENTED_BODY_LIMIT = 4 * MiB
STREAM_IDLE_TIMEOUT_SECONDS = 2
STREAM_MAX_DURATION_SECONDS = 4
MAX_OPEN_STREAMS = 2
INGEST = "/eventpipe.ingest.v1.IngestService"
STREAM_EVENTS = f"{INGEST}/StreamEvents"


@dataclass
class StreamingUpstream(RecordingUpstream):
    """RecordingUpstream whose StreamEvents reads its stream to the end and never answers."""

    open_streams: set[str] = field(default_factory=set)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != STREAM_EVENTS:  # type: ignore[attr-defined]
            return super().service(details)

        def hold(
            requests: Iterator[ingest_pb2.StreamEventsRequest], context: grpc.ServicerContext
        ) -> Iterator[ingest_pb2.StreamEventsResponse]:
            caller = dict(context.invocation_metadata()).get("x-caller", "")
            with self.lock:
                self.open_streams.add(caller)
            try:
                for _request in requests:
                    pass
            finally:
                with self.lock:
                    self.open_streams.discard(caller)
            yield from ()

        return grpc.stream_stream_rpc_method_handler(
            hold,
            request_deserializer=ingest_pb2.StreamEventsRequest.FromString,
            response_serializer=ingest_pb2.StreamEventsResponse.SerializeToString,
        )

    def streams_open(self) -> int:
        with self.lock:
            return len(self.open_streams)


@dataclass(frozen=True)
class Edge:
    envoy: Envoy
    upstream: StreamingUpstream


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    assert EdgeSettings.model_fields["max_request_bytes"].default == DOCUMENTED_BODY_LIMIT
    upstream = StreamingUpstream()
    settings = EdgeSettings(  # type: ignore[call-arg]
        max_request_bytes=DOCUMENTED_BODY_LIMIT,
        stream_idle_timeout=f"{STREAM_IDLE_TIMEOUT_SECONDS}s",
        stream_max_duration=f"{STREAM_MAX_DURATION_SECONDS}s",
        max_open_streams=MAX_OPEN_STREAMS,
    )
    run_dir = tmp_path_factory.mktemp("edge-abuse-run")
    with recording_edge(
        upstream, run_dir, settings, max_message_bytes=2 * DOCUMENTED_BODY_LIMIT
    ) as envoy:
        yield Edge(envoy, upstream)


@pytest.fixture
def upstream(edge: Edge) -> Iterator[StreamingUpstream]:
    yield edge.upstream
    edge.upstream.behaviours.clear()


def request(
    edge: Edge,
    method: str,
    path: str,
    body: bytes | Iterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One HTTP/1.1 request; an iterator body is sent chunked (no content-length)."""
    connection = http.client.HTTPConnection("127.0.0.1", edge.envoy.port, timeout=60)
    try:
        connection.request(
            method,
            path,
            body=body,
            headers={"content-type": "application/json", **(headers or {})},
            encode_chunked=body is not None and not isinstance(body, bytes),
        )
        response = connection.getresponse()
        return Reply(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        connection.close()


def assert_status_json(reply: Reply, status: int, code: grpc.StatusCode) -> dict[str, Any]:
    """The documented shape: google.rpc.Status JSON with the gRPC code of the HTTP status."""
    assert reply.status == status, reply.body[:300]
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    document: dict[str, Any] = reply.json()
    assert set(document) == {"code", "message", "details"}, document
    assert document["code"] == code.value[0], document
    assert isinstance(document["message"], str) and document["message"], document
    assert isinstance(document["details"], list), document
    return document


def batch_of_exact_size(tenant: str, size: int, *, last_event: str = "") -> bytes:
    """An IngestEvents body of exactly ``size`` bytes; ``last_event`` is spliced into the last
    event (e.g. an unknown field), so the check must read to the very end to see it."""
    head = json.dumps({"tenant_id": tenant, "events": [{"event_id": "first"}]})[:-2]
    tail = ', {"event_id": "last"' + last_event + ', "attributes": {"pad": {"string_value": "'
    end = '"}}}]}'
    padding = size - len(head) - len(tail) - len(end)
    assert padding >= 0
    body = (head + tail + "p" * padding + end).encode()
    assert len(body) == size
    return body


def calls_for(upstream: RecordingUpstream, tenant: str) -> list[Any]:
    return [
        c.request
        for c in upstream.calls_to(f"{INGEST}/IngestEvents")
        if c.request.tenant_id == tenant  # type: ignore[attr-defined]
    ]


# ------------------------------------------------------------------ body limit


def test_a_batch_over_one_mib_passes_the_body_check_and_reaches_the_service(
    edge: Edge, upstream: StreamingUpstream
) -> None:
    # Found in issue 12: the body check read through Envoy's 1 MiB buffer and refused this
    # 1.04 MB batch with 413, although the documented limit is 4 MiB.
    tenant = new_tenant("one-mb")
    body = batch_of_exact_size(tenant, 1_040_000)

    reply = request(edge, "POST", f"/v1/tenants/{tenant}/events:batch", body)

    assert reply.status == 200, reply.body[:300]
    (call,) = calls_for(upstream, tenant)
    assert [e.event_id for e in call.events] == ["first", "last"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_of_exactly_the_documented_limit_reaches_the_service_whole(
    edge: Edge, upstream: StreamingUpstream, chunked: bool
) -> None:
    tenant = new_tenant("at-limit")
    body = batch_of_exact_size(tenant, DOCUMENTED_BODY_LIMIT)
    sent = iter([body[i : i + MiB] for i in range(0, len(body), MiB)]) if chunked else body

    reply = request(edge, "POST", f"/v1/tenants/{tenant}/events:batch", sent)

    assert reply.status == 200, reply.body[:300]
    (call,) = calls_for(upstream, tenant)
    padding = call.events[1].attributes["pad"].string_value
    assert len(body) - len(padding) < 200, "the whole body arrived"


@pytest.mark.parametrize(
    "size", [DOCUMENTED_BODY_LIMIT + 1, 5 * MiB], ids=["one byte over", "5 MiB"]
)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_documented_limit_is_413_json_and_never_reaches_the_service(
    edge: Edge, upstream: StreamingUpstream, size: int, chunked: bool
) -> None:
    tenant = new_tenant("over-limit")
    body = batch_of_exact_size(tenant, size)
    sent = iter([body[i : i + MiB] for i in range(0, len(body), MiB)]) if chunked else body

    reply = request(edge, "POST", f"/v1/tenants/{tenant}/events:batch", sent)

    document = assert_status_json(reply, 413, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert document["message"] == "request body too large"
    assert not calls_for(upstream, tenant)


def test_an_unknown_field_at_the_end_of_a_large_body_is_found(edge: Edge) -> None:
    tenant = new_tenant("late-unknown")
    body = batch_of_exact_size(tenant, DOCUMENTED_BODY_LIMIT, last_event=', "evil": 1')

    reply = request(edge, "POST", f"/v1/tenants/{tenant}/events:batch", body)

    document = assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)
    assert document["details"][0]["field_violations"][0]["field"] == "events[1].evil"


# ------------------------------------------------------------------ the body check's 400


def test_the_unknown_field_400_has_the_shape_of_a_services_invalid_argument(
    edge: Edge, upstream: StreamingUpstream
) -> None:
    upstream.behaviours[f"{INGEST}/IngestEvent"] = _raise(
        errors.invalid("event.event_idd", "must not be empty")
    )
    from_service = request(edge, "POST", f"/v1/tenants/{new_tenant('svc')}/events", b"{}")
    tenant = new_tenant("unknown")

    from_edge = request(edge, "POST", f"/v1/tenants/{tenant}/events", b'{"event_idd": "e-1"}')

    service_document = assert_status_json(from_service, 400, grpc.StatusCode.INVALID_ARGUMENT)
    edge_document = assert_status_json(from_edge, 400, grpc.StatusCode.INVALID_ARGUMENT)
    assert _shape(edge_document) == _shape(service_document)
    (violation,) = edge_document["details"][0]["field_violations"]
    assert violation["field"] == "event_idd"
    assert edge_document["message"].startswith("event_idd: "), "as errors.invalid words it"
    assert not [c for c in upstream.calls_to(f"{INGEST}/IngestEvent") if tenant in str(c.request)]


def _raise(error: Exception) -> Any:
    def behaviour(_request: Message) -> Message:
        raise error

    return behaviour


def _shape(value: Any) -> Any:
    """Keys, types and @type values, without the words."""
    if isinstance(value, dict):
        return {k: (v if k == "@type" else _shape(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("events:batch", r'{"even\u0074s": [{"event_id": "e-1"}]}'),
        ("events:batch", r'{"events": [{"\u0065vent_id": "e-1", "event\u005Ftype": "click"}]}'),
        ("events:batch", r'{"events": [{"event_id": "e-1", "attributes": {"\ud83d\ude00": {}}}]}'),
        ("events:batch", r'{"\u0065\u0076\u0065\u006e\u0074\u0073": []}'),
    ],
    ids=["escaped letter", "escaped underscore", "map key with a surrogate pair", "all escaped"],
)
def test_an_escaped_key_is_unescaped_before_it_is_compared(
    edge: Edge, upstream: StreamingUpstream, path: str, body: str
) -> None:
    tenant = new_tenant("escaped")
    with_tenant = body.replace("{", '{"tenant_id": "' + tenant + '", ', 1)

    reply = request(edge, "POST", f"/v1/tenants/{tenant}/{path}", with_tenant.encode())

    assert reply.status == 200, reply.body
    (call,) = calls_for(upstream, tenant)
    assert call == _parsed(with_tenant), "the transcoder read the same fields"


def _parsed(body: str) -> Message:
    return json_format.Parse(body, ingest_pb2.IngestEventsRequest())


@pytest.mark.parametrize(
    ("key", "field"),
    [
        (r"\ud83d\ude00", "events[0].\U0001f600"),
        (r"a\"b\\c\/d\n", 'events[0].a"b\\c/d\n'),
        (r"\ud800", "events[0].\ufffd"),
        (r"caf\u00e9", "events[0].café"),
    ],
    ids=["surrogate pair", "simple escapes", "lone surrogate", "latin-1"],
)
def test_an_unknown_escaped_key_is_named_decoded_in_valid_json(
    edge: Edge, key: str, field: str
) -> None:
    body = '{"events": [{"event_id": "e-1", "' + key + '": 1}]}'

    reply = request(edge, "POST", f"/v1/tenants/{new_tenant('named')}/events:batch", body.encode())

    document = assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)
    assert document["details"][0]["field_violations"][0]["field"] == field


# ------------------------------------------------------------------ every local reply is JSON


def test_oversized_headers_get_431_json(edge: Edge) -> None:
    reply = request(edge, "GET", "/v1/tenants/t1/entities/e1", headers={"x-big": "a" * 70_000})

    document = assert_status_json(reply, 431, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert document["message"] == "request headers too large"


def test_an_oversized_url_gets_431_json(edge: Edge) -> None:
    reply = request(edge, "GET", "/v1/tenants/t1/entities/" + "e" * 70_000)

    assert_status_json(reply, 431, grpc.StatusCode.RESOURCE_EXHAUSTED)


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nothing-here", 404, grpc.StatusCode.NOT_FOUND),
        ("GET", "/v1/tenants/t1/enrichmentSpec", 503, grpc.StatusCode.UNAVAILABLE),
        ("GET", "/v1/tenants/t1/entities/e1?bogus=1", 400, grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["no route", "no upstream", "refused by the transcoder"],
)
def test_each_reply_envoy_makes_itself_is_status_json(
    edge: Edge, method: str, path: str, status: int, code: grpc.StatusCode
) -> None:
    assert_status_json(request(edge, method, path), status, code)


def test_a_malformed_request_gets_400_json(edge: Edge) -> None:
    reply = request(
        edge,
        "POST",
        "/v1/tenants/t1/events",
        b"{}",
        headers={"content-length": "2", "transfer-encoding": "chunked"},
    )

    assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)


# ------------------------------------------------------------------ streams


@pytest.fixture
def stub(edge: Edge) -> Iterator[ingest_pb2_grpc.IngestServiceStub]:
    with grpc.insecure_channel(edge.envoy.address) as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel)


def _open_stream(
    stub: ingest_pb2_grpc.IngestServiceStub,
    caller: str,
    requests: Iterator[ingest_pb2.StreamEventsRequest],
) -> Any:
    return stub.StreamEvents(requests, metadata=[("x-caller", caller)])


def _idle_until(released: threading.Event) -> Iterator[ingest_pb2.StreamEventsRequest]:
    released.wait(timeout=120)
    yield from ()


def _outcome(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        for _response in call:
            pass
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def test_an_idle_stream_is_closed_deadline_exceeded_by_the_idle_timeout(
    stub: ingest_pb2_grpc.IngestServiceStub,
) -> None:
    released = threading.Event()
    try:
        call = _open_stream(stub, new_tenant("idle"), _idle_until(released))

        code, details = _outcome(call)
    finally:
        released.set()

    assert (code, details) == (grpc.StatusCode.DEADLINE_EXCEEDED, "stream timeout")


def test_a_stream_that_keeps_sending_is_closed_at_its_maximum_duration(
    stub: ingest_pb2_grpc.IngestServiceStub,
) -> None:
    stop = threading.Event()

    def busy() -> Iterator[ingest_pb2.StreamEventsRequest]:
        # Well inside the idle timeout, so only the maximum duration can end the stream.
        while not stop.wait(STREAM_IDLE_TIMEOUT_SECONDS / 4):
            yield ingest_pb2.StreamEventsRequest()

    try:
        code, _details = _outcome(_open_stream(stub, new_tenant("busy"), busy()))
    finally:
        stop.set()

    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_streams_past_the_cap_are_refused_resource_exhausted_while_unary_calls_pass(
    edge: Edge, upstream: StreamingUpstream, stub: ingest_pb2_grpc.IngestServiceStub
) -> None:
    released = threading.Event()
    held = []
    try:
        wait_until(lambda: upstream.streams_open() == 0, timeout=30, what="no stream open")
        for n in range(MAX_OPEN_STREAMS):
            held.append(_open_stream(stub, f"held-{n}", _idle_until(released)))
        wait_until(
            lambda: upstream.streams_open() == MAX_OPEN_STREAMS,
            timeout=10,
            what=f"{MAX_OPEN_STREAMS} streams open at the service",
        )

        surplus = _outcome(_open_stream(stub, "surplus", _idle_until(released)))
        tenant = new_tenant("unary")
        unary = request(edge, "POST", f"/v1/tenants/{tenant}/events:batch", b'{"events": []}')
    finally:
        released.set()

    assert surplus == (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many open streams or requests")
    assert unary.status == 200, unary.body
    assert all(_outcome(call)[0] != grpc.StatusCode.RESOURCE_EXHAUSTED for call in held)
