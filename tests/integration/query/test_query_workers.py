"""Several query worker processes on one port (EVENTPIPE_QUERY_WORKERS, docs/serving.md), as
real processes on the real emulator and Kafka: both serve, their metrics add up, an entity
change reaches every worker's cache, and SIGTERM drains every worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from confluent_kafka import Producer
from eventpipe.core.config import CommonSettings
from eventpipe.core.entity_changes import EntityChange
from eventpipe.core.kafka import producer_config
from eventpipe.core.storage import tables
from eventpipe.core.topology import ensure_topology
from eventpipe.core.waiting import wait_until
from eventpipe.query.v1 import query_pb2, query_pb2_grpc
from eventpipe.stack import probes
from eventpipe.stack.components import BigtableEmulator, KafkaBroker
from eventpipe.stack.probes import free_port

from tests.conftest import Isolation
from tests.helpers.http import metric_values
from tests.integration.query.loader import RowLoader
from tests.unit.query.rows import BASE_MICROS, HOUR, number, profile_row, string

REPO = Path(__file__).resolve().parents[3]
WORKERS = 2
INVALIDATION_BOUND_SECONDS = 2.0
"""The stated bound (docs/query.md), which holds in every worker."""
MAX_CONNECTIONS = 64
"""Connections opened at most while waiting for each worker to get one (the kernel picks a
worker per connection by hash, so a few suffice)."""


@dataclass
class Workers:
    """A query supervisor with ``WORKERS`` workers, its names, log and connections."""

    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    common: CommonSettings
    tenant: str
    log_path: Path
    loader: RowLoader
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metrics(self) -> dict[str, float]:
        return metric_values(self.metrics_port)

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def new_channel(self) -> grpc.Channel:
        """A connection of its own (channels to one address otherwise share one)."""
        channel = grpc.insecure_channel(
            self.address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.channels.append(channel)
        return channel

    def log_lines(self) -> list[dict[str, object]]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def seed_profile(self, entity: str, plan: str, count: int) -> None:
        self.loader.write(
            tables.ENTITY_PROFILES_TABLE,
            [
                profile_row(
                    self.tenant,
                    entity,
                    fields={"users.plan": string(plan), "users.score": number(1.0)},
                    first_seen=BASE_MICROS,
                    last_seen=BASE_MICROS + HOUR,
                    update_time=BASE_MICROS + 2 * HOUR + count,
                    event_count=count,
                    type_counts={"purchase": count},
                    totals={"revenue": 1.0 * count},
                )
            ],
        )

    def announce_change(self, entity: str) -> None:
        producer = Producer(producer_config(self.common))
        change = EntityChange.now(self.tenant, entity)
        producer.produce(self.common.entity_changes_topic, key=change.key(), value=change.encode())
        assert producer.flush(10) == 0

    def channels_on_every_worker(self, entity: str) -> list[grpc.Channel]:
        """Opens connections, each reading ``entity`` once, until every worker's cache holds
        it (cache entries add up over the workers); returns those connections."""
        request = query_pb2.GetEntityRequest(tenant_id=self.tenant, entity_id=entity)
        before = self.metric("eventpipe_query_cache_entries")
        opened: list[grpc.Channel] = []

        def every_worker_cached() -> bool:
            assert len(opened) < MAX_CONNECTIONS, "the kernel gave every connection one worker"
            channel = self.new_channel()
            query_pb2_grpc.QueryServiceStub(channel).GetEntity(request, timeout=10)
            opened.append(channel)
            return self.metric("eventpipe_query_cache_entries") - before == WORKERS

        wait_until(every_worker_cached, timeout=60, what="a connection on every worker")
        return opened


def start_workers(
    tmp_path: Path, kafka: KafkaBroker, emulator: BigtableEmulator, **env: str
) -> Workers:
    names = Isolation.new()
    common = CommonSettings(
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        topic_prefix=names.topic_prefix,
        table_prefix=names.table_prefix,
    )
    ensure_topology(common)
    port, metrics_port = free_port(), free_port()
    log_path = tmp_path / f"query-{uuid.uuid4().hex[:6]}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "query"],
            cwd=REPO,
            env={
                **os.environ,
                "EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                "BIGTABLE_EMULATOR_HOST": emulator.emulator_host,
                "EVENTPIPE_TOPIC_PREFIX": names.topic_prefix,
                "EVENTPIPE_TABLE_PREFIX": names.table_prefix,
                "EVENTPIPE_QUERY_HOST": "127.0.0.1",
                "EVENTPIPE_QUERY_PORT": str(port),
                "EVENTPIPE_QUERY_METRICS_PORT": str(metrics_port),
                "EVENTPIPE_QUERY_WORKERS": str(WORKERS),
                # Long enough that only an invalidation can refresh an answer within a test.
                "EVENTPIPE_QUERY_CACHE_TTL_SECONDS": "600",
                "PYTHONUNBUFFERED": "1",
                **env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    workers = Workers(
        process, port, metrics_port, common, names.tenant_id, log_path, RowLoader(common)
    )

    def serving_with_the_cache_on() -> bool:
        assert process.poll() is None, log_path.read_text()
        return (
            probes.grpc_health(workers.address) == "SERVING"
            and workers.metrics().get("eventpipe_server_workers") == WORKERS
            and workers.metrics().get("eventpipe_query_cache_suspended") == 0.0
        )

    wait_until(serving_with_the_cache_on, timeout=90, what="every query worker SERVING")
    return workers


@pytest.fixture
def workers(
    tmp_path: Path, kafka_broker: KafkaBroker, bigtable_emulator: BigtableEmulator
) -> Iterator[Workers]:
    running = start_workers(tmp_path, kafka_broker, bigtable_emulator)
    try:
        yield running
    finally:
        stop(running)


def stop(workers: Workers) -> None:
    for channel in workers.channels:
        channel.close()
    workers.loader.close()
    if workers.process.poll() is None:
        workers.process.send_signal(signal.SIGTERM)
        try:
            workers.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            workers.process.kill()
            workers.process.wait()


def test_two_workers_serve_one_port_and_their_request_counts_add_up(workers: Workers) -> None:
    workers.seed_profile("user-1", "free", 1)
    channels = workers.channels_on_every_worker("user-1")
    method = "/eventpipe.query.v1.QueryService/GetEntity"
    counted = f'eventpipe_rpc_requests_total{{code="NOT_FOUND",method="{method}"}}'
    before = workers.metric(counted)

    for n, channel in enumerate(channels * 3):
        request = query_pb2.GetEntityRequest(tenant_id=workers.tenant, entity_id=f"nobody-{n}")
        with pytest.raises(grpc.RpcError) as refused:
            query_pb2_grpc.QueryServiceStub(channel).GetEntity(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND

    assert workers.metric(counted) - before == len(channels) * 3
    assert workers.metric("eventpipe_server_workers") == WORKERS


def test_an_entity_change_refreshes_the_cached_profile_in_every_worker_within_the_bound(
    workers: Workers,
) -> None:
    workers.seed_profile("user-1", "free", 1)
    channels = workers.channels_on_every_worker("user-1")
    request = query_pb2.GetEntityRequest(tenant_id=workers.tenant, entity_id="user-1")
    stubs = [query_pb2_grpc.QueryServiceStub(channel) for channel in channels]
    workers.seed_profile("user-1", "pro", 2)
    # Until the change is announced, every worker still answers from its cache.
    assert {stub.GetEntity(request, timeout=10).profile.event_count for stub in stubs} == {1}
    dropped = workers.metric("eventpipe_query_cache_invalidated_entries_total")

    workers.announce_change("user-1")

    wait_until(
        lambda: all(stub.GetEntity(request, timeout=10).profile.event_count == 2 for stub in stubs),
        timeout=INVALIDATION_BOUND_SECONDS,
        interval=0.02,
        max_interval=0.05,
        what="every worker to serve the new profile after the entity change",
    )
    # Each worker dropped its own copy.
    assert workers.metric("eventpipe_query_cache_invalidated_entries_total") - dropped == WORKERS


def test_a_worker_that_dies_is_replaced_and_the_port_serves_again(workers: Workers) -> None:
    first = worker_pids(workers.process.pid)
    assert len(first) == WORKERS

    os.kill(first[0], signal.SIGKILL)

    def replaced() -> bool:
        pids = worker_pids(workers.process.pid)
        return (
            len(pids) == WORKERS
            and first[0] not in pids
            and probes.grpc_health(workers.address) == "SERVING"
            and workers.metric("eventpipe_server_workers") == WORKERS
        )

    wait_until(replaced, timeout=90, what="the dead worker to be replaced")


def test_sigterm_lets_the_calls_in_flight_on_every_worker_finish_then_all_exit_zero(
    tmp_path: Path, kafka_broker: KafkaBroker, bigtable_emulator: BigtableEmulator
) -> None:
    running = start_workers(
        tmp_path,
        kafka_broker,
        bigtable_emulator,
        EVENTPIPE_QUERY_SHUTDOWN_GRACE_SECONDS="60",
        EVENTPIPE_QUERY_BIGTABLE_TIMEOUT_SECONDS="60",
        EVENTPIPE_QUERY_SINGLE_FLIGHT_WAIT_SECONDS="60",
    )
    emulator_pid = bigtable_emulator.pid
    assert emulator_pid is not None
    paused = False
    try:
        running.seed_profile("user-1", "free", 1)
        channels = running.channels_on_every_worker("user-1")
        misses = running.metric('eventpipe_query_cache_misses_total{kind="profile"}')
        answers: list[int] = []
        failures: list[BaseException] = []

        def read_uncached(n: int, channel: grpc.Channel) -> None:
            request = query_pb2.GetEntityRequest(tenant_id=running.tenant, entity_id="user-2")
            try:
                reply = query_pb2_grpc.QueryServiceStub(channel).GetEntity(request, timeout=120)
                answers.append(reply.profile.event_count)
            except BaseException as exc:
                failures.append(exc)

        running.seed_profile("user-2", "free", 7)
        # The emulator holds every read, so each worker has a call in flight at SIGTERM.
        os.kill(emulator_pid, signal.SIGSTOP)
        paused = True
        calls = [
            threading.Thread(target=read_uncached, args=(n, channel))
            for n, channel in enumerate(channels)
        ]
        for call in calls:
            call.start()
        wait_until(
            lambda: (
                running.metric('eventpipe_query_cache_misses_total{kind="profile"}') - misses
                >= len(channels)
            ),
            timeout=30,
            what="every call to be in flight",
        )

        running.process.send_signal(signal.SIGTERM)
        wait_until(
            lambda: (
                sum(1 for line in running.log_lines() if line.get("msg") == "shutting down")
                >= WORKERS
            ),
            timeout=30,
            what="every worker to begin its drain",
        )
        os.kill(emulator_pid, signal.SIGCONT)
        paused = False
        for call in calls:
            call.join(timeout=120)

        assert failures == []
        assert answers == [7] * len(channels)
        assert running.process.wait(timeout=90) == 0, running.log_path.read_text()
        stopped = [line for line in running.log_lines() if line.get("msg") == "stopped"]
        assert sorted(int(str(line["worker"])) for line in stopped if "worker" in line) == [0, 1]
    finally:
        if paused:
            os.kill(emulator_pid, signal.SIGCONT)
        stop(running)


def worker_pids(supervisor_pid: int) -> list[int]:
    """The supervisor's child processes, from /proc."""
    children: list[int] = []
    for task in Path(f"/proc/{supervisor_pid}/task").glob("*/children"):
        children.extend(int(pid) for pid in task.read_text().split())
    return sorted(children)
