"""Policy tests for the Kubernetes manifests under k8s/.

Every overlay is rendered offline with kustomize (``kubectl kustomize``, or the kustomize
``make setup`` builds when kubectl is missing: never a skip), every object is validated against
the Kubernetes 1.32 schemas (kubernetes-validate), and the rendered objects are checked against
the deployment rules of docs/deployment.md: probes, requests and limits, locked-down containers,
zero-downtime rollouts, disruption budgets, autoscaling, network isolation and long enough
grace periods to drain.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.helpers.k8s import REPO_ROOT, rendered_objects

pytestmark = pytest.mark.unit

OVERLAYS = ("dev", "prod")
KUBERNETES_VERSION = "1.32.0"

SERVICES = {
    "ingest": (50051, 9101),
    "store": (50052, 9102),
    "enrich": (50053, 9103),
    "query": (50054, 9104),
}
AUTOSCALED = ("ingest", "query")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
STORE_MIN_GRACE_SECONDS = 60

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    return {overlay: rendered_objects(overlay) for overlay in OVERLAYS}


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def config_map(objects: list[Manifest], base_name: str) -> Manifest:
    """A generated ConfigMap, found by its name without kustomize's hash suffix."""
    pattern = re.compile(rf"^{re.escape(base_name)}-[a-z0-9]{{10}}$")
    matches = [cm for cm in of_kind(objects, "ConfigMap") if pattern.match(cm["metadata"]["name"])]
    assert len(matches) == 1, f"expected one ConfigMap {base_name}-<hash>, found {len(matches)}"
    return matches[0]


def pod_spec(workload: Manifest) -> Manifest:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def workloads(objects: list[Manifest]) -> Iterator[Manifest]:
    return (obj for obj in objects if obj["kind"] in WORKLOAD_KINDS)


