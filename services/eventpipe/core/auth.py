"""JWT authentication and authorization, enforced in every service (and at the Envoy edge).

A token is an RS256 JWT with ``iss``, ``aud``, ``exp``, a ``tenant_id`` claim and a
space-separated ``scope`` claim. The services check it again behind Envoy because inside the
mesh a caller can reach them directly:

- the request's ``tenant_id`` must equal the token's tenant claim;
- each service needs its scope: ingest -> ``ingest``, query -> ``query``, store and enrich ->
  ``admin``; RPCs that span tenants (``OPERATOR_METHODS``) need ``operator`` instead, and an
  operator token may carry no tenant at all;
- ``exp``, ``nbf`` and ``iat`` must be JSON numbers, as Envoy's jwt_authn requires;
- health and reflection stay open.

The token is verified in the RPC's worker thread, never on grpcio's single dispatch thread, and
never waits for the identity provider: the JWKS is refreshed in the background (short timeout,
the last good keys kept while the provider is down), and verified tokens are cached by digest
until they expire, for at most ``token_cache_seconds``. See docs/auth.md.

Refusals say only "missing or invalid token" / "permission denied", nothing that helps an
attacker. Auth is on when a JWKS is configured (``EVENTPIPE_AUTH_JWKS_FILE`` or
``EVENTPIPE_AUTH_JWKS_URL``); the local stack generates a key pair at setup, never committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventpipe.core.interceptors import has_own_thread_pool, rebuild_handler

log = logging.getLogger(__name__)

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
OPERATOR_SCOPE = "operator"
SCOPES = ("ingest", "query", "admin", OPERATOR_SCOPE)
SERVICE_SCOPES = {
    "eventpipe.ingest.v1.IngestService": "ingest",
    "eventpipe.query.v1.QueryService": "query",
    "eventpipe.store.v1.StoreService": "admin",
    "eventpipe.enrich.v1.EnrichService": "admin",
}
OPERATOR_METHODS = frozenset({"/eventpipe.store.v1.StoreService/GetConsumerStatus"})
"""RPCs whose answer spans tenants: they need the operator scope, and no tenant check applies.
Every other RPC's request carries a tenant_id, and a request without one is refused."""
TENANT_CLAIM = "tenant_id"
NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")
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
    jwks_refresh_seconds: float = Field(
        300.0, ge=1, le=86400, description="How often the JWKS is read again, in the background."
    )
    jwks_fetch_timeout_seconds: float = Field(
        2.0, gt=0, le=60, description="How long one JWKS fetch may take before it is abandoned."
    )
    jwks_retry_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="After a failed fetch, or a token naming an unknown key id: the soonest the "
        "next background fetch.",
    )
    token_cache_size: int = Field(
        10_000, ge=0, le=1_000_000, description="Verified tokens remembered (0: none)."
    )
    token_cache_seconds: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="Longest a verified token is trusted without verifying it again (it never "
        "outlives its exp): the bound on how late a key dropped from the JWKS takes effect.",
    )

    @property
    def enabled(self) -> bool:
        return self.jwks_file is not None or bool(self.jwks_url)


@dataclass(frozen=True)
class Principal:
    """Who called: the token's subject, tenant (None for an operator token without one) and
    scopes."""

    subject: str
    tenant_id: str | None
    scopes: frozenset[str]


class TokenError(Exception):
    """The token is missing, malformed, expired, badly signed or for another audience."""


_PRINCIPAL: ContextVar[Principal | None] = ContextVar("eventpipe_principal", default=None)


def current_principal() -> Principal | None:
    """The verified caller of the RPC this thread serves (None when auth is off)."""
    return _PRINCIPAL.get()


def current_tenant() -> str | None:
    """The verified caller's tenant, if any."""
    principal = _PRINCIPAL.get()
    return principal.tenant_id if principal is not None else None


# ---------------------------------------------------------------- signing keys


JwksSource = Callable[[], jwt.PyJWKSet]


def jwks_source(settings: AuthSettings) -> JwksSource:
    """Reads the JWKS from the configured file or URL (with the fetch timeout)."""
    jwks_file = settings.jwks_file
    if jwks_file is not None:
        return lambda: jwt.PyJWKSet.from_json(jwks_file.read_text())
    assert settings.jwks_url
    client = jwt.PyJWKClient(
        settings.jwks_url, cache_jwk_set=False, timeout=settings.jwks_fetch_timeout_seconds
    )
    return lambda: jwt.PyJWKSet.from_dict(client.fetch_data())


