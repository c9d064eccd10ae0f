"""The shared bootstrap runs streaming RPCs on a pool of their own and caps them; with auth off
a stream counts against the tenant its first message names. A real server over loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial

import grpc
import pytest
from eventpipe.core.config import ServiceSettings
from eventpipe.core.server import RunningServer, ServiceDefinition, create_server
from eventpipe.ingest.v1 import ingest_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

SERVICE = "test.Streams"
Request = ingest_pb2.StreamEventsRequest


class Echo:
    """Answers each request with its batch_id and the serving thread's name; holds the stream
    open until ``release``. Also a unary method that answers at once."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def stream(self, requests: Iterator[Request], _context: object) -> Iterator[Request]:
        for request in requests:
            yield Request(batch_id=request.batch_id, tenant_id=threading.current_thread().name)
        self.released.wait(30)

    def unary(self, request: Request, _context: object) -> Request:
        return Request(batch_id=request.batch_id, tenant_id=threading.current_thread().name)

    def register(self, server: grpc.Server) -> None:
        codec = {
            "request_deserializer": Request.FromString,
            "response_serializer": Request.SerializeToString,
        }
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "Stream": grpc.stream_stream_rpc_method_handler(self.stream, **codec),
                        "Unary": grpc.unary_unary_rpc_method_handler(self.unary, **codec),
                    },
                ),
            )
        )


@pytest.fixture
def echo() -> Iterator[Echo]:
    servicer = Echo()
    yield servicer
    servicer.released.set()


@pytest.fixture
def server(echo: Echo, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    monkeypatch.delenv("EVENTPIPE_AUTH_JWKS_FILE", raising=False)
    monkeypatch.delenv("EVENTPIPE_AUTH_JWKS_URL", raising=False)
    definition = ServiceDefinition(
        name="limits", grpc_service_names=[SERVICE], register=partial(Echo.register, echo)
    )
    settings = ServiceSettings(
        host="127.0.0.1", port=0, max_workers=1, max_streams=4, max_streams_per_tenant=1
    )
    running = create_server(definition, settings, start_metrics=False)
    yield running
    running.stop(0)


def _open(channel: grpc.Channel, batch_id: str, tenant: str) -> tuple[grpc.Future, Request]:
    """Opens a stream that sends one request and then waits; returns it and its first answer."""
    stop = threading.Event()

    def requests() -> Iterator[Request]:
        yield Request(batch_id=batch_id, tenant_id=tenant)
        stop.wait(30)

    call = channel.stream_stream(
        f"/{SERVICE}/Stream",
        request_serializer=Request.SerializeToString,
        response_deserializer=Request.FromString,
    )(requests(), timeout=30)
    return call, next(call)


def test_streams_run_apart_from_the_unary_worker_and_count_against_the_first_messages_tenant(
    server: RunningServer,
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        first, answer = _open(channel, "a1", "acme")
        assert answer.tenant_id.startswith("limits-stream")
        _, other_tenant = _open(channel, "g1", "globex")
        assert other_tenant.batch_id == "g1"

        with pytest.raises(grpc.RpcError) as refused:
            _open(channel, "a2", "acme")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "tenant" in (refused.value.details() or "")
        status = rpc_status.from_call(refused.value)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(detail.Unpack(retry) for detail in status.details)

        # Two open streams, one unary worker: the unary call still has it.
        unary = channel.unary_unary(
            f"/{SERVICE}/Unary",
            request_serializer=Request.SerializeToString,
            response_deserializer=Request.FromString,
        )(Request(batch_id="u1"), timeout=5)
        assert unary.batch_id == "u1" and not unary.tenant_id.startswith("limits-stream")
        first.cancel()
