"""Services enforce the JWT themselves: signature, expiry, scope and tenant."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from eventpipe.core.auth import generate_local_keys, mint_token
from eventpipe.core.config import ServiceSettings
from eventpipe.core.server import RunningServer, ServiceDefinition, create_server
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@pytest.fixture
def keys(tmp_path: Path) -> tuple[bytes, Path]:
    private_path, jwks_path = generate_local_keys(tmp_path / "auth")
    return private_path.read_bytes(), jwks_path


@pytest.fixture
def server(keys: tuple[bytes, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    monkeypatch.setenv("EVENTPIPE_AUTH_JWKS_FILE", str(keys[1]))
    definition = ServiceDefinition(
        name="auth-test",
        grpc_service_names=["eventpipe.ingest.v1.IngestService"],
        # The generated base servicer answers UNIMPLEMENTED: reaching it means auth let us in.
        register=partial(
            ingest_pb2_grpc.add_IngestServiceServicer_to_server,
            ingest_pb2_grpc.IngestServiceServicer(),
        ),
    )
    running = create_server(
        definition, ServiceSettings(host="127.0.0.1", port=0), start_metrics=False
    )
    yield running
    running.stop(0)


def _call(server: RunningServer, token: str | None, tenant: str = "acme") -> grpc.StatusCode:
    metadata = [("authorization", f"Bearer {token}")] if token is not None else []
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        try:
            stub.IngestEvent(ingest_pb2.IngestEventRequest(tenant_id=tenant), metadata=metadata)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def _token(keys: tuple[bytes, Path], **overrides: object) -> str:
    args: dict[str, object] = {"tenant_id": "acme", "scopes": ["ingest"]}
    args.update(overrides)
    return mint_token(keys[0], keys[1], **args)  # type: ignore[arg-type]


def test_a_valid_token_reaches_the_servicer(server: RunningServer, keys) -> None:  # type: ignore[no-untyped-def]
    assert _call(server, _token(keys)) == grpc.StatusCode.UNIMPLEMENTED


def test_a_missing_token_is_unauthenticated(server: RunningServer) -> None:
    assert _call(server, None) == grpc.StatusCode.UNAUTHENTICATED


def test_an_expired_token_is_unauthenticated(server: RunningServer, keys) -> None:  # type: ignore[no-untyped-def]
    assert _call(server, _token(keys, ttl_seconds=-120)) == grpc.StatusCode.UNAUTHENTICATED


def test_a_token_signed_by_another_key_is_unauthenticated(  # type: ignore[no-untyped-def]
    server: RunningServer, keys, tmp_path: Path
) -> None:
    other_private, _ = generate_local_keys(tmp_path / "other")
    forged = mint_token(other_private.read_bytes(), keys[1], tenant_id="acme", scopes=["ingest"])
    assert _call(server, forged) == grpc.StatusCode.UNAUTHENTICATED


def test_a_token_for_another_audience_is_unauthenticated(server: RunningServer, keys) -> None:  # type: ignore[no-untyped-def]
    assert _call(server, _token(keys, audience="elsewhere")) == grpc.StatusCode.UNAUTHENTICATED


def test_a_token_without_the_services_scope_is_denied(server: RunningServer, keys) -> None:  # type: ignore[no-untyped-def]
    assert _call(server, _token(keys, scopes=["query"])) == grpc.StatusCode.PERMISSION_DENIED


def test_a_token_for_another_tenant_is_denied(server: RunningServer, keys) -> None:  # type: ignore[no-untyped-def]
    assert _call(server, _token(keys), tenant="globex") == grpc.StatusCode.PERMISSION_DENIED


def test_health_stays_open_without_a_token(server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            status = stub.Check(health_pb2.HealthCheckRequest()).status
            return status == health_pb2.HealthCheckResponse.SERVING  # type: ignore[no-any-return]

        # Any answer but SERVING (UNAUTHENTICATED included) keeps waiting, and fails at the end.
        wait_until(serving, timeout=10, what="health SERVING without a token")
