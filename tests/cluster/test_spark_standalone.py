"""A batch enrichment job run by enrich on the Spark standalone master writes exactly what the
same job writes in Spark's local mode, for the same data: two tenants get identical dimensions,
spec and events; one tenant's job runs on the cluster profile's enrich (spark://), the other's
on an enrich process of its own in local mode, against the same Kafka and Bigtable."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from eventpipe.stack.components import GrpcService, SparkMaster
from eventpipe.stack.stack import Stack

from tests.cluster.conftest import CLUSTER_TEST_TIMEOUT, free_port
from tests.cluster.pipeline import job_output, load_dataset, run_batch_job
from tests.conftest import Isolation, start_or_fail

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(CLUSTER_TEST_TIMEOUT)]


@pytest.fixture
def local_enrich(cluster_stack: Stack, run_dir: Path) -> Iterator[GrpcService]:
    """An enrich process of its own on the cluster's Kafka and Bigtable, Spark in local mode."""
    port = free_port()
    env = cluster_stack.replicas["enrich"][0].env()
    env.update(
        {
            "EVENTPIPE_ENRICH_PORT": str(port),
            "EVENTPIPE_ENRICH_METRICS_PORT": str(free_port()),
            "EVENTPIPE_ENRICH_SPARK_MASTER": "local[2]",
            "EVENTPIPE_ENRICH_SPARK_CONF": "spark.driver.memory=512m",
        }
    )
    service = GrpcService(
        "enrich-local", run_dir / f"enrich-local-{uuid.uuid4().hex[:6]}", port, env, module="enrich"
    )
    start_or_fail(service, 180)
    yield service
    service.stop()


def test_a_batch_job_on_the_standalone_master_writes_what_local_mode_writes(
    cluster_stack: Stack, local_enrich: GrpcService
) -> None:
    on_cluster, on_local = Isolation.new().tenant_id, Isolation.new().tenant_id
    for tenant in (on_cluster, on_local):
        load_dataset(cluster_stack, tenant)
    master = cluster_stack.spark[0]
    assert isinstance(master, SparkMaster)
    enrich = cluster_stack.replicas["enrich"][0]

    cluster_job = run_batch_job(enrich.address, on_cluster)
    local_job = run_batch_job(local_enrich.address, on_local)

    assert cluster_job["state"] == "JOB_STATE_SUCCEEDED", cluster_job
    assert local_job["state"] == "JOB_STATE_SUCCEEDED", local_job
    status = master.status()
    apps = status.get("activeapps", []) + status.get("completedapps", [])
    assert apps, "no application ever ran on the standalone master"
    cluster_output = job_output(cluster_stack, on_cluster)
    assert any(v.get("profile") for k, v in cluster_output.items() if k.endswith("/profile"))
    assert cluster_output == job_output(cluster_stack, on_local)
