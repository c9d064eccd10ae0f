"""The whole stack as `eventpipe stack up` starts it: four services behind Envoy, on real Kafka
and the real Bigtable emulator.

RPC bodies are being written alongside these tests, so REST answers are checked against the
same call made over gRPC: whatever status the service gives, Envoy must return it as JSON with
the HTTP status that gRPC status maps to.
"""

from __future__ import annotations

import importlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from eventpipe.stack import install
from eventpipe.stack.components import (
    GRPC_SERVICES,
    SERVICE_NAMES,
    ComponentError,
    KafkaBroker,
    render_envoy_config,
    validate_envoy_config,
)
from eventpipe.stack.edge import EdgeSettings
from eventpipe.stack.probes import free_port
from eventpipe.stack.stack import Stack, StackConfig
from google.protobuf import json_format
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.helpers.http import http, json_body

# How Envoy's transcoder (and google.rpc) map gRPC codes to HTTP statuses.
HTTP_STATUS_FOR_GRPC_CODE = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


@dataclass(frozen=True)
class RestCase:
    """One RPC reached two ways: REST through Envoy, and gRPC straight to the service."""

    service: str
    http_method: str
    path: str
    body: dict[str, Any] | None
    rpc: str
    request: dict[str, Any]


def _event(event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": "page_view",
        "entity_id": "user-1",
        "event_time": "2026-01-01T00:00:00Z",
        "attributes": {"path": {"string_value": "/home"}},
    }


REST_CASES = [
    RestCase(
        "ingest",
        "POST",
        "/v1/tenants/e2e-tenant/events",
        _event("rest-1"),
        "IngestEvent",
        {"tenant_id": "e2e-tenant", "event": _event("grpc-1")},
    ),
    RestCase("store", "GET", "/v1/store/consumerStatus", None, "GetConsumerStatus", {}),
    RestCase(
        "enrich",
        "GET",
        "/v1/tenants/e2e-tenant/enrichmentSpec",
        None,
        "GetEnrichmentSpec",
        {"tenant_id": "e2e-tenant"},
    ),
    RestCase(
        "query",
        "GET",
        "/v1/tenants/e2e-tenant/entities/user-1",
        None,
        "GetEntity",
        {"tenant_id": "e2e-tenant", "entity_id": "user-1"},
    ),
]


def _grpc_status(address: str, case: RestCase) -> grpc.StatusCode:
    """Calls the RPC over gRPC at ``address``; returns the status it answered with."""
    full_name = GRPC_SERVICES[case.service]
    package = importlib.import_module(f"eventpipe.{case.service}.v1.{case.service}_pb2")
    method = package.DESCRIPTOR.services_by_name[full_name.rsplit(".", 1)[1]].methods_by_name[
        case.rpc
    ]
    request_class = getattr(package, method.input_type.name)
    response_class = getattr(package, method.output_type.name)
    request = json_format.ParseDict(case.request, request_class())
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            f"/{full_name}/{case.rpc}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        try:
            call(request, timeout=30)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _http(method: str, url: str, body: dict[str, Any] | None) -> tuple[int, str, str]:
    data, headers = json_body(body)
    reply = http(url, method=method, body=data, headers=headers)
    return reply.status, reply.content_type, reply.text


