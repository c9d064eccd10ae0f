"""Authentication, per-tenant rate limits and body limits at the edge, end to end: the four real
services behind the real Envoy, started with auth as ``eventpipe stack up`` does by default.

Each token case is tried three ways: REST through Envoy, gRPC through Envoy, and gRPC straight
to the service (inside the mesh a caller can skip Envoy, so the services check the token too).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from eventpipe.core.auth import generate_local_keys, mint_token
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from eventpipe.query.v1 import query_pb2, query_pb2_grpc
from eventpipe.stack.stack import Stack, dev_token
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import EDGE_MAX_REQUEST_BYTES, EDGE_TENANT_BURST
from tests.helpers.events import event_json as event
from tests.helpers.events import new_tenant
from tests.helpers.http import Reply, json_body
from tests.helpers.http import http as send

UNAUTHENTICATED_MESSAGE = "missing or invalid token"
DENIED_MESSAGE = "permission denied"


def http(
    stack: Stack,
    path: str,
    *,
    token: str | None = None,
    method: str = "GET",
    body: Any = None,
) -> Reply:
    data, headers = json_body(body)
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return send(stack.envoy.base_url + path, method=method, body=data, headers=headers)


def ingest_rest(stack: Stack, tenant: str, token: str | None) -> Reply:
    return http(
        stack,
        f"/v1/tenants/{tenant}/events",
        token=token,
        method="POST",
        body=event(f"rest-{uuid.uuid4().hex[:8]}"),
    )


def ingest_grpc(address: str, tenant: str, token: str | None) -> grpc.StatusCode:
    request = json_format.ParseDict(
        {"tenant_id": tenant, "event": event(f"grpc-{uuid.uuid4().hex[:8]}")},
        ingest_pb2.IngestEventRequest(),
    )
    metadata = [("authorization", f"Bearer {token}")] if token is not None else []
    with grpc.insecure_channel(address) as channel:
        try:
            ingest_pb2_grpc.IngestServiceStub(channel).IngestEvent(
                request, metadata=metadata, timeout=30
            )
        except grpc.RpcError as error:
            assert error.details() in (UNAUTHENTICATED_MESSAGE, DENIED_MESSAGE, None) or (
                error.code()
                not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
            ), error.details()
            return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


# ------------------------------------------------------------------ tokens


def token(stack: Stack, tenant: str, scopes: tuple[str, ...] = ("ingest", "query")) -> str:
    minted = dev_token(stack.config, tenant, scopes)
    assert minted is not None
    return minted


def _local_keys(stack: Stack) -> tuple[bytes, Path]:
    private_path, jwks_path = generate_local_keys(stack.config.auth_dir)
    return private_path.read_bytes(), jwks_path


def _expired(stack: Stack, tenant: str) -> str:
    key, jwks = _local_keys(stack)
    return mint_token(key, jwks, tenant_id=tenant, scopes=["ingest"], ttl_seconds=-3600)


def _wrong_audience(stack: Stack, tenant: str) -> str:
    key, jwks = _local_keys(stack)
    return mint_token(key, jwks, tenant_id=tenant, scopes=["ingest"], audience="another-api")


def _wrong_issuer(stack: Stack, tenant: str) -> str:
    key, jwks = _local_keys(stack)
    return mint_token(key, jwks, tenant_id=tenant, scopes=["ingest"], issuer="https://evil")


def _badly_signed(stack: Stack, tenant: str, tmp_dir: Path) -> str:
    # Another key, but the kid of the real one: only the signature gives it away.
    other_key, _ = generate_local_keys(tmp_dir)
    _, jwks = _local_keys(stack)
    return mint_token(other_key.read_bytes(), jwks, tenant_id=tenant, scopes=["ingest"])


def _without_expiry(stack: Stack, tenant: str) -> str:
    # Well signed by the real key, but never expiring: both Envoy and the services refuse it.
    key, jwks = _local_keys(stack)
    kid = json.loads(jwks.read_text())["keys"][0]["kid"]
    claims = {"iss": "eventpipe-local", "aud": "eventpipe", "tenant_id": tenant, "scope": "ingest"}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def _unsigned(_stack: Stack, tenant: str) -> str:
    claims = {"iss": "eventpipe-local", "aud": "eventpipe", "tenant_id": tenant}
    return jwt.encode({**claims, "scope": "ingest", "exp": 4_000_000_000}, None, algorithm="none")


BadToken = Callable[[Stack, str, Path], str | None]
BAD_TOKENS: dict[str, BadToken] = {
    "missing": lambda _s, _t, _d: None,
    "not a jwt": lambda _s, _t, _d: "not-a-jwt",
    "expired": lambda s, t, _d: _expired(s, t),
    "without exp": lambda s, t, _d: _without_expiry(s, t),
    "badly signed": lambda s, t, d: _badly_signed(s, t, d),
    "wrong audience": lambda s, t, _d: _wrong_audience(s, t),
    "wrong issuer": lambda s, t, _d: _wrong_issuer(s, t),
    "unsigned (alg none)": lambda s, t, _d: _unsigned(s, t),
}


# ------------------------------------------------------------------ a valid token


def test_a_valid_token_passes_through_envoy_over_rest(auth_stack: Stack) -> None:
    tenant = new_tenant("valid-rest")

    reply = ingest_rest(auth_stack, tenant, token(auth_stack, tenant))

    assert reply.status == 200, reply.body
    assert reply.json()["result"]["status"] != "ITEM_STATUS_UNSPECIFIED"


@pytest.mark.parametrize("route", ["envoy", "direct"])
def test_a_valid_token_passes_over_grpc(auth_stack: Stack, route: str) -> None:
    tenant = new_tenant(f"valid-{route}")
    address = (
        auth_stack.envoy.address if route == "envoy" else auth_stack.services["ingest"].address
    )

    assert ingest_grpc(address, tenant, token(auth_stack, tenant)) == grpc.StatusCode.OK


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("kind", BAD_TOKENS, ids=BAD_TOKENS.keys())
def test_a_bad_token_is_refused_401_over_rest_without_saying_why(
    auth_stack: Stack, kind: str, tmp_path: Path
) -> None:
    tenant = new_tenant("bad-rest")

    reply = ingest_rest(auth_stack, tenant, BAD_TOKENS[kind](auth_stack, tenant, tmp_path))

    assert reply.status == 401, reply.body
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json() == {"code": 16, "message": UNAUTHENTICATED_MESSAGE, "details": []}


@pytest.mark.parametrize("route", ["envoy", "direct"])
@pytest.mark.parametrize("kind", BAD_TOKENS, ids=BAD_TOKENS.keys())
def test_a_bad_token_is_refused_unauthenticated_over_grpc(
    auth_stack: Stack, kind: str, route: str, tmp_path: Path
) -> None:
    tenant = new_tenant(f"bad-{route}")
    address = (
        auth_stack.envoy.address if route == "envoy" else auth_stack.services["ingest"].address
    )

    code = ingest_grpc(address, tenant, BAD_TOKENS[kind](auth_stack, tenant, tmp_path))

    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_a_token_without_the_services_scope_is_refused_403_over_rest(auth_stack: Stack) -> None:
    tenant = new_tenant("scope-rest")

    reply = ingest_rest(auth_stack, tenant, token(auth_stack, tenant, scopes=("query",)))

    # Envoy accepted the token; the service, checking it again, refused the scope.
    assert reply.status == 403, reply.body
    assert reply.json()["code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert reply.json()["message"] == DENIED_MESSAGE


@pytest.mark.parametrize("route", ["envoy", "direct"])
def test_a_token_without_the_services_scope_is_refused_permission_denied_over_grpc(
    auth_stack: Stack, route: str
) -> None:
    tenant = new_tenant(f"scope-{route}")
    address = (
        auth_stack.envoy.address if route == "envoy" else auth_stack.services["ingest"].address
    )

    code = ingest_grpc(address, tenant, token(auth_stack, tenant, scopes=("query",)))

    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_a_token_for_another_tenant_is_refused_403_over_rest(auth_stack: Stack) -> None:
    tenant, other = new_tenant("mine"), new_tenant("theirs")

    reply = ingest_rest(auth_stack, other, token(auth_stack, tenant))

    assert reply.status == 403, reply.body
    assert reply.json() == {"code": 7, "message": DENIED_MESSAGE, "details": []}


@pytest.mark.parametrize("route", ["envoy", "direct"])
def test_a_token_for_another_tenant_is_refused_permission_denied_over_grpc(
    auth_stack: Stack, route: str
) -> None:
    tenant, other = new_tenant("mine"), new_tenant("theirs")
    address = (
        auth_stack.envoy.address if route == "envoy" else auth_stack.services["ingest"].address
    )

    code = ingest_grpc(address, other, token(auth_stack, tenant))

    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_the_health_route_needs_no_token(auth_stack: Stack) -> None:
    assert http(auth_stack, "/healthz").status == 200
    with grpc.insecure_channel(auth_stack.services["query"].address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_an_unknown_path_needs_a_token_before_it_is_404(auth_stack: Stack) -> None:
    tenant = new_tenant("probe")

    assert http(auth_stack, "/v1/no/such/path").status == 401
    reply = http(auth_stack, "/v1/no/such/path", token=token(auth_stack, tenant))
    assert reply.status == 404
    assert reply.json()["code"] == grpc.StatusCode.NOT_FOUND.value[0]


def test_a_real_services_invalid_argument_comes_back_400_with_field_violations(
    auth_stack: Stack,
) -> None:
    tenant = new_tenant("invalid")
    bad_event = {**event("e-1"), "event_id": ""}

    reply = http(
        auth_stack,
        f"/v1/tenants/{tenant}/events",
        token=token(auth_stack, tenant),
        method="POST",
        body=bad_event,
    )

    assert reply.status == 400, reply.body
    document = reply.json()
    assert document["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    (bad_request,) = [
        d for d in document["details"] if d["@type"].endswith("google.rpc.BadRequest")
    ]
    assert any("event_id" in v["field"] for v in bad_request["field_violations"])


# ------------------------------------------------------------------ rate limits


def test_a_tenant_past_its_burst_gets_429_while_another_tenant_is_served(
    auth_stack: Stack,
) -> None:
    busy, quiet = new_tenant("busy"), new_tenant("quiet")
    busy_token = token(auth_stack, busy)
    path = f"/v1/tenants/{busy}/entities/user-1"

    # A bounded burst on loopback: twice the tenant's bucket.
    replies = [http(auth_stack, path, token=busy_token) for _ in range(2 * EDGE_TENANT_BURST)]

    limited = [r for r in replies if r.status == 429]
    assert limited, [r.status for r in replies]
    assert all(r.status != 429 for r in replies[:EDGE_TENANT_BURST]), [r.status for r in replies]
    assert limited[0].json() == {"code": 8, "message": "rate limit exceeded", "details": []}
    assert limited[0].headers["x-ratelimit-limit"] == str(EDGE_TENANT_BURST)
    quiet_reply = http(
        auth_stack, f"/v1/tenants/{quiet}/entities/user-1", token=token(auth_stack, quiet)
    )
    assert quiet_reply.status != 429


def test_a_grpc_tenant_past_its_burst_gets_resource_exhausted(auth_stack: Stack) -> None:
    tenant = new_tenant("busy-grpc")
    metadata = [("authorization", f"Bearer {token(auth_stack, tenant)}")]
    request = query_pb2.GetEntityRequest(tenant_id=tenant, entity_id="user-1")
    codes = []
    with grpc.insecure_channel(auth_stack.envoy.address) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        for _ in range(2 * EDGE_TENANT_BURST):  # bounded, loopback only
            try:
                stub.GetEntity(request, metadata=metadata, timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())

    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
    assert grpc.StatusCode.RESOURCE_EXHAUSTED not in codes[:EDGE_TENANT_BURST], codes


# ------------------------------------------------------------------ body limits


def _batch(count: int, padding: int) -> dict[str, Any]:
    return {"events": [event(f"b-{n}-{uuid.uuid4().hex[:6]}", padding) for n in range(count)]}


def test_a_rest_body_over_the_limit_is_413_json(auth_stack: Stack) -> None:
    tenant = new_tenant("too-big")
    body = json.dumps(_batch(100, 1000)).encode()
    assert len(body) > EDGE_MAX_REQUEST_BYTES

    reply = http(
        auth_stack,
        f"/v1/tenants/{tenant}/events:batch",
        token=token(auth_stack, tenant),
        method="POST",
        body=body,
    )

    assert reply.status == 413, reply.body
    assert reply.json() == {"code": 8, "message": "request body too large", "details": []}


def test_a_rest_body_within_the_limit_is_ingested_whole(auth_stack: Stack) -> None:
    tenant = new_tenant("fits")
    batch = _batch(40, 1000)
    body = json.dumps(batch).encode()
    assert EDGE_MAX_REQUEST_BYTES // 2 < len(body) < EDGE_MAX_REQUEST_BYTES

    reply = http(
        auth_stack,
        f"/v1/tenants/{tenant}/events:batch",
        token=token(auth_stack, tenant),
        method="POST",
        body=body,
    )

    assert reply.status == 200, reply.body
    assert len(reply.json()["results"]) == len(batch["events"])


# ------------------------------------------------------------------ logs and help


def test_the_access_log_names_the_verified_tenant_and_never_the_token(auth_stack: Stack) -> None:
    tenant = new_tenant("logged")
    secret = token(auth_stack, tenant)
    path = f"/v1/tenants/{tenant}/entities/user-1"
    http(auth_stack, path, token=secret)
    log = auth_stack.envoy.access_log_path

    def lines() -> list[dict[str, Any]]:
        text = log.read_text() if log.exists() else ""
        return [json.loads(line) for line in text.splitlines() if tenant in line]

    wait_until(lambda: bool(lines()), timeout=15, what="the access log line")
    (line,) = lines()
    assert line["tenant"] == tenant
    assert line["path"] == path
    assert secret not in log.read_text()


def test_stack_up_prints_how_to_get_and_use_a_token(auth_stack: Stack) -> None:
    help_text = auth_stack.endpoints()

    assert "eventpipe auth token --tenant demo --scope ingest,query" in help_text
    assert "Authorization: Bearer $TOKEN" in help_text
