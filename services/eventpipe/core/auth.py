"""JWT authentication and authorization, enforced in every service (and at the Envoy edge).

A token is an RS256 JWT with ``iss``, ``aud``, ``exp``, a ``tenant_id`` claim and a
space-separated ``scope`` claim. The services check it again behind Envoy because inside the
mesh a caller can reach them directly:

- the request's ``tenant_id`` must equal the token's tenant claim;
- each service needs its scope: ingest -> ``ingest``, query -> ``query``, store and enrich ->
  ``admin``;
- health and reflection stay open.

Refusals say only "missing or invalid token" / "permission denied", nothing that helps an
attacker. Auth is on when a JWKS is configured (``EVENTPIPE_AUTH_JWKS_FILE`` or
``EVENTPIPE_AUTH_JWKS_URL``); the local stack generates a key pair at setup, never committed.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
SCOPES = ("ingest", "query", "admin")
SERVICE_SCOPES = {
    "eventpipe.ingest.v1.IngestService": "ingest",
    "eventpipe.query.v1.QueryService": "query",
    "eventpipe.store.v1.StoreService": "admin",
    "eventpipe.enrich.v1.EnrichService": "admin",
}
TENANT_CLAIM = "tenant_id"
UNAUTHENTICATED_MESSAGE = "missing or invalid token"
DENIED_MESSAGE = "permission denied"


class AuthSettings(BaseSettings):
    """How tokens are verified; auth is off unless a JWKS source is set."""

    model_config = SettingsConfigDict(env_prefix="EVENTPIPE_AUTH_", extra="ignore", frozen=True)

    jwks_file: Path | None = Field(None, description="Local JWKS file (the local stack's).")
    jwks_url: str | None = Field(None, description="Remote JWKS URL (production).")
    issuer: str = Field("eventpipe-local", description="Expected `iss` claim.")
    audience: str = Field("eventpipe", description="Expected `aud` claim.")
    leeway_seconds: int = Field(30, ge=0, le=300, description="Clock skew tolerated.")

    @property
    def enabled(self) -> bool:
        return self.jwks_file is not None or bool(self.jwks_url)


@dataclass(frozen=True)
class Principal:
    """Who called: the token's subject, tenant and scopes."""

    subject: str
    tenant_id: str
    scopes: frozenset[str]


class TokenError(Exception):
    """The token is missing, malformed, expired, badly signed or for another audience."""


class TokenVerifier:
    """Verifies RS256 tokens against a JWKS (file or URL)."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._jwks_client = jwt.PyJWKClient(settings.jwks_url) if settings.jwks_url else None
        self._keys: dict[str, Any] = {}
        if settings.jwks_file is not None:
            jwks = jwt.PyJWKSet.from_json(settings.jwks_file.read_text())
            self._keys = {key.key_id: key.key for key in jwks.keys if key.key_id}

    def _key_for(self, token: str) -> Any:
        if self._jwks_client is not None:
            return self._jwks_client.get_signing_key_from_jwt(token).key
        kid = jwt.get_unverified_header(token).get("kid")
        if kid not in self._keys:
            raise TokenError("unknown key id")
        return self._keys[kid]

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                key=self._key_for(token),
                algorithms=["RS256"],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud", TENANT_CLAIM]},
            )
        except (jwt.PyJWTError, ValueError) as exc:
            raise TokenError(str(exc)) from exc
        tenant = claims.get(TENANT_CLAIM)
        if not isinstance(tenant, str) or not tenant:
            raise TokenError("no tenant claim")
        return Principal(
            subject=str(claims.get("sub", "")),
            tenant_id=tenant,
            scopes=frozenset(str(claims.get("scope", "")).split()),
        )


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the bearer token, the service's scope and the request's tenant."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        method: str = details.method
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        service = method.strip("/").split("/")[0]
        scope = SERVICE_SCOPES.get(service)
        metadata = dict(details.invocation_metadata or ())
        principal, refusal = self._authenticate(metadata.get("authorization", ""), scope)
        if refusal is not None:
            return _refusing_handler(handler, *refusal)
        assert principal is not None
        return _tenant_checking_handler(handler, principal)

    def _authenticate(
        self, header: str, scope: str | None
    ) -> tuple[Principal | None, tuple[grpc.StatusCode, str] | None]:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None, (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        try:
            principal = self.verifier.verify(token.strip())
        except TokenError as exc:
            log.info("token refused", extra={"reason": str(exc)})
            return None, (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        if scope is None or scope not in principal.scopes:
            return None, (grpc.StatusCode.PERMISSION_DENIED, DENIED_MESSAGE)
        return principal, None


def _check_tenant(request: Any, principal: Principal, context: grpc.ServicerContext) -> None:
    # Requests without a tenant_id field (e.g. GetConsumerStatus) are admin-only and global.
    tenant = getattr(request, "tenant_id", None)
    if tenant is not None and tenant != principal.tenant_id:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, DENIED_MESSAGE)


def _checked_stream(
    requests: Iterable[Any], principal: Principal, context: grpc.ServicerContext
) -> Iterator[Any]:
    for request in requests:
        _check_tenant(request, principal, context)
        yield request


def _tenant_checking_handler(
    handler: grpc.RpcMethodHandler, principal: Principal
) -> grpc.RpcMethodHandler:
    def unary_in(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            _check_tenant(request, principal, context)
            return behavior(request, context)

        return wrapped

    def stream_in(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(requests: Iterable[Any], context: grpc.ServicerContext) -> Any:
            return behavior(_checked_stream(requests, principal, context), context)

        return wrapped

    return _rebuild(handler, unary_in, stream_in)


def _refusing_handler(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    def refuse(_behavior: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(_request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(code, message)

        return wrapped

    return _rebuild(handler, refuse, refuse)


def _rebuild(
    handler: grpc.RpcMethodHandler,
    unary_in: Callable[[Callable[..., Any]], Callable[..., Any]],
    stream_in: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> grpc.RpcMethodHandler:
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary_in(handler.unary_unary), **serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(unary_in(handler.unary_stream), **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(stream_in(handler.stream_unary), **serializers)
    return grpc.stream_stream_rpc_method_handler(stream_in(handler.stream_stream), **serializers)


# ---------------------------------------------------------------- local keys and dev tokens


def generate_local_keys(directory: Path) -> tuple[Path, Path]:
    """Creates (once) an RSA key pair and its JWKS under ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path, jwks_path = directory / "signing-key.pem", directory / "jwks.json"
    if private_path.exists() and jwks_path.exists():
        return private_path, jwks_path
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private_path.chmod(0o600)
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public_jwk.update({"kid": uuid.uuid4().hex[:16], "alg": "RS256", "use": "sig"})
    jwks_path.write_text(json.dumps({"keys": [public_jwk]}, indent=2))
    return private_path, jwks_path


def mint_token(
    private_key_pem: bytes,
    jwks_path: Path,
    *,
    tenant_id: str,
    scopes: Iterable[str],
    issuer: str = "eventpipe-local",
    audience: str = "eventpipe",
    ttl_seconds: int = 3600,
    subject: str = "developer",
) -> str:
    """Signs a development token with the local key."""
    kid = json.loads(jwks_path.read_text())["keys"][0]["kid"]
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": now,
        "exp": now + ttl_seconds,
        TENANT_CLAIM: tenant_id,
        "scope": " ".join(scopes),
    }
    return jwt.encode(claims, private_key_pem, algorithm="RS256", headers={"kid": kid})