def container_env(
    objects: list[Manifest], deployment: Manifest, container: Manifest | None = None
) -> dict[str, str]:
    """The literal environment a container (default: the workload's first) gets from its
    ConfigMaps and env; values from Secrets and the downward API are left out."""
    container = container or pod_spec(deployment)["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(named(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def secret_references(spec: Manifest) -> set[tuple[str, str | None]]:
    """(Secret name, key or None for all keys) of everything a pod spec reads from Secrets."""
    refs: set[tuple[str, str | None]] = set()
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                refs.add((source["secretRef"]["name"], None))
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            items = volume["secret"].get("items") or [{"key": None}]
            refs.update((volume["secret"]["secretName"], item["key"]) for item in items)
    return refs


def container_policy_violations(spec: Manifest, *, needs_probes: bool = True) -> list[str]:
    """Everything a pod spec's containers break of the container rules, as readable strings.

    Init containers (and, with ``needs_probes=False``, every container: Jobs, Spark executors)
    run to completion, so they need no probes; all of them need requests and limits.
    """
    violations = []
    pod_security = spec.get("securityContext", {})
    if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        violations.append("pod: seccompProfile is not RuntimeDefault")
    init_names = {container["name"] for container in spec.get("initContainers", [])}
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        name = container["name"]
        security = container.get("securityContext", {})
        if needs_probes and name not in init_names:
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in container:
                    violations.append(f"{name}: no {probe}")
        if needs_probes or name in init_names:
            for kind in ("requests", "limits"):
                amounts = container.get("resources", {}).get(kind, {})
                if not {"cpu", "memory"} <= amounts.keys():
                    violations.append(f"{name}: resources.{kind} lacks cpu or memory")
        run_as_non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
        if run_as_non_root is not True:
            violations.append(f"{name}: runAsNonRoot is not true")
        if security.get("runAsUser", pod_security.get("runAsUser")) == 0:
            violations.append(f"{name}: runs as uid 0")
        if security.get("readOnlyRootFilesystem") is not True:
            violations.append(f"{name}: root filesystem is writable")
        if security.get("allowPrivilegeEscalation") is not False:
            violations.append(f"{name}: allowPrivilegeEscalation is not false")
        if "ALL" not in security.get("capabilities", {}).get("drop", []):
            violations.append(f"{name}: capabilities are not all dropped")
        if security.get("capabilities", {}).get("add"):
            violations.append(f"{name}: adds capabilities")
        if security.get("privileged"):
            violations.append(f"{name}: privileged")
    return violations


def selects(selector: Manifest, labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def test_every_overlay_renders_objects_that_match_the_kubernetes_schemas(rendered):
    for overlay, objects in rendered.items():
        assert objects, f"{overlay} rendered nothing"
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                name = f"{obj['kind']}/{obj['metadata'].get('name')}"
                pytest.fail(f"{overlay}: {name} is invalid: {exc.message} at {exc.path}")


def test_the_container_policy_check_reports_a_container_that_breaks_every_rule():
    careless = {
        "containers": [
            {
                "name": "careless",
                "resources": {"requests": {"cpu": "1"}},
                "securityContext": {"runAsUser": 0, "capabilities": {"add": ["NET_ADMIN"]}},
            }
        ]
    }
    violations = container_policy_violations(careless)
    for expected in (
        "seccompProfile",
        "no readinessProbe",
        "no livenessProbe",
        "resources.requests",
        "resources.limits",
        "runAsNonRoot",
        "uid 0",
        "writable",
        "allowPrivilegeEscalation",
        "not all dropped",
        "adds capabilities",
    ):
        assert any(expected in violation for violation in violations), expected


def test_every_container_has_probes_resources_and_a_locked_down_security_context(rendered):
    violations = [
        f"{overlay}: {workload['kind']}/{workload['metadata']['name']}: {violation}"
        for overlay, objects in rendered.items()
        for workload in workloads(objects)
        if workload["kind"] not in ("Job", "CronJob")
        for violation in container_policy_violations(pod_spec(workload))
    ]
    assert violations == []


def test_jobs_are_locked_down_with_resources_like_every_other_pod(rendered):
    for overlay, objects in rendered.items():
        jobs = of_kind(objects, "Job")
        assert jobs, overlay
        for job in jobs:
            spec = pod_spec(job)
            violations = container_policy_violations(spec, needs_probes=False)
            for container in spec["containers"]:
                amounts = container.get("resources", {})
                if not {"cpu", "memory"} <= amounts.get("limits", {}).keys():
                    violations.append(f"{container['name']}: no cpu and memory limits")
            assert violations == [], f"{overlay}: Job/{job['metadata']['name']}"
            assert spec["automountServiceAccountToken"] is False


def test_spark_executor_pods_are_locked_down_like_every_other_pod(rendered):
    for overlay, objects in rendered.items():
        data = config_map(objects, "spark-conf")["data"]
        template = yaml.safe_load(data["executor-pod-template.yaml"])
        kubernetes_validate.validate(template, KUBERNETES_VERSION, strict=True)
        # Spark sets the executors' command, resources and lifecycle itself; no probes.
        assert container_policy_violations(template["spec"], needs_probes=False) == [], overlay
        assert template["spec"]["automountServiceAccountToken"] is False
        defaults = spark_defaults(data["spark-defaults.conf"])
        assert (
            defaults["spark.kubernetes.executor.podTemplateContainerName"]
            == (template["spec"]["containers"][0]["name"])
        )


def test_services_answer_native_grpc_probes_on_their_conventional_ports(rendered):
    for overlay, objects in rendered.items():
        for service, (grpc_port, metrics_port) in SERVICES.items():
            deployment = named(objects, "Deployment", service)
            container = pod_spec(deployment)["containers"][0]
            for probe in ("readinessProbe", "livenessProbe"):
                assert container[probe].get("grpc", {}).get("port") == grpc_port, (
                    f"{overlay}: {service} {probe} is not a gRPC probe on {grpc_port}"
                )
            env = container_env(objects, deployment)
            prefix = f"EVENTPIPE_{service.upper()}"
            assert env[f"{prefix}_PORT"] == str(grpc_port)
            assert env[f"{prefix}_METRICS_PORT"] == str(metrics_port)
            assert container["args"] == [service]
            ports = {port["name"]: port["containerPort"] for port in container["ports"]}
            assert ports["grpc"] == grpc_port and ports["metrics"] == metrics_port
            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == str(metrics_port)


def test_services_and_envoy_roll_out_without_ever_losing_a_ready_pod(rendered):
    for overlay, objects in rendered.items():
        for name in (*SERVICES, "envoy"):
            strategy = named(objects, "Deployment", name)["spec"]["strategy"]
            assert strategy["type"] == "RollingUpdate", f"{overlay}: {name}"
            assert strategy["rollingUpdate"]["maxUnavailable"] == 0, f"{overlay}: {name}"


def test_every_deployment_is_covered_by_a_pod_disruption_budget(rendered):
    for overlay, objects in rendered.items():
        budgets = of_kind(objects, "PodDisruptionBudget")
        for deployment in of_kind(objects, "Deployment"):
            if deployment["metadata"]["labels"].get("app.kubernetes.io/component") == (
                "dev-dependency"
            ):
                continue
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            covering = [pdb for pdb in budgets if selects(pdb["spec"]["selector"], labels)]
            assert covering, f"{overlay}: no PodDisruptionBudget selects {labels}"


def test_ingest_and_query_scale_with_an_hpa_that_owns_their_replica_count(rendered):
    for overlay, objects in rendered.items():
        hpas = {
            hpa["spec"]["scaleTargetRef"]["name"]: hpa
            for hpa in of_kind(objects, "HorizontalPodAutoscaler")
        }
        for name in AUTOSCALED:
            assert name in hpas, f"{overlay}: no HPA for {name}"
            spec = hpas[name]["spec"]
            assert spec["scaleTargetRef"]["kind"] == "Deployment"
            assert 1 <= spec["minReplicas"] < spec["maxReplicas"]
            # A replica count in the Deployment would be reset by every apply, fighting the HPA.
            assert "replicas" not in named(objects, "Deployment", name)["spec"], overlay
        assert "store" not in hpas, "store scales with the topic's partitions, not CPU"


def test_store_drains_and_commits_within_a_long_grace_period(rendered):
    for overlay, objects in rendered.items():
        store = named(objects, "Deployment", "store")
        grace = pod_spec(store)["terminationGracePeriodSeconds"]
        assert grace >= STORE_MIN_GRACE_SECONDS, f"{overlay}: store has only {grace}s to drain"


def test_each_service_drain_fits_inside_its_pod_grace_period(rendered):
    for overlay, objects in rendered.items():
        for service in SERVICES:
            deployment = named(objects, "Deployment", service)
            spec = pod_spec(deployment)
            container = spec["containers"][0]
            pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            env = container_env(objects, deployment)
            drain = float(env[f"EVENTPIPE_{service.upper()}_SHUTDOWN_GRACE_SECONDS"])
            assert pre_stop + drain < spec["terminationGracePeriodSeconds"], (
                f"{overlay}: {service} would be killed mid-drain"
            )


def test_namespace_denies_all_traffic_that_is_not_explicitly_allowed(rendered):
    for overlay, objects in rendered.items():
        policies = {np["metadata"]["name"]: np for np in of_kind(objects, "NetworkPolicy")}
        deny = policies["default-deny-all"]["spec"]
        assert deny["podSelector"] == {}
        assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
        assert "ingress" not in deny and "egress" not in deny
        dns = policies["allow-dns-egress"]["spec"]
        assert dns["podSelector"] == {}
        assert {"protocol": "UDP", "port": 53} in dns["egress"][0]["ports"], overlay


def test_only_envoy_accepts_traffic_from_any_source(rendered):
    for overlay, objects in rendered.items():
        for policy in of_kind(objects, "NetworkPolicy"):
            for rule in policy["spec"].get("ingress", []):
                if "from" not in rule:
                    selector = policy["spec"]["podSelector"]
                    assert selector == {"matchLabels": {"app.kubernetes.io/name": "envoy"}}, (
                        f"{overlay}: {policy['metadata']['name']} is open to any source"
                    )
                    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]


def test_services_accept_grpc_only_from_envoy(rendered):
    for overlay, objects in rendered.items():
        policy = named(objects, "NetworkPolicy", "grpc-services")["spec"]
        grpc_rule = next(
            rule
            for rule in policy["ingress"]
            if rule["ports"][0]["port"] == min(port for port, _ in SERVICES.values())
        )
        sources = [peer["podSelector"]["matchLabels"] for peer in grpc_rule["from"]]
        assert sources == [{"app.kubernetes.io/name": "envoy"}], overlay
        for service in SERVICES:
            labels = named(objects, "Deployment", service)["spec"]["template"]["metadata"]
            assert selects(policy["podSelector"], labels["labels"]), service


def test_enrich_may_manage_spark_executor_pods_in_its_own_namespace_only(rendered):
    for overlay, objects in rendered.items():
        role = named(objects, "Role", "spark-driver")
        granted = {
            (resource, verb)
            for rule in role["rules"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        for resource in ("pods", "services", "configmaps"):
            for verb in ("create", "delete", "watch", "list", "get"):
                assert (resource, verb) in granted, f"{overlay}: cannot {verb} {resource}"
        assert (
            of_kind(objects, "ClusterRole") == [] and of_kind(objects, "ClusterRoleBinding") == []
        )
        binding = named(objects, "RoleBinding", "enrich-spark-driver")
        assert binding["roleRef"]["name"] == "spark-driver"
        namespace = role["metadata"]["namespace"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "enrich", "namespace": namespace}
        ]
        enrich = named(objects, "Deployment", "enrich")
        spec = pod_spec(enrich)
        assert spec["serviceAccountName"] == "enrich"
        env = container_env(objects, enrich)
        assert env["EVENTPIPE_ENRICH_SPARK_MASTER"] == "k8s://https://kubernetes.default.svc"
        # Executors run exactly the driver's image, whatever tag the overlay chose.
        assert env["EVENTPIPE_ENRICH_SPARK_IMAGE"] == spec["containers"][0]["image"]
        for other in ("ingest", "store", "query", "envoy"):
            assert (
                pod_spec(named(objects, "Deployment", other))["automountServiceAccountToken"]
                is False
            ), f"{overlay}: {other} mounts an API token it does not need"


def spark_defaults(text: str) -> dict[str, str]:
    pairs = (line.split(None, 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value.strip() for key, value in pairs}


def test_spark_ports_are_fixed_and_open_between_driver_and_executors(rendered):
    for overlay, objects in rendered.items():
        defaults = spark_defaults(config_map(objects, "spark-conf")["data"]["spark-defaults.conf"])
        ports = {
            int(defaults["spark.driver.port"]),
            int(defaults["spark.driver.blockManager.port"]),
        }
        driver_policy = named(objects, "NetworkPolicy", "enrich-spark-driver")["spec"]
        allowed = driver_policy["ingress"][0]["ports"][0]
        opened = set(range(allowed["port"], allowed.get("endPort", allowed["port"]) + 1))
        assert ports <= opened, f"{overlay}: executors cannot reach the driver on {ports}"
        container = pod_spec(named(objects, "Deployment", "enrich"))["containers"][0]
        declared = {port["containerPort"] for port in container["ports"]}
        assert ports <= declared


def test_prod_talks_to_external_kafka_and_bigtable_and_runs_no_emulator(rendered):
    prod = rendered["prod"]
    common = config_map(prod, "eventpipe-common")["data"]
    assert "BIGTABLE_EMULATOR_HOST" not in common
    assert common["EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS"].count(",") >= 2, "needs 3+ brokers"
    names = {deployment["metadata"]["name"] for deployment in of_kind(prod, "Deployment")}
    assert names == {*SERVICES, "envoy"}


def test_dev_runs_kafka_and_the_bigtable_emulator_in_the_cluster(rendered):
    dev = rendered["dev"]
    common = config_map(dev, "eventpipe-common")["data"]
    assert common["BIGTABLE_EMULATOR_HOST"] == "bigtable-emulator:8086"
    assert common["EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    emulator = pod_spec(named(dev, "Deployment", "bigtable-emulator"))["containers"][0]
    assert emulator["command"][0].endswith("/cbtemulator")
    assert named(dev, "Service", "bigtable-emulator")["spec"]["ports"][0]["port"] == 8086
    kafka = pod_spec(named(dev, "Deployment", "kafka"))
    assert kafka["enableServiceLinks"] is False, "KAFKA_PORT from a service link breaks the image"
    assert named(dev, "Service", "kafka")["spec"]["ports"][0]["port"] == 9092


def cpu_millicores(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


def memory_bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity)


def test_prod_runs_more_replicas_with_bigger_limits_than_dev(rendered):
    dev, prod = rendered["dev"], rendered["prod"]
    for name in ("store", "envoy"):
        assert (
            named(prod, "Deployment", name)["spec"]["replicas"]
            > named(dev, "Deployment", name)["spec"]["replicas"]
        ), name
    for name in AUTOSCALED:
        assert (
            named(prod, "HorizontalPodAutoscaler", name)["spec"]["minReplicas"]
            > named(dev, "HorizontalPodAutoscaler", name)["spec"]["minReplicas"]
        )
    for name in (*SERVICES, "envoy"):
        dev_limits = pod_spec(named(dev, "Deployment", name))["containers"][0]["resources"]
        prod_limits = pod_spec(named(prod, "Deployment", name))["containers"][0]["resources"]
        assert memory_bytes(prod_limits["limits"]["memory"]) > memory_bytes(
            dev_limits["limits"]["memory"]
        ), name
        assert cpu_millicores(prod_limits["requests"]["cpu"]) > cpu_millicores(
            dev_limits["requests"]["cpu"]
        ), name


def test_each_namespace_enforces_the_restricted_pod_security_standard(rendered):
    for overlay, objects in rendered.items():
        (namespace,) = of_kind(objects, "Namespace")
        labels = namespace["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted", overlay
        namespaced = [obj for obj in objects if obj["kind"] != "Namespace"]
        assert {obj["metadata"]["namespace"] for obj in namespaced} == {
            namespace["metadata"]["name"]
        }


def envoy_config(objects: list[Manifest]) -> Manifest:
    return yaml.safe_load(config_map(objects, "envoy-config")["data"]["envoy.yaml"])


def http_filters(config: Manifest) -> list[Manifest]:
    listener = next(
        listener
        for listener in config["static_resources"]["listeners"]
        if listener["name"] == "eventpipe"
    )
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager["http_filters"]


def test_the_committed_envoy_configs_are_the_rendering_of_the_one_edge_template():
    # kustomize cannot run the renderer, so its output is committed: it must never drift.
    from eventpipe.stack.edge_k8s import rendered_files

    for path, text in rendered_files().items():
        assert path.read_text() == text, (
            f"{path.relative_to(REPO_ROOT)} is stale: run `python -m eventpipe.stack.edge_k8s`"
        )


def test_the_kubernetes_envoy_config_ignores_the_renderers_environment(monkeypatch):
    from eventpipe.stack.edge_k8s import rendered_files

    before = rendered_files()
    monkeypatch.setenv("EVENTPIPE_EDGE_TENANT_RATE", "3")
    monkeypatch.setenv("EVENTPIPE_EDGE_MAX_OPEN_STREAMS", "1")

    assert rendered_files() == before


def test_envoy_serves_one_public_listener_with_admin_on_loopback(rendered):
    for overlay, objects in rendered.items():
        config = envoy_config(objects)
        assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
        listeners = {
            listener["name"]: listener["address"]["socket_address"]["port_value"]
            for listener in config["static_resources"]["listeners"]
        }
        assert listeners["eventpipe"] == 8080, overlay
        names = [f["name"] for f in http_filters(config)]
        for required in (
            "envoy.filters.http.cors",
            "envoy.filters.http.health_check",
            "envoy.filters.http.local_ratelimit",
            "envoy.filters.http.grpc_json_transcoder",
        ):
            assert required in names, f"{overlay}: Envoy lacks {required}"
        assert names[-1] == "envoy.filters.http.router"
        # The health check answers before rate limiting and authentication can refuse it.
        assert names.index("envoy.filters.http.health_check") < names.index(
            "envoy.filters.http.local_ratelimit"
        )


def test_envoy_routes_each_grpc_service_to_its_kubernetes_service(rendered):
    for overlay, objects in rendered.items():
        config = envoy_config(objects)
        listener = config["static_resources"]["listeners"][0]
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        routes = manager["route_config"]["virtual_hosts"][0]["routes"]
        clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
        for service, (grpc_port, _) in SERVICES.items():
            prefix = f"/eventpipe.{service}.v1.{service.capitalize()}Service/"
            targets = {
                r["route"]["cluster"] for r in routes if r["match"]["prefix"].startswith(prefix)
            }
            # Ingest's streams have a cluster of their own (capped), on the same pods.
            expected = {service, "ingest_streams"} if service == "ingest" else {service}
            assert targets == expected, f"{overlay}: {prefix} routes to {targets}"
            for target in targets:
                endpoint = clusters[target]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
                address = endpoint["endpoint"]["address"]["socket_address"]
                kube_service = named(objects, "Service", address["address"])
                assert kube_service["spec"]["selector"] == {"app.kubernetes.io/name": service}
                assert address["port_value"] == grpc_port
                assert clusters[target]["health_checks"][0]["grpc_health_check"] == {}


def test_prod_envoy_requires_a_jwt_from_a_remote_jwks_and_dev_envoy_does_not(rendered):
    prod_filters = {f["name"]: f for f in http_filters(envoy_config(rendered["prod"]))}
    jwt = prod_filters["envoy.filters.http.jwt_authn"]["typed_config"]
    (provider,) = jwt["providers"].values()
    assert provider["remote_jwks"]["http_uri"]["uri"].startswith("https://")
    assert provider["forward"] is True, "services validate the token too"
    common = config_map(rendered["prod"], "eventpipe-common")["data"]
    assert common["EVENTPIPE_AUTH_JWKS_URL"] == provider["remote_jwks"]["http_uri"]["uri"]
    assert common["EVENTPIPE_AUTH_ISSUER"] == provider["issuer"]
    assert common["EVENTPIPE_AUTH_AUDIENCE"] in provider["audiences"]
    dev_filters = [f["name"] for f in http_filters(envoy_config(rendered["dev"]))]
    assert "envoy.filters.http.jwt_authn" not in dev_filters


PROD_ONLY_KEYS = {
    "transport_socket",  # TLS on the public listener (the jwks cluster's is dropped with it)
    "allow_origin_string_match",  # the configured CORS origins; dev allows any
}


def without_keys(node: Any, keys: set[str]) -> Any:
    """A copy of a YAML tree without the given mapping keys, at any depth."""
    if isinstance(node, dict):
        return {k: without_keys(v, keys) for k, v in node.items() if k not in keys}
    if isinstance(node, list):
        return [without_keys(item, keys) for item in node]
    return node


def test_prod_envoy_config_is_the_dev_config_plus_authentication_tls_and_cors_only(rendered):
    dev, prod = envoy_config(rendered["dev"]), envoy_config(rendered["prod"])
    listener = prod["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    manager["http_filters"] = [
        f for f in manager["http_filters"] if f["name"] != "envoy.filters.http.jwt_authn"
    ]
    prod["static_resources"]["clusters"] = [
        c for c in prod["static_resources"]["clusters"] if c["name"] != "jwks"
    ]
    assert without_keys(prod, PROD_ONLY_KEYS) == without_keys(dev, PROD_ONLY_KEYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_liveness_probes_ask_the_liveness_health_name_not_readiness(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    for name in SERVICES:
        container = named(rendered[overlay], "Deployment", name)["spec"]["template"]["spec"][
            "containers"
        ][0]
        assert container["livenessProbe"]["grpc"].get("service") == "liveness", name
        assert container["readinessProbe"]["grpc"].get("service", "") == "", name


# --- production secrets, the edge, worker counts, topology, managed Kafka (issues 13, 16) -----

PAGE_TOKEN_SECRETS = {"query": "query", "store": "store", "enrich": "enrich"}
PROD_SECRETS = {"eventpipe-page-tokens", "enrich-spark-auth", "kafka-credentials", "envoy-tls"}
DEPLOYMENT_DOC = REPO_ROOT / "docs" / "deployment.md"


def env_var(container: Manifest, name: str) -> Manifest:
    matches = [var for var in container.get("env", []) if var["name"] == name]
    assert len(matches) == 1, f"{container['name']} sets {name} {len(matches)} times"
    return matches[0]


def test_page_token_secrets_come_from_a_secret_and_query_and_store_refuse_to_start_without(
    rendered,
):
    for overlay, objects in rendered.items():
        for service, key in PAGE_TOKEN_SECRETS.items():
            deployment = named(objects, "Deployment", service)
            container = pod_spec(deployment)["containers"][0]
            variable = f"EVENTPIPE_{service.upper()}_PAGE_TOKEN_SECRET"
            ref = env_var(container, variable)["valueFrom"]["secretKeyRef"]
            assert ref["name"].startswith("eventpipe-page-tokens"), (overlay, service)
            assert ref["key"] == key
            assert ref.get("optional", False) is False, "a missing secret must stop the pod"
            assert variable not in container_env(objects, deployment), "a literal would win"
        for service in ("query", "store"):
            env = container_env(objects, named(objects, "Deployment", service))
            assert env[f"EVENTPIPE_{service.upper()}_REQUIRE_PAGE_TOKEN_SECRET"] == "true"


@pytest.mark.parametrize("service", ["query", "store"])
def test_the_prod_environment_without_its_secret_stops_the_service_at_start(
    rendered, monkeypatch, service
):
    from eventpipe.core.config import ConfigError, load_settings
    from query.config import QuerySettings
    from store.config import StoreSettings

    settings_class = {"query": QuerySettings, "store": StoreSettings}[service]
    env = container_env(rendered["prod"], named(rendered["prod"], "Deployment", service))
    for key in list(os.environ):
        if key.startswith("EVENTPIPE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    with pytest.raises(ConfigError, match=f"EVENTPIPE_{service.upper()}_PAGE_TOKEN_SECRET"):
        load_settings(settings_class)
    monkeypatch.setenv(f"EVENTPIPE_{service.upper()}_PAGE_TOKEN_SECRET", "x" * 32)
    assert load_settings(settings_class).page_token_secret is not None


def test_prod_commits_no_secret_and_the_deployment_guide_says_how_to_create_each_it_reads(
    rendered,
):
    prod = rendered["prod"]
    assert of_kind(prod, "Secret") == [], "production secrets never live in git"
    referenced = {
        name for workload in workloads(prod) for name, _key in secret_references(pod_spec(workload))
    }
    assert referenced == PROD_SECRETS
    guide = DEPLOYMENT_DOC.read_text()
    for name in referenced:
        assert re.search(rf"kubectl [^\n]*create secret [a-z]+ {re.escape(name)}\b", guide), name


def test_dev_generates_every_secret_and_key_its_pods_read(rendered):
    dev = rendered["dev"]
    secrets = {secret["metadata"]["name"]: secret for secret in of_kind(dev, "Secret")}
    for workload in workloads(dev):
        for name, key in secret_references(pod_spec(workload)):
            assert name in secrets, f"{workload['metadata']['name']} reads a missing Secret {name}"
            if key is not None:
                assert key in secrets[name]["data"], f"{name} has no {key}"


def test_enrich_gets_the_spark_authenticate_secret_from_a_secret(rendered):
    for overlay, objects in rendered.items():
        container = pod_spec(named(objects, "Deployment", "enrich"))["containers"][0]
        ref = env_var(container, "EVENTPIPE_ENRICH_SPARK_AUTH_SECRET")["valueFrom"]
        assert ref["secretKeyRef"]["name"].startswith("enrich-spark-auth"), overlay


def test_ingest_and_query_run_one_worker_per_cpu_of_their_limit(rendered):
    for overlay, objects in rendered.items():
        for service in ("ingest", "query"):
            container = pod_spec(named(objects, "Deployment", service))["containers"][0]
            variable = f"EVENTPIPE_{service.upper()}_WORKERS"
            field = env_var(container, variable)["valueFrom"]["resourceFieldRef"]
            assert field == {
                "containerName": service,
                "resource": "limits.cpu",
                "divisor": "1",
            }, overlay
            assert "cpu" in container["resources"]["limits"]


def test_a_job_creates_the_topology_and_every_service_waits_for_it_before_starting(rendered):
    for overlay, objects in rendered.items():
        job = named(objects, "Job", "ensure-topology")
        spec = pod_spec(job)
        (container,) = spec["containers"]
        assert [*container["command"], *container["args"]] == [
            "eventpipe",
            "admin",
            "ensure-topology",
        ]
        assert spec["restartPolicy"] == "OnFailure"
        assert job["spec"]["ttlSecondsAfterFinished"] > 0, "a finished Job must make way"
        common = config_map(objects, "eventpipe-common")["metadata"]["name"]
        assert {"configMapRef": {"name": common}} in container["envFrom"]
        for service in SERVICES:
            deployment = named(objects, "Deployment", service)
            (init,) = pod_spec(deployment)["initContainers"]
            command = [*init["command"], *init["args"]]
            assert command[:3] == ["eventpipe", "admin", "await-topology"], (overlay, service)
            assert ("--topics-only" in command) == (service == "ingest"), service
            # The same Kafka and Bigtable settings as the service and the Job.
            assert container_env(objects, deployment, init) == container_env(objects, job)
        policy = named(objects, "NetworkPolicy", "ensure-topology")["spec"]
        assert selects(policy["podSelector"], job["spec"]["template"]["metadata"]["labels"])
        assert "ingress" not in policy and "Ingress" in policy["policyTypes"]


def test_envoy_reaches_each_service_only_on_its_own_port_and_services_call_no_service(rendered):
    for overlay, objects in rendered.items():
        envoy = named(objects, "NetworkPolicy", "envoy")["spec"]
        in_cluster = [rule for rule in envoy["egress"] if "to" in rule]
        allowed = {
            (rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], port["port"])
            for rule in in_cluster
            for port in rule["ports"]
        }
        assert allowed == {(name, port) for name, (port, _) in SERVICES.items()}, overlay
        assert all("endPort" not in port for rule in in_cluster for port in rule["ports"])
        services = named(objects, "NetworkPolicy", "grpc-services")["spec"]
        assert all("to" not in rule for rule in services["egress"]), "no service calls another"


def test_prod_uses_tls_and_sasl_to_a_managed_kafka_in_every_kafka_client(rendered, monkeypatch):
    from eventpipe.core.config import CommonSettings, load_settings

    prod = rendered["prod"]
    kafka_clients = [
        workload
        for workload in workloads(prod)
        if workload["metadata"]["name"] in (*SERVICES, "ensure-topology")
    ]
    assert len(kafka_clients) == len(SERVICES) + 1
    for workload in kafka_clients:
        spec = pod_spec(workload)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            sources = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
            assert sources == ["kafka-credentials"], (workload["metadata"]["name"], container)
    # What the Secret must hold, as docs/deployment.md creates it, makes valid settings.
    for key in list(os.environ):
        if key.startswith("EVENTPIPE_"):
            monkeypatch.delenv(key)
    for key, value in container_env(prod, named(prod, "Job", "ensure-topology")).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EVENTPIPE_KAFKA_SASL_USERNAME", "eventpipe")
    monkeypatch.setenv("EVENTPIPE_KAFKA_SASL_PASSWORD", "from-the-secret")
    settings = load_settings(CommonSettings)
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism is not None


def test_prod_envoy_serves_the_certificate_of_a_tls_secret_mounted_where_its_config_reads_it(
    rendered,
):
    prod = rendered["prod"]
    spec = pod_spec(named(prod, "Deployment", "envoy"))
    (container,) = spec["containers"]
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    (tls_volume,) = [name for name, v in volumes.items() if v.get("secret", {}).get("secretName")]
    assert mounts[tls_volume]["mountPath"] == "/etc/envoy/tls"
    assert mounts[tls_volume]["readOnly"] is True
    served = {item["path"] for item in volumes[tls_volume]["secret"]["items"]}
    assert served == {"tls.crt", "tls.key"}
    config = config_map(prod, "envoy-config")["data"]["envoy.yaml"]
    read = set(re.findall(r"/etc/envoy/tls/([A-Za-z0-9._-]+)", config))
    assert read <= served, f"Envoy reads {read - served}, which the Secret does not hold"
    listener = next(
        listener
        for listener in yaml.safe_load(config)["static_resources"]["listeners"]
        if listener["name"] == "eventpipe"
    )
    serves_tls = any("transport_socket" in chain for chain in listener["filter_chains"])
    scheme = container["readinessProbe"]["httpGet"].get("scheme", "HTTP")
    assert scheme == ("HTTPS" if serves_tls else "HTTP"), "probes must speak the listener's TLS"
    assert of_kind(rendered["dev"], "Deployment") and not any(
        "secret" in volume
        for volume in pod_spec(named(rendered["dev"], "Deployment", "envoy"))["volumes"]
    ), "dev keeps plain HTTP and needs no certificate"


def test_prod_cors_allows_only_the_configured_https_origins(rendered):
    common = config_map(rendered["prod"], "eventpipe-common")["data"]
    origins = [origin.strip() for origin in common["EVENTPIPE_EDGE_CORS_ORIGINS"].split(",")]
    assert origins and "*" not in origins
    assert all(origin.startswith("https://") for origin in origins), origins


def test_the_cert_manager_component_asks_for_the_secret_prod_envoy_mounts(tmp_path):
    from tests.helpers.k8s import rendered_kustomization

    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # As when the component is listed among the prod overlay's own components.
                "namespace": "eventpipe",
                "resources": [os.path.relpath(REPO_ROOT / "k8s" / "overlays" / "prod", tmp_path)],
                "components": [
                    os.path.relpath(REPO_ROOT / "k8s" / "components" / "cert-manager", tmp_path)
                ],
            }
        )
    )
    objects = rendered_kustomization(tmp_path)
    (certificate,) = of_kind(objects, "Certificate")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert certificate["metadata"]["namespace"] == "eventpipe"
    assert certificate["spec"]["secretName"] == "envoy-tls"
    assert certificate["spec"]["dnsNames"] and certificate["spec"]["issuerRef"]["name"]


def test_dashboards_and_alert_rules_ship_as_configmaps_unchanged_for_the_sidecars(rendered):
    observability = REPO_ROOT / "k8s" / "observability"
    for overlay, objects in rendered.items():
        rules = named(objects, "ConfigMap", "eventpipe-prometheus-rules")
        assert rules["metadata"]["labels"]["prometheus_rule"] == "1"
        assert rules["data"]["eventpipe.rules.yaml"] == (observability / "alerts.yaml").read_text()
        dashboards = named(objects, "ConfigMap", "eventpipe-grafana-dashboards")
        assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
        for path in (observability / "dashboards").glob("*.json"):
            assert dashboards["data"][path.name] == path.read_text(), overlay
