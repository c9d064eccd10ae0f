"""The local Envoy's config: envoy/envoy.yaml filled in, with or without JWT authentication.

The limits of the edge come from ``EVENTPIPE_EDGE_*`` variables (``EdgeSettings``). Auth is a
switch: ``EdgeAuth`` names the JWKS file and the claims Envoy checks; when given, the
``jwt_authn`` filter of envoy/jwt_authn.yaml takes the place of the template's marker filter,
right after the flood backstop and before the per-tenant rate limit that keys on its claim.
docs/edge.md describes the resulting listener.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventpipe.codegen import BODY_FILTER, DOCS_PAGE, OPENAPI_DOCUMENT
from eventpipe.core.config import load_settings

REPO_ROOT = Path(__file__).resolve().parents[3]
ENVOY_TEMPLATE = REPO_ROOT / "envoy" / "envoy.yaml"
JWT_AUTHN_TEMPLATE = REPO_ROOT / "envoy" / "jwt_authn.yaml"
JWT_AUTHN_MARKER = "eventpipe.jwt_authn_marker"
TENANT_HEADER = "x-eventpipe-tenant"
SERVICE_NAMES = ("ingest", "store", "enrich", "query")
HOST = "127.0.0.1"
MiB = 1024 * 1024
DURATION = r"^\d+s$"
# Largest body Envoy answers itself: the self-contained docs page at /docs is about 2.5 MB.
MAX_DOCS_BYTES = 8 * MiB
# An origin ending so allows every port of its host (and none).
ANY_PORT = ":*"
# Browsers on this machine only: front-end dev servers on any loopback port.
LOCAL_DEV_ORIGINS = ",".join(
    f"{scheme}://{host}{ANY_PORT}"
    for scheme in ("http", "https")
    for host in ("localhost", "127.0.0.1", "[::1]")
)
# The local edge's self-signed certificate (EVENTPIPE_EDGE_TLS=true), made once, kept with the run.
LOCAL_TLS_DIR = REPO_ROOT / ".run" / "tls"
CERTIFICATE_DAYS = 365


class EdgeSettings(BaseSettings):
    """Limits of the Envoy edge, from ``EVENTPIPE_EDGE_*`` (read when the stack renders)."""

    model_config = SettingsConfigDict(env_prefix="EVENTPIPE_EDGE_", extra="ignore", frozen=True)

    tenant_rate: int = Field(100, ge=1, description="Requests per second refilled per tenant.")
    tenant_burst: int = Field(200, ge=1, description="Requests a tenant may send at once.")
    tenant_buckets: int = Field(
        10_000, ge=1, description="Tenants tracked at once; the least recently seen go first."
    )
    global_rate: int = Field(1000, ge=1, description="Requests per second for all callers.")
    global_burst: int = Field(2000, ge=1, description="Requests all callers may send at once.")
    max_request_bytes: int = Field(
        4 * MiB, ge=1024, description="Largest REST request body (413 past it)."
    )
    max_response_bytes: int = Field(
        16 * MiB, ge=1024, description="Largest REST response body the transcoder buffers."
    )
    cors_origins: str = Field(
        LOCAL_DEV_ORIGINS,
        description="Comma-separated CORS origins browsers may call from: exact origins, "
        "`scheme://host:*` for any port of a host, `*` for any origin. Default: loopback only.",
    )
    tls: bool = Field(
        False,
        description="Envoy terminates TLS on the public listener (HTTP/2 and HTTP/1.1 by ALPN); "
        "locally with a self-signed certificate generated once under .run/tls.",
    )
    route_timeout: str = Field("60s", pattern=DURATION, description="Unary RPC timeout.")
    max_header_kb: int = Field(
        60, ge=1, le=8192, description="Largest request head (URL and headers), KiB (431 past it)."
    )
    stream_idle_timeout: str = Field(
        "60s",
        pattern=DURATION,
        description="A stream with no bytes either way for this long is closed (every route).",
    )
    stream_max_duration: str = Field(
        "3600s", pattern=DURATION, description="Longest a StreamEvents stream may stay open."
    )
    max_open_streams: int = Field(
        64,
        ge=1,
        description="StreamEvents streams this Envoy holds open to ingest at once (past it "
        "RESOURCE_EXHAUSTED at the edge); ingest's own EVENTPIPE_INGEST_MAX_STREAMS by default.",
    )
    max_streams_per_connection: int = Field(
        100, ge=1, le=2_147_483_647, description="Concurrent HTTP/2 streams per client connection."
    )

    @field_validator("tenant_burst")
    @classmethod
    def _burst_covers_one_second(cls, burst: int, info: Any) -> int:
        rate = info.data.get("tenant_rate", 1)
        if burst < rate:
            raise ValueError(f"must be at least tenant_rate ({rate})")
        return burst

    def cors_origin_matchers(self) -> list[dict[str, Any]]:
        origins = [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]
        if not origins or "*" in origins:
            return [{"safe_regex": {"regex": ".*"}}]
        return [
            {"safe_regex": {"regex": re.escape(origin[: -len(ANY_PORT)]) + "(:[0-9]+)?"}}
            if origin.endswith(ANY_PORT)
            else {"exact": origin}
            for origin in origins
        ]


@dataclass(frozen=True)
class EdgeAuth:
    """What Envoy's jwt_authn checks: the same values the services read (EVENTPIPE_AUTH_*)."""

    jwks_file: Path
    issuer: str = "eventpipe-local"
    audience: str = "eventpipe"
    leeway_seconds: int = 30