class SigningKeys:
    """The JWKS's keys by key id, refreshed by a background thread.

    A failed fetch keeps the last good keys. A token naming an unknown key id asks for an early
    fetch (at most one per ``retry_seconds``) and is refused meanwhile: no caller ever waits for
    the identity provider. ``on_removed`` hears of key ids a refresh dropped.
    """

    def __init__(
        self,
        source: JwksSource,
        *,
        refresh_seconds: float,
        retry_seconds: float,
        on_removed: Callable[[set[str]], None] = lambda _kids: None,
    ) -> None:
        self._source = source
        self.refresh_seconds = refresh_seconds
        self.retry_seconds = retry_seconds
        self._on_removed = on_removed
        self._keys: dict[str, Any] = {}
        self._last_error = "not fetched yet"
        self._next_early_fetch = 0.0
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, kid: str) -> Any | None:
        key = self._keys.get(kid)
        if key is None:
            self.request_refresh()
        return key

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def refresh(self) -> bool:
        """Fetches the JWKS once; on failure keeps the last good keys. True when it worked."""
        try:
            jwks = self._source()
            keys = {key.key_id: key.key for key in jwks.keys if key.key_id}
            if not keys:
                raise ValueError("the JWKS holds no key with a key id")
        except Exception as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "JWKS fetch failed; keeping the last good keys",
                extra={"error": self._last_error, "keys": len(self._keys)},
            )
            return False
        removed = set(self._keys) - set(keys)
        self._keys = keys
        self._last_error = ""
        if removed:
            log.info("JWKS dropped keys", extra={"key_ids": sorted(removed)})
            self._on_removed(removed)
        return True

    def request_refresh(self) -> None:
        if time.monotonic() >= self._next_early_fetch:
            self._wake.set()

    def check_ready(self) -> None:
        """Readiness: raises while no key was ever fetched (no token could be verified)."""
        if not self._keys:
            raise RuntimeError(f"no JWKS signing keys yet ({self._last_error})")

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="jwks-refresh", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            ok = self.refresh()
            self._next_early_fetch = time.monotonic() + self.retry_seconds
            self._wake.wait(self.refresh_seconds if ok else self.retry_seconds)
            self._wake.clear()
            # An early fetch never comes sooner than retry_seconds after the last one.
            wait = self._next_early_fetch - time.monotonic()
            if wait > 0 and not self._stopped.is_set():
                self._stopped.wait(wait)


# ---------------------------------------------------------------- verified-token cache


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    key_id: str
    valid_until: float  # wall clock


class TokenCache:
    """Verified tokens by SHA-256 digest, least recently used first out.

    An entry is trusted until the token's ``exp`` and at most ``max_seconds`` after it was
    verified; entries verified with a key the JWKS dropped are forgotten at once.
    """

    def __init__(
        self, max_entries: int, max_seconds: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_entries = max_entries
        self.max_seconds = max_seconds
        self._clock = clock
        self._entries: OrderedDict[bytes, _Verified] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes) -> Principal | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if entry.valid_until <= self._clock():
                del self._entries[digest]
                return None
            self._entries.move_to_end(digest)
            return entry.principal

    def put(self, digest: bytes, principal: Principal, key_id: str, expires_at: float) -> None:
        if self.max_entries == 0 or self.max_seconds == 0:
            return
        valid_until = min(expires_at, self._clock() + self.max_seconds)
        if valid_until <= self._clock():
            return
        with self._lock:
            self._entries[digest] = _Verified(principal, key_id, valid_until)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget_keys(self, key_ids: set[str]) -> None:
        with self._lock:
            for digest in [d for d, e in self._entries.items() if e.key_id in key_ids]:
                del self._entries[digest]


# ---------------------------------------------------------------- verification


def check_numeric_dates(claims: dict[str, Any]) -> None:
    """``exp``, ``nbf`` and ``iat``, when present, must be JSON numbers in 0..2^64, as Envoy's
    jwt_authn (jwt_verify_lib) requires: PyJWT alone accepts ``"exp": "1999999999"``."""
    for name in NUMERIC_DATE_CLAIMS:
        if name not in claims:
            continue
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TokenError(f"the {name} claim is not a number")
        if not math.isfinite(value) or value < 0 or value >= 2**64:
            raise TokenError(f"the {name} claim is out of range")


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    scope = claims.get("scope", "")
    scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
    tenant = claims.get(TENANT_CLAIM)
    if tenant is None and OPERATOR_SCOPE in scopes:
        tenant_id = None
    elif isinstance(tenant, str) and tenant:
        tenant_id = tenant
    else:
        raise TokenError("no tenant claim")
    return Principal(subject=str(claims.get("sub", "")), tenant_id=tenant_id, scopes=scopes)


