"""The local Envoy's config: envoy/envoy.yaml filled in, with or without JWT authentication.

The limits of the edge come from ``EVENTPIPE_EDGE_*`` variables (``EdgeSettings``). Auth is a
switch: ``EdgeAuth`` names the JWKS file and the claims Envoy checks; when given, the
``jwt_authn`` filter of envoy/jwt_authn.yaml takes the place of the template's marker filter,
right after the flood backstop and before the per-tenant rate limit that keys on its claim.
docs/edge.md describes the resulting listener.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventpipe.codegen import BODY_FILTER
from eventpipe.core.config import load_settings

REPO_ROOT = Path(__file__).resolve().parents[3]
ENVOY_TEMPLATE = REPO_ROOT / "envoy" / "envoy.yaml"
JWT_AUTHN_TEMPLATE = REPO_ROOT / "envoy" / "jwt_authn.yaml"
JWT_AUTHN_MARKER = "eventpipe.jwt_authn_marker"
TENANT_HEADER = "x-eventpipe-tenant"
SERVICE_NAMES = ("ingest", "store", "enrich", "query")
HOST = "127.0.0.1"
MiB = 1024 * 1024


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
        "*", description="Comma-separated allowed CORS origins; `*` allows any origin."
    )
    route_timeout: str = Field("60s", pattern=r"^\d+s$", description="Unary RPC timeout.")

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
        return [{"exact": origin} for origin in origins]


@dataclass(frozen=True)
class EdgeAuth:
    """What Envoy's jwt_authn checks: the same values the services read (EVENTPIPE_AUTH_*)."""

    jwks_file: Path
    issuer: str = "eventpipe-local"
    audience: str = "eventpipe"
    leeway_seconds: int = 30


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
) -> str:
    """Fills envoy/envoy.yaml; inserts jwt_authn when ``auth`` is given, else drops its marker.

    A missing template value raises KeyError.
    """
    edge = edge or load_settings(EdgeSettings)
    values = {
        "LISTEN_ADDRESS": listen_address,
        "LISTEN_PORT": str(listen_port),
        "ADMIN_PORT": str(admin_port),
        "DESCRIPTOR_SET": str(descriptor_set),
        "ROUTE_TIMEOUT": route_timeout or edge.route_timeout,
        "UPSTREAM_HOST": HOST,
        "ACCESS_LOG_PATH": str(access_log_path),
        "CORS_ORIGINS": json.dumps(edge.cors_origin_matchers()),
        "GLOBAL_RATE": str(edge.global_rate),
        "GLOBAL_BURST": str(edge.global_burst),
        "TENANT_RATE": str(edge.tenant_rate),
        "TENANT_BURST": str(edge.tenant_burst),
        "TENANT_BUCKETS": str(edge.tenant_buckets),
        "MAX_REQUEST_BYTES": str(edge.max_request_bytes),
        "MAX_RESPONSE_BYTES": str(edge.max_response_bytes),
        **{f"{name.upper()}_PORT": str(upstream_ports[name]) for name in SERVICE_NAMES},
    }
    config = yaml.safe_load(Template(template.read_text()).substitute(values))
    filters = http_filters(config)
    lua = next(f for f in filters if f["name"] == "envoy.filters.http.lua")
    lua["typed_config"]["default_source_code"] = {
        "inline_string": body_filter.read_text().replace(
            "@MAX_BODY_BYTES@", str(edge.max_request_bytes)
        )
    }
    marker = next(i for i, f in enumerate(filters) if f["name"] == JWT_AUTHN_MARKER)
    if auth is None:
        del filters[marker]
    else:
        filters[marker] = jwt_authn_filter(auth)
    header = (
        f"# Rendered from {template.name} by eventpipe.stack.edge "
        f"({'with' if auth else 'without'} JWT authentication): do not edit.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False, width=120)


def jwt_authn_filter(auth: EdgeAuth, template: Path = JWT_AUTHN_TEMPLATE) -> dict[str, Any]:
    values = {
        "JWKS_FILE": str(auth.jwks_file),
        "ISSUER": auth.issuer,
        "AUDIENCE": auth.audience,
        "LEEWAY_SECONDS": str(auth.leeway_seconds),
    }
    filter_config: dict[str, Any] = yaml.safe_load(
        Template(template.read_text()).substitute(values)
    )
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
