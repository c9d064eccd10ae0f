"""The cluster profile is what it claims: three brokers holding the raw topic at replication
factor 3 with min.insync.replicas 2, two replicas of each service, Envoy balancing over them,
and enrich on the Spark standalone master."""

from __future__ import annotations

import json
import urllib.request
from collections import defaultdict

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from eventpipe.core.config import CommonSettings
from eventpipe.stack.components import SERVICE_NAMES, SparkMaster
from eventpipe.stack.stack import CLUSTER_BROKERS, CLUSTER_REPLICAS, Stack, StackConfig

from tests.cluster.conftest import CLUSTER_TEST_TIMEOUT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(CLUSTER_TEST_TIMEOUT)]


def test_every_component_of_the_profile_is_healthy(cluster_stack: Stack) -> None:
    rows = cluster_stack.status()
    unhealthy = [(row.name, row.health) for row in rows if row.health not in {"ready", "SERVING"}]
    assert not unhealthy
    names = {row.name for row in rows}
    assert {f"kafka-{k}" for k in range(1, CLUSTER_BROKERS + 1)} <= names
    for service in SERVICE_NAMES:
        assert {f"{service}-{k}" for k in range(1, CLUSTER_REPLICAS + 1)} <= names
    assert {"spark-master", "spark-worker", "envoy", "bigtable"} <= names


def test_the_raw_topic_has_three_replicas_and_needs_two_in_sync(
    cluster_settings: CommonSettings,
) -> None:
    admin = AdminClient({"bootstrap.servers": cluster_settings.kafka_bootstrap_servers})
    topic = admin.list_topics(cluster_settings.raw_topic, timeout=10).topics[
        cluster_settings.raw_topic
    ]
    assert topic.partitions
    assert all(len(p.replicas) == CLUSTER_BROKERS for p in topic.partitions.values())
    resource = ConfigResource(ConfigResource.Type.TOPIC, cluster_settings.raw_topic)
    config = admin.describe_configs([resource])[resource].result(timeout=10)
    assert config["min.insync.replicas"].value == "2"


def test_envoy_balances_each_service_over_both_replicas(cluster_stack: Stack) -> None:
    url = f"{cluster_stack.envoy.admin_url}/clusters?format=json"
    with urllib.request.urlopen(url, timeout=5) as response:
        clusters = json.load(response)["cluster_statuses"]
    ports: dict[str, set[int]] = defaultdict(set)
    for cluster in clusters:
        for host in cluster.get("host_statuses", []):
            ports[cluster["name"]].add(host["address"]["socket_address"]["port_value"])
    config = cluster_stack.config
    for service in SERVICE_NAMES:
        assert ports[service] == set(config.grpc_ports(service))
    assert ports["ingest_streams"] == set(config.grpc_ports("ingest"))


def test_enrich_is_pointed_at_the_standalone_master(cluster_stack: Stack) -> None:
    master = cluster_stack.spark[0]
    assert isinstance(master, SparkMaster)
    for replica in cluster_stack.replicas["enrich"]:
        assert replica.env()["EVENTPIPE_ENRICH_SPARK_MASTER"] == master.master_url


def test_the_saved_configuration_names_the_profile_so_status_and_down_find_it(
    cluster_stack: Stack,
) -> None:
    saved = StackConfig.of_running_stack(run_dir=cluster_stack.config.run_dir)
    assert saved == cluster_stack.config
    assert {c.name for c in Stack(saved).components()} == {
        c.name for c in cluster_stack.components()
    }