class TokenVerifier:
    """Verifies RS256 tokens against the JWKS, remembering the ones it verified."""

    def __init__(self, settings: AuthSettings, *, source: JwksSource | None = None) -> None:
        self.settings = settings
        self.cache = TokenCache(settings.token_cache_size, settings.token_cache_seconds)
        self.keys = SigningKeys(
            source or jwks_source(settings),
            refresh_seconds=settings.jwks_refresh_seconds,
            retry_seconds=settings.jwks_retry_seconds,
            on_removed=self.cache.forget_keys,
        )
        if settings.jwks_file is not None and source is None:
            # A local file is read at start, so a missing or broken one stops the process.
            self.keys.refresh()
            self.keys.check_ready()

    def start(self) -> None:
        """Starts the background JWKS refresh."""
        self.keys.start()

    def stop(self) -> None:
        self.keys.stop()

    def verify(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        cached = self.cache.get(digest)
        if cached is not None:
            return cached
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise TokenError(str(exc)) from exc
        if not isinstance(kid, str):
            raise TokenError("no key id")
        key = self.keys.get(kid)
        if key is None:
            raise TokenError("unknown key id")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=["RS256"],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                # Envoy checks exp and nbf but not whether iat lies ahead: neither do we.
                options={"require": ["exp", "iss", "aud"], "verify_iat": False},
            )
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError) as exc:
            raise TokenError(str(exc)) from exc
        check_numeric_dates(claims)
        principal = principal_from_claims(claims)
        self.cache.put(digest, principal, kid, float(claims["exp"]))
        return principal


# ---------------------------------------------------------------- the interceptor


def _service_of(method: str) -> str:
    return method.strip("/").split("/")[0]


def required_scope(method: str) -> str | None:
    """The scope a method needs; None for a method of no known service (always refused)."""
    if method in OPERATOR_METHODS:
        return OPERATOR_SCOPE
    return SERVICE_SCOPES.get(_service_of(method))


def _bearer_token(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            header = value if isinstance(value, str) else value.decode("latin-1")
            scheme, _, token = header.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the bearer token, the method's scope and the request's tenant.

    ``intercept_service`` runs on grpcio's one dispatch thread, so it only wraps the handler:
    the token is verified inside the wrapper, in the worker thread that serves the RPC.
    """

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        method: str = details.method
        if handler is None or method.startswith(OPEN_SERVICES) or has_own_thread_pool(handler):
            return handler
        return rebuild_handler(handler, self._guarded(handler, method))

    def authorize(self, context: grpc.ServicerContext, method: str) -> Principal:
        """Verifies the caller's token and scope; aborts the RPC when either fails."""
        token = _bearer_token(context)
        if not token:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        try:
            principal = self.verifier.verify(token)
        except TokenError as exc:
            log.info("token refused", extra={"reason": str(exc)})
            context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        scope = required_scope(method)
        if scope is None or scope not in principal.scopes:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, DENIED_MESSAGE)
        return principal

    def _guarded(
        self, handler: grpc.RpcMethodHandler, method: str
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        operator = method in OPERATOR_METHODS

        def admit(request: Any, context: grpc.ServicerContext) -> tuple[Principal, Any]:
            principal = self.authorize(context, method)
            if operator:
                return principal, request
            if handler.request_streaming:
                return principal, _checked_stream(request, principal, context)
            _check_tenant(request, principal, context)
            return principal, request

        def wrap(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def unary_out(request: Any, context: grpc.ServicerContext) -> Any:
                principal, request = admit(request, context)
                token = _PRINCIPAL.set(principal)
                try:
                    return behavior(request, context)
                finally:
                    _PRINCIPAL.reset(token)

            def stream_out(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                principal, request = admit(request, context)
                token = _PRINCIPAL.set(principal)
                try:
                    yield from behavior(request, context)
                finally:
                    # A generator may be closed from another context (garbage collection).
                    with contextlib.suppress(ValueError):
                        _PRINCIPAL.reset(token)

            return stream_out if handler.response_streaming else unary_out

        return wrap


def _check_tenant(request: Any, principal: Principal, context: grpc.ServicerContext) -> None:
    # Fails closed: a request without a tenant_id (only OPERATOR_METHODS may have none), or a
    # caller without a tenant (an operator token), never passes.
    tenant = getattr(request, "tenant_id", None)
    if tenant is None or principal.tenant_id is None or tenant != principal.tenant_id:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, DENIED_MESSAGE)


def _checked_stream(
    requests: Iterable[Any], principal: Principal, context: grpc.ServicerContext
) -> Iterator[Any]:
    for request in requests:
        _check_tenant(request, principal, context)
        yield request


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
    tenant_id: str | None,
    scopes: Iterable[str],
    issuer: str = "eventpipe-local",
    audience: str = "eventpipe",
    ttl_seconds: int = 3600,
    subject: str = "developer",
) -> str:
    """Signs a development token with the local key (``tenant_id`` None: no tenant claim, for
    an operator token)."""
    kid = json.loads(jwks_path.read_text())["keys"][0]["kid"]
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": now,
        "exp": now + ttl_seconds,
        "scope": " ".join(scopes),
    }
    if tenant_id is not None:
        claims[TENANT_CLAIM] = tenant_id
    return jwt.encode(claims, private_key_pem, algorithm="RS256", headers={"kid": kid})
