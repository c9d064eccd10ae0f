"""Which scope each RPC needs, the tenant check, and where the token is verified: inside the
handler (the worker thread), never in ``intercept_service`` (grpcio's dispatch thread)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import Any

import grpc
import jwt
import pytest
from eventpipe.cli import auth_cmd
from eventpipe.core.auth import (
    OPERATOR_METHODS,
    OPERATOR_SCOPE,
    SERVICE_SCOPES,
    AuthInterceptor,
    Principal,
    current_principal,
    required_scope,
)
from eventpipe.enrich.v1 import enrich_pb2
from eventpipe.ingest.v1 import ingest_pb2
from eventpipe.query.v1 import query_pb2
from eventpipe.store.v1 import store_pb2

API_MODULES = (ingest_pb2, store_pb2, enrich_pb2, query_pb2)


def _methods() -> list[tuple[str, Any]]:
    return [
        (f"/{service.full_name}/{method.name}", method)
        for module in API_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def test_every_rpc_without_a_tenant_in_its_request_is_operator_only() -> None:
    for name, method in _methods():
        has_tenant = "tenant_id" in method.input_type.fields_by_name
        assert (name in OPERATOR_METHODS) == (not has_tenant), name
        expected = OPERATOR_SCOPE if not has_tenant else SERVICE_SCOPES[name.split("/")[1]]
        assert required_scope(name) == expected


def test_consumer_status_needs_the_operator_scope_not_admin() -> None:
    assert required_scope("/eventpipe.store.v1.StoreService/GetConsumerStatus") == "operator"
    assert required_scope("/eventpipe.store.v1.StoreService/ListRawEvents") == "admin"
    assert required_scope("/unknown.Service/Method") is None


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, token: str | None) -> None:
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    def abort(self, code: grpc.StatusCode, _details: str) -> None:
        self.code = code
        raise Aborted(code)


class FakeVerifier:
    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.calls = 0

    def verify(self, _token: str) -> Principal:
        self.calls += 1
        return self.principal


def _intercept(
    verifier: FakeVerifier, method: str, behavior: Callable[..., Any]
) -> tuple[grpc.RpcMethodHandler, FakeVerifier]:
    handler = grpc.unary_unary_rpc_method_handler(behavior)
    details = argparse.Namespace(method=method, invocation_metadata=())
    wrapped = AuthInterceptor(verifier).intercept_service(lambda _d: handler, details)  # type: ignore[arg-type]
    return wrapped, verifier


def test_the_token_is_verified_when_the_handler_runs_not_when_it_is_looked_up() -> None:
    seen: list[Principal | None] = []
    verifier = FakeVerifier(Principal("s", "acme", frozenset({"ingest"})))
    handler, _ = _intercept(
        verifier,
        "/eventpipe.ingest.v1.IngestService/IngestEvents",
        lambda _request, _context: seen.append(current_principal()) or "ok",
    )
    assert verifier.calls == 0

    answer = handler.unary_unary(ingest_pb2.IngestEventsRequest(tenant_id="acme"), FakeContext("t"))

    assert answer == "ok" and verifier.calls == 1
    assert seen == [verifier.principal]
    assert current_principal() is None


@pytest.mark.parametrize(
    ("principal", "method", "request_message", "code"),
    [
        (
            Principal("s", "acme", frozenset({"admin", "ingest", "query"})),
            "/eventpipe.store.v1.StoreService/GetConsumerStatus",
            store_pb2.GetConsumerStatusRequest(),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        (
            Principal("s", None, frozenset({"operator"})),
            "/eventpipe.store.v1.StoreService/GetConsumerStatus",
            store_pb2.GetConsumerStatusRequest(),
            None,
        ),
        (
            Principal("s", None, frozenset({"operator", "admin"})),
            "/eventpipe.store.v1.StoreService/ListRawEvents",
            store_pb2.ListRawEventsRequest(tenant_id="acme"),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        (
            Principal("s", "acme", frozenset({"admin"})),
            "/eventpipe.store.v1.StoreService/ListRawEvents",
            store_pb2.ListRawEventsRequest(tenant_id="globex"),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        (
            Principal("s", "acme", frozenset({"admin"})),
            "/eventpipe.store.v1.StoreService/ListRawEvents",
            store_pb2.ListRawEventsRequest(tenant_id="acme"),
            None,
        ),
    ],
)
def test_scopes_and_tenants_decide_who_reaches_the_servicer(
    principal: Principal, method: str, request_message: Any, code: grpc.StatusCode | None
) -> None:
    handler, _ = _intercept(FakeVerifier(principal), method, lambda _r, _c: "reached")
    context = FakeContext("t")
    with contextlib.suppress(Aborted):
        handler.unary_unary(request_message, context)
    assert context.code == code


def test_a_call_without_a_token_is_unauthenticated_without_verifying_anything() -> None:
    verifier = FakeVerifier(Principal("s", "acme", frozenset({"ingest"})))
    handler, _ = _intercept(
        verifier, "/eventpipe.ingest.v1.IngestService/IngestEvents", lambda _r, _c: "reached"
    )
    context = FakeContext(None)
    with pytest.raises(Aborted):
        handler.unary_unary(ingest_pb2.IngestEventsRequest(tenant_id="acme"), context)
    assert context.code == grpc.StatusCode.UNAUTHENTICATED and verifier.calls == 0


def test_the_cli_mints_an_operator_token_without_a_tenant_but_no_other_token(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(tenant=None, scope="operator", keys_dir=tmp_path, ttl=60)
    assert auth_cmd._token(args) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert claims["scope"] == "operator" and "tenant_id" not in claims

    with pytest.raises(SystemExit, match="--tenant is required"):
        auth_cmd._token(argparse.Namespace(tenant=None, scope="admin", keys_dir=tmp_path, ttl=60))