def template_values(edge: EdgeSettings) -> dict[str, str]:
    """The template's values that come from the edge's settings, the same in every deployment."""
    return {
        "ROUTE_TIMEOUT": edge.route_timeout,
        "CORS_ORIGINS": json.dumps(edge.cors_origin_matchers()),
        "GLOBAL_RATE": str(edge.global_rate),
        "GLOBAL_BURST": str(edge.global_burst),
        "TENANT_RATE": str(edge.tenant_rate),
        "TENANT_BURST": str(edge.tenant_burst),
        "TENANT_BUCKETS": str(edge.tenant_buckets),
        "MAX_REQUEST_BYTES": str(edge.max_request_bytes),
        "MAX_RESPONSE_BYTES": str(edge.max_response_bytes),
        "MAX_HEADER_KB": str(edge.max_header_kb),
        "STREAM_IDLE_TIMEOUT": edge.stream_idle_timeout,
        "STREAM_MAX_DURATION": edge.stream_max_duration,
        "MAX_OPEN_STREAMS": str(edge.max_open_streams),
        "MAX_STREAMS_PER_CONNECTION": str(edge.max_streams_per_connection),
        "MAX_DOCS_BYTES": str(MAX_DOCS_BYTES),
    }


def fill_template(template: Path, values: Mapping[str, str]) -> Any:
    """The YAML of ``template`` with its ``${VAR}`` placeholders filled (KeyError if one lacks)."""
    return yaml.safe_load(Template(template.read_text()).substitute(values))


def set_body_filter_source(config: Mapping[str, Any], source: Mapping[str, str]) -> None:
    """Gives the Lua body check its code: ``inline_string`` or ``filename``."""
    lua = next(f for f in http_filters(config) if f["name"] == "envoy.filters.http.lua")
    lua["typed_config"]["default_source_code"] = dict(source)


def place_jwt_authn(config: Mapping[str, Any], jwt_authn: Mapping[str, Any] | None) -> None:
    """Puts ``jwt_authn`` where the template's marker filter stands, or drops the marker."""
    filters = http_filters(config)
    marker = next(i for i, f in enumerate(filters) if f["name"] == JWT_AUTHN_MARKER)
    if jwt_authn is None:
        del filters[marker]
    else:
        filters[marker] = dict(jwt_authn)


def dump_config(config: Mapping[str, Any], header: str) -> str:
    return header + yaml.safe_dump(dict(config), sort_keys=False, width=120)