def _listed_services(address: str) -> set[str]:
    if install.is_installed("grpcurl"):
        result = subprocess.run(
            [str(install.tool_path("grpcurl")), "-plaintext", address, "list"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return set(result.stdout.split())
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = stub.ServerReflectionInfo(iter([request]), timeout=10)
        return {service.name for service in response.list_services_response.service}


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_each_service_reports_serving_health(e2e_stack: Stack, name: str) -> None:
    assert e2e_stack.services[name].health() == "SERVING"


def test_reflection_lists_the_four_services(e2e_stack: Stack) -> None:
    listed: set[str] = set()
    for service in e2e_stack.services.values():
        listed |= _listed_services(service.address)

    assert set(GRPC_SERVICES.values()) <= listed


@pytest.mark.parametrize("case", REST_CASES, ids=lambda case: case.service)
def test_a_rest_call_through_envoy_answers_json_with_the_status_grpc_gives(
    e2e_stack: Stack, case: RestCase
) -> None:
    grpc_code = _grpc_status(e2e_stack.services[case.service].address, case)

    status, content_type, body = _http(
        case.http_method, e2e_stack.envoy.base_url + case.path, case.body
    )

    assert status == HTTP_STATUS_FOR_GRPC_CODE[grpc_code], body
    assert content_type.startswith("application/json"), body
    document = json.loads(body)
    assert isinstance(document, dict)
    if grpc_code != grpc.StatusCode.OK:
        assert document["code"] == grpc_code.value[0]


def test_grpc_passes_through_envoy_unchanged(e2e_stack: Stack) -> None:
    case = REST_CASES[1]  # store's GetConsumerStatus: no arguments

    direct = _grpc_status(e2e_stack.services["store"].address, case)
    through_envoy = _grpc_status(e2e_stack.envoy.address, case)

    assert through_envoy == direct


def test_stack_up_a_second_time_restarts_nothing(e2e_stack: Stack) -> None:
    pids_before = {c.name: c.pid for c in e2e_stack.components()}

    e2e_stack.up(only=[*SERVICE_NAMES, "envoy"], demo=False)

    assert {c.name: c.pid for c in e2e_stack.components()} == pids_before


def test_stack_down_stops_only_what_its_own_run_folder_started(
    e2e_stack: Stack, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    other = Stack(
        StackConfig(
            run_dir=tmp_path / "other",
            envoy_port=free_port(),
            envoy_admin_port=free_port(),
            kafka_port=kafka_broker.port,
        ),
        progress=lambda _message: None,
    )
    other.up(only=["envoy"], demo=False)

    stopped = other.down()

    assert stopped == ["envoy"]
    assert other.envoy.pid is None
    assert e2e_stack.envoy.safe_is_healthy()
    assert kafka_broker.safe_is_healthy()


def test_stack_up_saves_the_config_that_tools_find_the_running_stack_by(e2e_stack: Stack) -> None:
    found = StackConfig.of_running_stack({"EVENTPIPE_RUN_DIR": str(e2e_stack.config.run_dir)})

    assert found == e2e_stack.config


def test_the_try_lines_make_up_prints_give_every_event_an_event_time(e2e_stack: Stack) -> None:
    ingest = [line for line in e2e_stack.try_commands() if "-X POST" in line]

    assert len(ingest) == 1 and '\\"event_time\\":\\"$EVENT_TIME\\"' in ingest[0]
    assert "Authorization" not in ingest[0]  # this stack runs without auth


def test_the_cluster_profile_runs_three_brokers_and_two_of_each_service_on_derived_ports(
    tmp_path: Path,
) -> None:
    config = StackConfig(run_dir=tmp_path, profile="cluster")

    assert config.broker_ports() == [(9092, 9093), (9094, 9095), (9096, 9097)]
    assert config.kafka_bootstrap_servers == "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    assert config.grpc_ports("query") == [50054, 50064]
    assert config.metrics_ports_of("query") == [9104, 9114]
    env = config.service_env()
    assert env["EVENTPIPE_TOPIC_REPLICATION_FACTOR"] == "3"
    assert env["EVENTPIPE_TOPIC_MIN_INSYNC_REPLICAS"] == "2"
    assert env["EVENTPIPE_ENRICH_SPARK_MASTER"] == "spark://127.0.0.1:7077"
    stack = Stack(config, progress=lambda _m: None)
    names = [c.name for c in stack.components()]
    assert names[:3] == ["kafka-1", "kafka-2", "kafka-3"]
    assert {"ingest-1", "ingest-2", "store-2", "enrich-2", "query-2", "spark-worker"} <= set(names)
    # The replicas share one page-token secret and one Spark secret, kept in the run folder.
    first, second = (replica.env() for replica in stack.replicas["query"])
    secret = "EVENTPIPE_QUERY_PAGE_TOKEN_SECRET"
    assert first[secret] == second[secret] == (tmp_path / "auth" / "page-token-secret").read_text()
    assert stack.replicas["enrich"][1].env()["EVENTPIPE_ENRICH_SPARK_AUTH_SECRET"]
    assert (tmp_path / "auth" / "spark-auth-secret").stat().st_mode & 0o077 == 0


def test_the_default_profile_is_one_of_everything_without_spark_daemons(tmp_path: Path) -> None:
    config = StackConfig(run_dir=tmp_path)
    stack = Stack(config, progress=lambda _m: None)

    assert [c.name for c in stack.components()] == [
        "kafka",
        "bigtable",
        *SERVICE_NAMES,
        "envoy",
    ]
    assert "EVENTPIPE_ENRICH_SPARK_MASTER" not in config.service_env()
    assert config.kafka_bootstrap_servers == "127.0.0.1:9092"


def test_an_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="profile 'big' is not one of default, cluster"):
        StackConfig(profile="big")


def test_stack_up_refuses_a_profile_while_another_still_runs_in_its_run_folder(
    e2e_stack: Stack,
) -> None:
    config = StackConfig(run_dir=e2e_stack.config.run_dir, profile="cluster")

    with pytest.raises(ComponentError, match="the default profile still runs"):
        Stack(config, progress=lambda _m: None).check_profile()


def test_envoy_balances_every_cluster_of_a_service_over_its_replicas_and_accepts_the_config(
    tmp_path: Path,
) -> None:
    replicas = {name: [free_port(), free_port()] for name in SERVICE_NAMES}
    rendered = render_envoy_config(
        listen_port=free_port(),
        admin_port=free_port(),
        upstream_ports={name: ports[0] for name, ports in replicas.items()},
        replica_ports=replicas,
        edge_settings=EdgeSettings(),
    )
    config = yaml.safe_load(rendered)
    endpoints = {
        cluster["name"]: [
            e["endpoint"]["address"]["socket_address"]["port_value"]
            for group in cluster["load_assignment"]["endpoints"]
            for e in group["lb_endpoints"]
        ]
        for cluster in config["static_resources"]["clusters"]
    }
    for name in SERVICE_NAMES:
        assert endpoints[name] == replicas[name]
    assert endpoints["ingest_streams"] == replicas["ingest"]
    assert rendered.startswith("# Rendered from")
    path = tmp_path / "envoy.yaml"
    path.write_text(rendered)
    validate_envoy_config(path)


def test_tls_tells_the_edge_renderer_and_the_printed_lines_speak_https(tmp_path: Path) -> None:
    config = StackConfig(run_dir=tmp_path, tls=True, envoy_port=8443)
    stack = Stack(config, progress=lambda _m: None)

    assert config.edge_env() == {"EVENTPIPE_EDGE_TLS": "true"}
    assert StackConfig().edge_env() == {}
    curls = [line for line in stack.try_commands() if line.startswith("curl")]
    assert curls and all(line.startswith("curl -sSk") for line in curls)
    assert all("https://127.0.0.1:8443/" in line for line in curls)
