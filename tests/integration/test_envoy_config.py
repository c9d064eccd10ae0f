"""The Envoy configs the repo ships, all rendered from the one template envoy/envoy.yaml: the
local one, with and without auth, checked by a real Envoy (``envoy --mode validate``; the
Kubernetes dev and prod ones are checked so in test_k8s_render.py, and
tests/unit/test_k8s_manifests.py proves the committed Kubernetes files are the rendering), and
the limits each config takes from the edge's settings."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from eventpipe.core.auth import generate_local_keys
from eventpipe.core.config import ConfigError, load_settings
from eventpipe.stack.components import DESCRIPTOR_SET, Envoy, render_envoy_config
from eventpipe.stack.edge import JWT_AUTHN_MARKER, EdgeAuth, EdgeSettings, http_filters
from eventpipe.stack.stack import StackConfig, dev_token

from tests.helpers.envoy import envoy_validate
from tests.helpers.k8s import rendered_envoy_config

PORTS = {"ingest": 50051, "store": 50052, "enrich": 50053, "query": 50054}
JWT = "envoy.filters.http.jwt_authn"
RATE_LIMIT = "envoy.filters.http.local_ratelimit"
BUFFER = "envoy.filters.http.buffer"
STREAM_EVENTS = "/eventpipe.ingest.v1.IngestService/StreamEvents"


def local_config(tmp_path: Path, *, auth: bool, **edge: Any) -> str:
    edge_auth = None
    if auth:
        _, jwks = generate_local_keys(tmp_path / "auth")
        edge_auth = EdgeAuth(jwks_file=jwks)
    return render_envoy_config(
        listen_port=8080,
        admin_port=9901,
        upstream_ports=PORTS,
        access_log_path=tmp_path / "access.log",
        edge_settings=EdgeSettings(**edge),
        auth=edge_auth,
    )


def names(config: dict[str, Any]) -> list[str]:
    return [f["name"] for f in http_filters(config)]


def manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = next(
        item for item in config["static_resources"]["listeners"] if item["name"] == "eventpipe"
    )
    return listener["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    return manager(config)["route_config"]["virtual_hosts"][0]["routes"]  # type: ignore[no-any-return]


def rest_route(config: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in routes(config) if r["match"].get("prefix") == "/v1/")


def cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in config["static_resources"]["clusters"] if c["name"] == name)


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    # Rendering the overlays fails, naming what is missing, when kustomize is not installed.
    if not DESCRIPTOR_SET.exists():
        pytest.fail("no descriptor set: run `make protos` first", pytrace=False)


@pytest.mark.parametrize("auth", [False, True], ids=["without auth", "with auth"])
def test_envoy_accepts_the_local_config_without_deprecated_fields(
    tmp_path: Path, auth: bool
) -> None:
    output = envoy_validate(local_config(tmp_path, auth=auth), tmp_path)

    assert "Deprecated field" not in output


def test_the_local_config_without_auth_has_no_jwt_filter(tmp_path: Path) -> None:
    config = yaml.safe_load(local_config(tmp_path, auth=False))

    assert JWT not in names(config)
    assert JWT_AUTHN_MARKER not in names(config)


def test_the_local_config_with_auth_verifies_the_local_jwks_and_forwards_the_token(
    tmp_path: Path,
) -> None:
    config = yaml.safe_load(local_config(tmp_path, auth=True))

    chain = names(config)
    jwt = http_filters(config)[chain.index(JWT)]["typed_config"]
    (provider,) = jwt["providers"].values()
    assert provider["local_jwks"]["filename"] == str(tmp_path / "auth" / "jwks.json")
    assert provider["forward"] is True, "the services verify the token again"
    assert provider["issuer"] == "eventpipe-local"
    assert provider["audiences"] == ["eventpipe"]
    assert provider["claim_to_headers"] == [
        {"header_name": "x-eventpipe-tenant", "claim_name": "tenant_id"}
    ]
    assert jwt["bypass_cors_preflight"] is True
    # Reading exactly the REST reference's two paths is public; all else needs the token.
    read_only = [{"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}]
    assert jwt["rules"] == [
        {"match": {"path": "/openapi.json", "headers": read_only}},
        {"match": {"path": "/docs", "headers": read_only}},
        {"match": {"prefix": "/"}, "requires": {"provider_name": "eventpipe"}},
    ]


@pytest.mark.parametrize("auth", [False, True], ids=["without auth", "with auth"])
def test_the_filters_run_in_the_order_the_edge_needs(tmp_path: Path, auth: bool) -> None:
    chain = names(yaml.safe_load(local_config(tmp_path, auth=auth)))

    expected = [
        "envoy.filters.http.header_mutation",  # strips a client's tenant header
        "envoy.filters.http.cors",
        "envoy.filters.http.health_check",  # before anything can refuse /healthz
        RATE_LIMIT,  # flood backstop, before signature checks
        *([JWT] if auth else []),
        RATE_LIMIT,  # per tenant, keyed by jwt_authn's claim header
        "eventpipe.grpc_metadata",  # drops headers gRPC metadata cannot carry
        "envoy.filters.http.buffer",  # the whole REST body, up to its limit, for the check below
        "envoy.filters.http.lua",  # refuses unknown JSON body fields
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.router",
    ]
    assert chain == expected


def test_the_admin_interface_listens_on_loopback_only_in_every_config(tmp_path: Path) -> None:
    configs = {
        "local": local_config(tmp_path, auth=False),
        "local with auth": local_config(tmp_path, auth=True),
        "k8s dev": rendered_envoy_config("dev"),
        "k8s prod": rendered_envoy_config("prod"),
    }
    for name, text in configs.items():
        config = yaml.safe_load(text)
        assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1", name


def test_edge_limits_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVENTPIPE_EDGE_TENANT_RATE", "7")
    monkeypatch.setenv("EVENTPIPE_EDGE_TENANT_BURST", "11")
    monkeypatch.setenv("EVENTPIPE_EDGE_MAX_REQUEST_BYTES", "2048")
    monkeypatch.setenv("EVENTPIPE_EDGE_CORS_ORIGINS", "https://a.example, https://b.example")
    envoy = Envoy(tmp_path, port=18080, admin_port=19901, upstream_ports=PORTS)
    envoy.data_dir.mkdir(parents=True)

    envoy.prepare()

    config = yaml.safe_load(envoy.config_path.read_text())
    tenant_limit = [f for f in http_filters(config) if f["name"] == RATE_LIMIT][1]["typed_config"]
    bucket = tenant_limit["descriptors"][0]["token_bucket"]
    assert (bucket["tokens_per_fill"], bucket["max_tokens"]) == (7, 11)
    transcoder = http_filters(config)[-2]["typed_config"]
    assert transcoder["max_request_body_size"] == 2048
    assert rest_route(config)["typed_per_filter_config"][BUFFER]["buffer"] == {
        "max_request_bytes": 2048
    }
    cors = manager(config)["route_config"]["virtual_hosts"][0]["typed_per_filter_config"]
    origins = cors["envoy.filters.http.cors"]["allow_origin_string_match"]
    assert origins == [{"exact": "https://a.example"}, {"exact": "https://b.example"}]


def test_a_bad_edge_limit_fails_fast_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTPIPE_EDGE_TENANT_RATE", "0")

    with pytest.raises(ConfigError) as raised:
        load_settings(EdgeSettings)

    assert "EVENTPIPE_EDGE_TENANT_RATE" in raised.value.message


def test_a_burst_smaller_than_the_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="tenant_rate"):
        EdgeSettings(tenant_rate=10, tenant_burst=5)


def _without_deployment_specifics(config: dict[str, Any]) -> dict[str, Any]:
    """The parts the local and Kubernetes edges must share: filters, routes, error replies."""
    config = copy.deepcopy(config)
    hcm = manager(config)
    hcm.pop("access_log")  # a file locally, stdout in a pod (same fields, checked below)
    for vhost in hcm["route_config"]["virtual_hosts"]:
        vhost["typed_per_filter_config"]["envoy.filters.http.cors"].pop("allow_origin_string_match")
        for route in vhost["routes"]:
            route.get("route", {}).pop("timeout", None)
            route.get("route", {}).pop("idle_timeout", None)
            # The REST reference: a build output locally, a file baked into the image.
            route.get("direct_response", {}).get("body", {}).pop("filename", None)
    for item in hcm["http_filters"]:
        typed = item.get("typed_config", {})
        typed.pop("proto_descriptor", None)
        typed.pop("default_source_code", None)  # inline locally, a file baked into the image
        for provider in typed.get("providers", {}).values():
            for key in ("issuer", "local_jwks", "remote_jwks", "clock_skew_seconds"):
                provider.pop(key, None)
    return {"filters": hcm["http_filters"], "hcm": hcm}


def test_the_local_and_kubernetes_edges_share_filters_routes_and_error_replies(
    tmp_path: Path,
) -> None:
    local = yaml.safe_load(local_config(tmp_path, auth=True))
    prod = yaml.safe_load(rendered_envoy_config("prod"))

    assert _without_deployment_specifics(local) == _without_deployment_specifics(prod)
    local_log = manager(local)["access_log"][0]["typed_config"]["log_format"]
    prod_log = manager(prod)["access_log"][0]["typed_config"]["log_format"]
    assert local_log == prod_log


def test_dev_token_is_none_when_the_stack_runs_without_auth(tmp_path: Path) -> None:
    assert dev_token(StackConfig(run_dir=tmp_path), "demo", ["ingest"]) is None
    assert dev_token(StackConfig(run_dir=tmp_path, auth=True), "demo", ["ingest"])


def test_stack_up_runs_with_auth_unless_switched_off() -> None:
    assert StackConfig.from_env({}).auth is True
    assert StackConfig.from_env({"EVENTPIPE_STACK_AUTH": "0"}).auth is False
    with pytest.raises(ValueError, match="EVENTPIPE_STACK_AUTH"):
        StackConfig.from_env({"EVENTPIPE_STACK_AUTH": "maybe"})


def test_only_rest_requests_are_buffered_and_only_up_to_the_rest_body_limit(
    tmp_path: Path,
) -> None:
    config = yaml.safe_load(local_config(tmp_path, auth=True, max_request_bytes=5000))

    (buffer,) = [f for f in http_filters(config) if f["name"] == BUFFER]
    assert buffer["disabled"] is True, "gRPC streams must never be buffered"
    assert buffer["typed_config"]["max_request_bytes"] == 5000
    enabled = [r for r in routes(config) if BUFFER in r.get("typed_per_filter_config", {})]
    assert enabled == [rest_route(config)]
    assert enabled[0]["typed_per_filter_config"][BUFFER]["buffer"]["max_request_bytes"] == 5000


def test_streams_have_an_idle_timeout_a_maximum_duration_and_a_cap_from_the_settings(
    tmp_path: Path,
) -> None:
    config = yaml.safe_load(
        local_config(
            tmp_path,
            auth=False,
            stream_idle_timeout="7s",
            stream_max_duration="90s",
            max_open_streams=3,
            max_streams_per_connection=17,
            max_header_kb=33,
        )
    )

    (stream_route,) = [r for r in routes(config) if r["match"].get("prefix") == STREAM_EVENTS]
    assert stream_route["route"]["idle_timeout"] == "7s"
    assert stream_route["route"]["max_stream_duration"] == {"max_stream_duration": "90s"}
    streams = cluster(config, stream_route["route"]["cluster"])
    assert streams["circuit_breakers"]["thresholds"][0]["max_requests"] == 3
    assert (
        streams["load_assignment"]["endpoints"]
        == cluster(config, "ingest")["load_assignment"]["endpoints"]
    ), "the same ingest, on connections of its own"
    hcm = manager(config)
    assert hcm["stream_idle_timeout"] == "7s"
    assert hcm["http2_protocol_options"]["max_concurrent_streams"] == 17
    assert hcm["max_request_headers_kb"] == 33


def test_every_error_status_envoy_answers_a_rest_caller_with_is_mapped_to_json(
    tmp_path: Path,
) -> None:
    mappers = manager(yaml.safe_load(local_config(tmp_path, auth=True)))["local_reply_config"][
        "mappers"
    ]

    last = mappers[-1]
    assert last["filter"]["status_code_filter"]["comparison"]["op"] == "GE"
    assert last["filter"]["status_code_filter"]["comparison"]["value"]["default_value"] == 400
    assert last["body_format_override"]["content_type"] == "application/json"
    for mapper in mappers:
        override = mapper.get("body_format_override", {})
        if "json_format" in override:
            assert set(override["json_format"]) == {"code", "message", "details"}, mapper
