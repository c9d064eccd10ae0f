"""The worker model of the shared bootstrap (docs/serving.md): the default worker count comes
from the cgroup CPU limit, a worker's health answers for every worker on the shared board, and
the server's stream limits count every worker's streams, and ingest runs as a supervisor with
workers that share one port and drain on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from eventpipe.core.config import ServiceSettings
from eventpipe.core.errors import ResourceExhausted
from eventpipe.core.interceptors import SharedStreamCounts, StreamLimits
from eventpipe.core.server import (
    LIVENESS_SERVICE,
    RunningServer,
    ServiceDefinition,
    WorkerBoard,
    WorkerRole,
    WorkerState,
    cpu_limit,
    create_server,
)
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2_grpc
from eventpipe.stack import probes
from eventpipe.stack.probes import free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.http import metric_values

REPO = Path(__file__).resolve().parents[3]


# ---------------------------------------------------------------- the default worker count


def test_the_cpu_limit_is_read_from_cgroup_v2_rounded_up_to_whole_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_limit(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert cpu_limit(tmp_path) == 1


def test_no_cgroup_limit_means_no_cpu_limit(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_limit(tmp_path) is None
    assert cpu_limit(tmp_path / "missing") is None


def test_the_cpu_limit_is_read_from_cgroup_v1_when_there_is_no_v2(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_limit(tmp_path) == 4
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_limit(tmp_path) is None


def test_a_bad_worker_count_stops_the_service_at_start_naming_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "query"],
        cwd=REPO,
        env={**os.environ, "EVENTPIPE_QUERY_WORKERS": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "EVENTPIPE_QUERY_WORKERS" in result.stderr


# ---------------------------------------------------------------- health answers for every worker


@pytest.fixture
def worker_of_two(tmp_path: Path) -> Iterator[tuple[RunningServer, WorkerBoard]]:
    """An in-process server that is worker 0 of 2 on a real board; the test plays worker 1."""
    board_path = tmp_path / "workers.board"
    board = WorkerBoard.create(board_path, 2)
    settings = ServiceSettings(host="127.0.0.1", port=0)
    SharedStreamCounts.create(tmp_path / "streams.counts", 2, settings.max_streams)
    definition = ServiceDefinition(
        name="worker-test",
        grpc_service_names=["eventpipe.ingest.v1.IngestService"],
        register=partial(
            ingest_pb2_grpc.add_IngestServiceServicer_to_server,
            ingest_pb2_grpc.IngestServiceServicer(),
        ),
    )
    role = WorkerRole(index=0, count=2, board_path=board_path, supervisor_pid=os.getppid())
    running = create_server(definition, settings, start_metrics=False, worker=role)
    running.readiness_interval = 0.1
    yield running, board
    running.stop(0)


def _health(server: RunningServer, service: str = "") -> str:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def test_a_worker_is_serving_only_while_every_worker_is_ready(
    worker_of_two: tuple[RunningServer, WorkerBoard],
) -> None:
    server, board = worker_of_two
    wait_until(lambda: board.state(0) == WorkerState.READY, timeout=10, what="worker 0 ready")
    assert _health(server) == "NOT_SERVING"  # worker 1 is still starting

    board.publish(1, WorkerState.READY)
    wait_until(lambda: _health(server) == "SERVING", timeout=10, what="SERVING")

    board.publish(1, WorkerState.NOT_READY)
    wait_until(lambda: _health(server) == "NOT_SERVING", timeout=10, what="NOT_SERVING")
    assert _health(server, LIVENESS_SERVICE) == "SERVING"


def test_a_worker_whose_liveness_failed_fails_every_workers_liveness(
    worker_of_two: tuple[RunningServer, WorkerBoard],
) -> None:
    server, board = worker_of_two
    board.publish(1, WorkerState.DEAD)
    wait_until(
        lambda: _health(server, LIVENESS_SERVICE) == "NOT_SERVING",
        timeout=10,
        what="liveness NOT_SERVING",
    )
    assert _health(server) == "NOT_SERVING"


# ---------------------------------------------------------------- ingest as a supervisor


def test_ingest_workers_share_one_port_add_up_their_metrics_and_all_exit_zero_on_sigterm(
    service_env: dict[str, str], common_settings: object, tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    log_path = tmp_path / "ingest.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ingest"],
            cwd=REPO,
            env={
                **os.environ,
                **service_env,
                "EVENTPIPE_INGEST_HOST": "127.0.0.1",
                "EVENTPIPE_INGEST_PORT": str(port),
                "EVENTPIPE_INGEST_METRICS_PORT": str(metrics_port),
                "EVENTPIPE_INGEST_WORKERS": "2",
                "PYTHONUNBUFFERED": "1",
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    address = f"127.0.0.1:{port}"
    try:

        def serving() -> bool:
            assert process.poll() is None, log_path.read_text()
            return (
                probes.grpc_health(address) == "SERVING"
                and metric_values(metrics_port).get("eventpipe_server_workers") == 2
            )

        wait_until(serving, timeout=90, what="both ingest workers SERVING")
        checks = 20
        for _ in range(checks):
            # A connection of its own each time, so the kernel spreads them over the workers.
            # Every answer counts: a worker's Kafka check may time out on a loaded machine and
            # turn both NOT_SERVING for a moment, which is still an answered (OK) Check.
            assert probes.grpc_health(address) in {"SERVING", "NOT_SERVING"}
        counted = 'eventpipe_rpc_requests_total{code="OK",method="/grpc.health.v1.Health/Check"}'
        assert metric_values(metrics_port)[counted] >= checks

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0, log_path.read_text()
        stopped = [
            entry
            for entry in map(json.loads, _json_lines(log_path))
            if entry.get("msg") == "stopped" and "worker" in entry
        ]
        assert sorted(entry["worker"] for entry in stopped) == [0, 1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _json_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("{")]


# ---------------------------------------------------------------- stream limits for the server


def _two_workers_limits(
    tmp_path: Path, max_streams: int, per_tenant: int
) -> tuple[StreamLimits, StreamLimits]:
    path = tmp_path / "streams.counts"
    SharedStreamCounts.create(path, 2, max_streams)
    return tuple(  # type: ignore[return-value]
        StreamLimits(max_streams, per_tenant, 100, SharedStreamCounts(path, i, 2, max_streams))
        for i in (0, 1)
    )


def test_the_server_stream_limit_counts_the_streams_of_every_worker(tmp_path: Path) -> None:
    first, second = _two_workers_limits(tmp_path, max_streams=3, per_tenant=3)
    slots = [first.open("c1", None), second.open("c2", None), second.open("c2", None)]

    with pytest.raises(ResourceExhausted, match="the server holds 3 open streams"):
        first.open("c1", None)

    slots[1].close()
    first.open("c1", None)


def test_the_tenant_stream_limit_counts_the_tenants_streams_in_every_worker(
    tmp_path: Path,
) -> None:
    first, second = _two_workers_limits(tmp_path, max_streams=10, per_tenant=2)
    first.open("c1", "acme")
    late = second.open("c2", None)
    second.open("c2", "acme")

    with pytest.raises(ResourceExhausted, match="this tenant holds 2 open streams"):
        first.open("c1", "acme")
    with pytest.raises(ResourceExhausted, match="this tenant holds 2 open streams"):
        late.claim_tenant("acme")
    first.open("c1", "globex")


def test_a_replaced_worker_no_longer_counts_the_streams_of_the_one_that_died(
    tmp_path: Path,
) -> None:
    first, second = _two_workers_limits(tmp_path, max_streams=2, per_tenant=2)
    second.open("c2", "acme")
    second.open("c2", "acme")
    with pytest.raises(ResourceExhausted):
        first.open("c1", "acme")

    # The worker of index 1 died holding both; its replacement maps the same region.
    SharedStreamCounts(tmp_path / "streams.counts", 1, 2, 2)

    first.open("c1", "acme")