def render_envoy_config(
    *,
    listen_port: int,
    admin_port: int,
    upstream_ports: Mapping[str, int],
    descriptor_set: Path,
    listen_address: str = HOST,
    route_timeout: str | None = None,
    access_log_path: Path | str = "/dev/stdout",
    edge: EdgeSettings | None = None,
    auth: EdgeAuth | None = None,
    template: Path = ENVOY_TEMPLATE,
    body_filter: Path = BODY_FILTER,
    openapi_document: Path = OPENAPI_DOCUMENT,
    docs_page: Path = DOCS_PAGE,
    tls_dir: Path = LOCAL_TLS_DIR,
) -> str:
    """The local stack's Envoy: envoy/envoy.yaml filled in, every service on this host, the body
    check inlined, the REST reference `make protos` built served at /openapi.json and /docs, and
    jwt_authn on the local JWKS when ``auth`` is given. With ``edge.tls`` the listener speaks
    TLS with the self-signed certificate of ``tls_dir`` (made on first use, see
    ``local_certificate``).

    A missing template value raises KeyError.
    """
    edge = edge or load_settings(EdgeSettings)
    values = {
        **template_values(edge),
        "LISTEN_ADDRESS": listen_address,
        "LISTEN_PORT": str(listen_port),
        "ADMIN_PORT": str(admin_port),
        "DESCRIPTOR_SET": str(descriptor_set),
        "OPENAPI_DOCUMENT": str(openapi_document),
        "DOCS_PAGE": str(docs_page),
        "ACCESS_LOG_PATH": str(access_log_path),
        **{f"{name.upper()}_HOST": HOST for name in SERVICE_NAMES},
        **{f"{name.upper()}_PORT": str(upstream_ports[name]) for name in SERVICE_NAMES},
    }
    if route_timeout:
        values["ROUTE_TIMEOUT"] = route_timeout
    config = fill_template(template, values)
    set_body_filter_source(config, {"inline_string": body_filter.read_text()})
    place_jwt_authn(config, jwt_authn_filter(auth) if auth else None)
    if edge.tls:
        certificate, key = local_certificate(tls_dir)
        terminate_tls(config, certificate_chain=str(certificate), private_key=str(key))
    header = (
        f"# Rendered from {template.name} by eventpipe.stack.edge "
        f"({'with' if auth else 'without'} JWT authentication"
        f"{', with TLS' if edge.tls else ''}): do not edit.\n"
    )
    return dump_config(config, header)


def jwt_authn_filter(
    auth: EdgeAuth | None = None,
    *,
    issuer: str | None = None,
    audience: str | None = None,
    jwks_source: Mapping[str, Any] | None = None,
    template: Path = JWT_AUTHN_TEMPLATE,
) -> dict[str, Any]:
    """envoy/jwt_authn.yaml filled in: on the local JWKS file of ``auth``, or (Kubernetes) with
    ``issuer``, ``audience`` and a ``remote_jwks`` source."""
    if auth is not None:
        issuer, audience = auth.issuer, auth.audience
        jwks_source = {"local_jwks": {"filename": str(auth.jwks_file)}}
    if issuer is None or audience is None or jwks_source is None:
        raise ValueError("jwt_authn needs an issuer, an audience and a JWKS source")
    leeway = auth.leeway_seconds if auth is not None else EdgeAuth.leeway_seconds
    filter_config: dict[str, Any] = fill_template(
        template, {"ISSUER": issuer, "AUDIENCE": audience, "LEEWAY_SECONDS": str(leeway)}
    )
    (provider,) = filter_config["typed_config"]["providers"].values()
    provider.update(jwks_source)
    return filter_config


def http_filters(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The HTTP filter chain of the public listener (named ``eventpipe``)."""
    listener = next(
        listener
        for listener in config["static_resources"]["listeners"]
        if listener["name"] == "eventpipe"
    )
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters: list[dict[str, Any]] = manager["http_filters"]
    return filters


def terminate_tls(config: Mapping[str, Any], *, certificate_chain: str, private_key: str) -> None:
    """TLS on the public listener: the certificate and key files given, TLS 1.2 at least, and
    ALPN offering HTTP/2 (gRPC) and HTTP/1.1 (REST clients without h2)."""
    listener = next(
        listener
        for listener in config["static_resources"]["listeners"]
        if listener["name"] == "eventpipe"
    )
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "DownstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": certificate_chain},
                        "private_key": {"filename": private_key},
                    }
                ],
            },
        },
    }


def local_certificate(directory: Path = LOCAL_TLS_DIR) -> tuple[Path, Path]:
    """The local edge's self-signed certificate and key (``tls.crt``, ``tls.key``, the names of a
    Kubernetes TLS Secret), made once: for localhost, 127.0.0.1 and ::1, valid a year. Clients
    trust ``tls.crt`` itself (``curl --cacert``, ``grpc.ssl_channel_credentials``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    certificate_path, key_path = directory / "tls.crt", directory / "tls.key"
    if certificate_path.exists() and key_path.exists():
        return certificate_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eventpipe local edge")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    # Key first, each written whole and renamed into place: a reader never sees half a pair.
    _write_atomically(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    _write_atomically(certificate_path, certificate.public_bytes(serialization.Encoding.PEM))
    return certificate_path, key_path


def _write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    descriptor, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(descriptor, "wb") as staged:
        staged.write(data)
    os.chmod(staging, mode)
    os.replace(staging, path)
