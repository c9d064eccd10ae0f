"""The cluster tier: the local stack's ``cluster`` profile (three KRaft brokers, two replicas of
every service behind Envoy, a Spark standalone master and worker), started once for the whole
tier on free ports under the session's run folder, and stopped when the tier's last test ends,
also on failure.

Tests here break it on purpose (kill -9 a broker, a consumer, a replica) and must leave it
whole for the next: each restarts what it killed before it ends, with ``restored``. Each test
uses its own tenant; the topics and tables are the stack's own (one topic prefix, one table
prefix for the tier), as in a deployment.
"""

from __future__ import annotations

import contextlib
import random
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from eventpipe.common.v1 import event_pb2
from eventpipe.core import topic_contract
from eventpipe.core.config import CommonSettings, load_settings
from eventpipe.core.kafka import consumer_config
from eventpipe.core.storage import keys
from eventpipe.core.storage.tables import RAW_EVENTS_TABLE
from eventpipe.core.waiting import DeadlineExceeded, wait_until
from eventpipe.stack import install
from eventpipe.stack.components import SERVICE_NAMES, Component, ComponentError
from eventpipe.stack.stack import CLUSTER_BROKERS, CLUSTER_REPLICAS, Stack, StackConfig
from google.cloud.bigtable.data import BigtableDataClient, ReadRowsQuery, RowRange

from tests.conftest import Isolation, install_or_fail

# The cluster takes minutes to start, and every connection it makes meanwhile takes a port from
# the kernel's ephemeral range (32768-60999 on Linux), where ``free_port`` also picks: a port
# picked there at the start may be someone's outgoing connection by the time its process
# starts. The cluster's ports come from below that range instead, each checked free.
CLUSTER_PORT_RANGE = (20_000, 32_000)
# pytest-timeout counts a test's fixtures too: the first test of the tier starts the cluster
# (minutes on a busy 2-core machine), and a job on the standalone master is slow to start.
CLUSTER_TEST_TIMEOUT = 1800
_TAKEN: set[int] = set()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int, taken: set[int] = _TAKEN) -> list[int]:
    """``count`` free ports below the ephemeral range, none handed out before."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(*CLUSTER_PORT_RANGE)
        if port not in taken and _port_is_free(port):
            taken.add(port)
            ports.append(port)
    return sorted(ports)


def free_port() -> int:
    (port,) = _free_ports(1)
    return port


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


# Package scope: the cluster stops when the tier's last test ends, not with the session, so
# the tiers that run after it do not share the machine with three idle brokers.
@pytest.fixture(scope="package")
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


@pytest.fixture(scope="package")
def cluster_settings(cluster_stack: Stack) -> CommonSettings:
    """The settings every service of the cluster runs with."""
    env = cluster_stack.config.service_env()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        return load_settings(CommonSettings)


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


def stored_rows(settings: CommonSettings, tenant_id: str) -> dict[str, Counter[tuple[str, bytes]]]:
    """event_id -> cell versions per column, for every raw-table row of ``tenant_id``."""
    client = BigtableDataClient(project=settings.bigtable_project)
    try:
        table = client.get_table(
            settings.bigtable_instance, settings.table_prefix + RAW_EVENTS_TABLE
        )
        ranges = [RowRange(start, end) for start, end in keys.tenant_event_ranges(tenant_id)]
        result: dict[str, Counter[tuple[str, bytes]]] = {}
        for row in table.read_rows(ReadRowsQuery(row_ranges=ranges)):
            event_id = row.row_key.rsplit(b"#", 1)[1].decode()
            assert event_id not in result, f"event {event_id} stored in two rows"
            result[event_id] = Counter((cell.family, cell.qualifier) for cell in row.cells)
        return result
    finally:
        client.close()


def wait_stored(
    settings: CommonSettings, tenant_id: str, event_ids: set[str], timeout: float = 300
) -> dict[str, Counter[tuple[str, bytes]]]:
    """The tenant's rows once every one of ``event_ids`` is there (fails after ``timeout``)."""
    found: dict[str, Counter[tuple[str, bytes]]] = {}

    def all_there() -> bool:
        found.clear()
        found.update(stored_rows(settings, tenant_id))
        return event_ids <= found.keys()

    wait_until(all_there, timeout=timeout, what=f"{len(event_ids)} events in Bigtable", interval=2)
    return found


def raw_topic_event_ids(settings: CommonSettings, tenant_id: str) -> Counter[str]:
    """How many times each event id of ``tenant_id`` is in the raw topic (read to its end)."""
    topic = settings.raw_topic
    consumer = Consumer(consumer_config(settings, f"reader-{uuid.uuid4().hex[:8]}"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for partition in partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)
            ends[partition] = high
        assigned = [TopicPartition(topic, p, 0) for p in partitions]
        consumer.assign(assigned)
        ids: Counter[str] = Counter()
        prefix = topic_contract.tenant_key_prefix(tenant_id)

        def read_to_end() -> bool:
            for message in consumer.consume(1000, 0.5):
                if message.error() is None and (message.key() or b"").startswith(prefix):
                    ids[event_pb2.Event.FromString(message.value() or b"").event_id] += 1
            # The position, not the last message: transaction markers take offsets too.
            return all(tp.offset >= ends[tp.partition] for tp in consumer.position(assigned))

        wait_until(read_to_end, timeout=120, what="the raw topic read to its end", interval=0)
        return ids
    finally:
        consumer.close()
