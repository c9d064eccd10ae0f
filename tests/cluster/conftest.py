"""The cluster tier: the local stack's ``cluster`` profile (three KRaft brokers, two replicas of
every service behind Envoy, a Spark standalone master and worker), started once for the whole
tier on free ports under the session's run folder, and stopped at the end, also on failure.

Tests here break it on purpose (kill -9 a broker, a consumer, a replica) and must leave it
whole for the next: each restarts what it killed before it ends, with ``restored``. Each test
uses its own tenant; the topics and tables are the stack's own (one topic prefix, one table
prefix for the tier), as in a deployment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from eventpipe.core.config import CommonSettings
from eventpipe.core.waiting import DeadlineExceeded
from eventpipe.stack import install
from eventpipe.stack.components import SERVICE_NAMES, Component, ComponentError
from eventpipe.stack.probes import free_port
from eventpipe.stack.stack import CLUSTER_BROKERS, CLUSTER_REPLICAS, Stack, StackConfig

from tests.conftest import Isolation, install_or_fail


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def cluster_config(run_dir: Path) -> StackConfig:
    """The cluster profile on free ports, with names of its own."""
    names = Isolation.new()
    brokers = _free_ports(2 * CLUSTER_BROKERS)
    replicas = {name: _free_ports(CLUSTER_REPLICAS) for name in SERVICE_NAMES}
    metrics = {name: _free_ports(CLUSTER_REPLICAS) for name in SERVICE_NAMES}
    return StackConfig(
        run_dir=run_dir,
        profile="cluster",
        envoy_port=free_port(),
        envoy_admin_port=free_port(),
        kafka_port=brokers[0],
        kafka_controller_port=brokers[CLUSTER_BROKERS],
        kafka_ports=brokers[:CLUSTER_BROKERS],
        kafka_controller_ports=brokers[CLUSTER_BROKERS:],
        emulator_port=free_port(),
        service_ports={name: ports[0] for name, ports in replicas.items()},
        metrics_ports={name: ports[0] for name, ports in metrics.items()},
        replica_ports=replicas,
        replica_metrics_ports=metrics,
        spark_master_port=free_port(),
        spark_master_ui_port=free_port(),
        spark_worker_ui_port=free_port(),
        topic_prefix=names.topic_prefix,
        table_prefix=names.table_prefix,
    )


@pytest.fixture(scope="session")
def cluster_stack(run_dir: Path) -> Iterator[Stack]:
    """The cluster profile as ``eventpipe stack up --profile cluster`` starts it (no auth, no
    demo data). Fails, never skips, when it cannot start."""
    install_or_fail("kafka", "cbtemulator", "envoy")
    config = cluster_config(run_dir / "cluster")
    stack = Stack(config, progress=lambda _message: None)
    try:
        stack.up(demo=False)
    except (ComponentError, DeadlineExceeded, install.InstallError) as exc:
        stack.down()
        pytest.fail(
            f"could not start the cluster profile in {config.run_dir}: {exc}", pytrace=False
        )
    except BaseException:
        stack.down()
        raise
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BIGTABLE_EMULATOR_HOST", config.emulator_host)
        try:
            yield stack
        finally:
            stack.down()


@pytest.fixture(scope="session")
def cluster_settings(cluster_stack: Stack) -> CommonSettings:
    """The settings every service of the cluster runs with."""
    env = cluster_stack.config.service_env()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        return CommonSettings()


@contextlib.contextmanager
def restored(component: Component, timeout: float = 180.0) -> Iterator[Component]:
    """Hands ``component`` to a test that may kill it; starts it again (if it is not running)
    when the test ends, pass or fail, so the next test finds the cluster whole."""
    try:
        yield component
    finally:
        if not component.process.is_running():
            component.start(timeout)
        else:
            component.wait_healthy(timeout)


@pytest.fixture
def tenant() -> str:
    return Isolation.new().tenant_id
